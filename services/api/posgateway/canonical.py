"""The POS gateway's JSON contract: validated here, converted to the PosEvent protobuf for Kafka."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
from services.shared.storeconfig import StoreConfig

PosEventKind = Literal["sale", "return", "refund", "void", "no_sale", "drawer_open"]
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class PosItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=256)
    quantity: int = Field(1, ge=-10_000, le=10_000)
    unit_price_minor: int = Field(ge=0, le=10**12)


class PosEventIn(BaseModel):
    """One POS event as JSON. Money is in minor units (cents); times carry a time zone."""

    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(pattern=_ID, description="unique per POS system; replays with the same id are harmless")
    type: PosEventKind
    store_id: str = Field(pattern=_ID)
    register_id: str = Field(pattern=_ID)
    event_time: AwareDatetime
    transaction_id: str = Field("", max_length=128)
    employee_id: str = Field("", max_length=128)
    currency: str = Field("", pattern=r"^([A-Z]{3})?$")
    total_minor: int = Field(0, ge=-10**12, le=10**12)
    items: list[PosItemIn] = Field(default_factory=list, max_length=1000)
    tender: str = Field("", max_length=32)
    customer_token: str = Field("", max_length=128, description="salted hash, never a raw customer id")
    card_token: str = Field("", max_length=128, description="salted hash, never a card number")
    original_transaction_id: str = Field("", max_length=128)

    @model_validator(mode="after")
    def _refunds_name_money(self) -> PosEventIn:
        if self.type in ("refund", "return") and self.total_minor == 0 and not self.items:
            raise ValueError("a refund or return needs total_minor or items")
        return self

    def to_proto(self) -> PosEvent:
        return PosEvent(
            event_id=self.event_id,
            type=PosEventType.Value(f"POS_EVENT_TYPE_{self.type.upper()}"),
            store_id=self.store_id,
            register_id=self.register_id,
            transaction_id=self.transaction_id,
            employee_id=self.employee_id,
            event_time_ms=int(self.event_time.timestamp() * 1000),
            currency=self.currency,
            total_minor=self.total_minor,
            items=[PosItem(**item.model_dump()) for item in self.items],
            tender=self.tender,
            customer_token=self.customer_token,
            card_token=self.card_token,
            original_transaction_id=self.original_transaction_id,
        )


def context_errors(event: PosEventIn, config: StoreConfig, max_clock_skew_s: float) -> list[dict]:
    """422-style errors that need more than the body: an unknown store or register, a future time."""
    ahead = event.event_time.timestamp() - time.time()
    if ahead > max_clock_skew_s:
        return [{"loc": ["body", "event_time"], "msg": f"event_time is {ahead:.0f}s in the future (allowed clock skew {max_clock_skew_s:.0f}s)", "type": "value_error"}]
    store = next((s for s in config.stores if s.id == event.store_id), None)
    if store is None:
        return [{"loc": ["body", "store_id"], "msg": f"unknown store {event.store_id!r}", "type": "value_error"}]
    if not any(r.id == event.register_id for r in store.registers):
        return [{"loc": ["body", "register_id"], "msg": f"unknown register {event.register_id!r} in store {store.id}", "type": "value_error"}]
    return []

