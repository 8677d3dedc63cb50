"""A store's policy for returns assessed at the till (the `returns` block of a store in the store config).

The model (or, without one, the rules) gives a score; the policy turns it into accept, warn or deny
with the store's own thresholds, and adds conditions that always warn whatever the score (a chain
that wants every receipt-less cash refund looked at says so here).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AlwaysWarn = Literal["no_receipt", "nobody_at_counter", "no_merchandise", "camera_unknown", "to_employee_own_token", "cash"]

# What each condition means, for the reason given to the till and the dashboard.
ALWAYS_WARN_WORDS: dict[str, str] = {
    "no_receipt": "store policy: returns without a receipt are checked",
    "nobody_at_counter": "store policy: the counter camera sees no customer",
    "no_merchandise": "store policy: the counter camera sees no merchandise",
    "camera_unknown": "store policy: the counter camera cannot tell who is at the counter",
    "to_employee_own_token": "store policy: refunds to an employee's own card are checked",
    "cash": "store policy: cash refunds are checked",
}


class ReturnPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Scores at or above these warn or deny; unset: the model's own thresholds (from its validation data).
    warn_at: float | None = Field(None, ge=0, le=1)
    deny_at: float | None = Field(None, ge=0, le=1)
    always_warn: list[AlwaysWarn] = []
    # Cash refunds above this (minor units) always warn; 0: no such limit.
    warn_cash_over_minor: int = Field(0, ge=0)
    # Never deny, only warn (a store that wants people, not the system, to refuse).
    never_deny: bool = False

    @model_validator(mode="after")
    def _warn_below_deny(self) -> ReturnPolicy:
        if self.warn_at is not None and self.deny_at is not None and self.warn_at > self.deny_at:
            raise ValueError(f"warn_at ({self.warn_at}) must not be above deny_at ({self.deny_at})")
        return self
