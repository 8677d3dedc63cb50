"""The POS gateway's canonical JSON: one event, or a batch `{"events": [...]}`, validated here and
converted to the PosEvent protobuf for Kafka. Every other adapter produces these same events."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.pos.gateway.base import EVENT_ID, Auth, Buffered, Loc, Parsed, PosInputError, Problem
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
from services.shared.storeconfig import StoreConfig

PosEventKind = Literal["sale", "return", "refund", "void", "no_sale", "drawer_open"]
JSON_TYPES = ("application/json",)


class PosItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=256)
    quantity: int = Field(1, ge=-10_000, le=10_000)
    unit_price_minor: int = Field(ge=0, le=10**12)


class PosEventIn(BaseModel):
    """One POS event as JSON. Money is in minor units (cents); times carry a time zone."""

    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(pattern=EVENT_ID, description="unique per POS system; replays with the same id are published once")
    type: PosEventKind
    store_id: str = Field(pattern=EVENT_ID)
    register_id: str = Field(pattern=EVENT_ID)
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
    after_tender: bool = Field(False, description="a void of a transaction that had already been tendered (a post-void)")

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
            after_tender=self.after_tender,
        )


class PosBatchIn(BaseModel):
    """Several events in one request (at most SW_POS_MAX_BATCH); each is published once, and
    none is published when any of them is invalid."""

    model_config = ConfigDict(extra="forbid")
    events: list[PosEventIn] = Field(min_length=1)


def context_errors(event: PosEventIn, config: StoreConfig, max_clock_skew_s: float, loc: Loc = ("body",),
                   names: Mapping[str, str] | None = None) -> list[dict]:
    """422-style errors that need more than the body: an unknown store or register, a future time.
    `loc` and `names` place them in the sender's document (a batch index, a POSLog element)."""
    return [problem.detail() for problem in _context_problems(event, config, max_clock_skew_s, Parsed(event, loc, None, names or {}))]


def check_context(parsed: Parsed, config: StoreConfig, max_clock_skew_s: float) -> list[Problem]:
    return _context_problems(parsed.event, config, max_clock_skew_s, parsed)


def _context_problems(event: PosEventIn, config: StoreConfig, max_clock_skew_s: float, where: Parsed) -> list[Problem]:
    ahead = event.event_time.timestamp() - time.time()
    if ahead > max_clock_skew_s:
        return [where.problem("event_time", f"event_time is {ahead:.0f}s in the future (allowed clock skew {max_clock_skew_s:.0f}s)")]
    store = next((s for s in config.stores if s.id == event.store_id), None)
    if store is None:
        return [where.problem("store_id", f"unknown store {event.store_id!r}")]
    if not any(r.id == event.register_id for r in store.registers):
        return [where.problem("register_id", f"unknown register {event.register_id!r} in store {store.id}")]
    return []


def validation_problems(exc: ValidationError, loc: Loc, index_at: int | None = None) -> list[Problem]:
    """Pydantic's errors as Problems under `loc`; `index_at` is where in their path the batch index sits."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        path = tuple(err["loc"])
        at = path[index_at] if index_at is not None and len(path) > index_at else None
        problems.append(Problem((*loc, *path), err["msg"], at if isinstance(at, int) else None))
    return problems


class _CanonicalParse(Buffered):
    def __init__(self, max_batch: int) -> None:
        super().__init__()
        self.max_batch = max_batch

    def close(self) -> list[Parsed]:
        try:
            data = json.loads(self.body())
        except (ValueError, RecursionError) as exc:
            raise PosInputError(422, [Problem(("body",), f"not JSON: {str(exc)[:200]}")]) from None
        if isinstance(data, dict) and "events" in data:
            events = data["events"]
            if isinstance(events, Sequence) and len(events) > self.max_batch:
                raise PosInputError(422, [Problem(("body", "events"), f"{len(events)} events; a batch holds at most {self.max_batch}")])
            try:
                batch = PosBatchIn.model_validate(data)
            except ValidationError as exc:
                raise PosInputError(422, validation_problems(exc, ("body",), index_at=1)) from None
            return [Parsed(event, ("body", "events", i), i) for i, event in enumerate(batch.events)]
        try:
            return [Parsed(PosEventIn.model_validate(data))]
        except ValidationError as exc:
            raise PosInputError(422, validation_problems(exc, ("body",))) from None


class CanonicalAdapter:
    """POST /v1/pos/events: ShrinkWatch's own JSON, one event or a batch."""

    source = "json"
    auth: Auth = "key"
    content_types: tuple[str, ...] = JSON_TYPES

    def __init__(self, max_batch: int = 500) -> None:
        self.max_batch = max_batch

    def begin(self, headers: Mapping[str, str]) -> _CanonicalParse:
        return _CanonicalParse(self.max_batch)
