"""Square's `refund.created` and `refund.updated` webhooks.

Square signs the notification URL followed by the raw body: `x-square-hmacsha256-signature` is
base64(HMAC-SHA256(signature key, URL + body)). The URL is the one registered with Square
(`SW_POS_SQUARE_NOTIFICATION_URL`), not the one this request arrived at, which proxies rewrite.
A refund is published when its status is COMPLETED, once: the event id is the refund id, so a later
`refund.updated` for the same completed refund is a duplicate. PENDING, FAILED and REJECTED refunds
are answered 200 (Square would otherwise retry) and not published, with the reason in the answer.
The refund's `location_id` names the store (`pos.square_location_ids`); it is booked to the store's
`pos.default_register`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from services.pos.gateway.base import Auth, Buffered, Note, Parsed, PosInputError, Problem, header, json_with_decimals, same_signature, source_event_id
from services.pos.gateway.canonical import JSON_TYPES, PosEventIn, validation_problems
from services.shared.storeconfig import StoreConfig

SIGNATURE_HEADER = "x-square-hmacsha256-signature"
EVENT_TYPES = ("refund.created", "refund.updated")
_SQUARE_ID = r"^[A-Za-z0-9_\-:.]{1,192}$"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SquareMoney(_Payload):
    amount: int = Field(ge=0, le=10**12)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class SquareRefund(_Payload):
    """A PaymentRefund as the webhook's data.object.refund carries it (the fields ShrinkWatch maps)."""

    id: str = Field(pattern=_SQUARE_ID)
    status: str = Field(max_length=32)
    amount_money: SquareMoney
    payment_id: str = Field("", max_length=192)
    order_id: str = Field("", max_length=192)
    location_id: str = Field(pattern=_SQUARE_ID)
    created_at: AwareDatetime
    reason: str = Field("", max_length=1000)
    team_member_id: str = Field("", max_length=192)


class SquareRefundObject(_Payload):
    refund: SquareRefund


class SquareEventData(_Payload):
    type: str = Field(max_length=64)
    id: str = Field(max_length=192)
    object: SquareRefundObject


class SquareEvent(_Payload):
    merchant_id: str = Field(max_length=192)
    type: str = Field(max_length=64)
    event_id: str = Field(max_length=192)
    created_at: AwareDatetime
    data: SquareEventData


class _SquareParse(Buffered):
    def __init__(self, config: StoreConfig, key: SecretStr, url: str, signature: str) -> None:
        super().__init__()
        self.config, self.key, self.url, self.signature = config, key, url, signature

    def close(self) -> list[Parsed]:
        body = self.body()
        expected = base64.b64encode(hmac.new(self.key.get_secret_value().encode(), self.url.encode() + body, hashlib.sha256).digest())
        if not same_signature(expected, self.signature):
            raise PosInputError(401, f"{SIGNATURE_HEADER} does not match the notification URL and body: not signed with this subscription's signature key")
        data = json_with_decimals(body)
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind not in EVENT_TYPES:
            self.notes.append(Note(f"event type {kind[:64]!r} carries no POS event (only {', '.join(EVENT_TYPES)})"))
            return []
        try:
            event = SquareEvent.model_validate(data)
        except ValidationError as exc:
            raise PosInputError(422, validation_problems(exc, ("body",))) from None
        refund = event.data.object.refund
        if refund.status != "COMPLETED":
            why = "Square sends refund.updated when it completes" if refund.status == "PENDING" else "no money went back"
            self.notes.append(Note(f"refund {refund.id} is {refund.status[:32]}: only COMPLETED refunds are published ({why})", ref=refund.id))
            return []
        store = self.config.store_for_pos(square_location=refund.location_id)
        if store is None:
            raise PosInputError(422, [Problem(("body", "data", "object", "refund", "location_id"),
                                              f"location {refund.location_id!r} is not a pos.square_location_ids entry of any store")])
        canonical = {"event_id": source_event_id("square", refund.id), "type": "refund", "store_id": store.id, "register_id": store.pos.default_register or "",
                     "event_time": refund.created_at, "transaction_id": refund.id[:128], "employee_id": refund.team_member_id[:128],
                     "currency": refund.amount_money.currency, "total_minor": refund.amount_money.amount, "tender": "square",
                     "original_transaction_id": (refund.order_id or refund.payment_id)[:128]}
        try:
            return [Parsed(PosEventIn.model_validate(canonical), ("body", "data", "object", "refund"),
                           names={"event_time": "created_at", "total_minor": "amount_money"})]
        except ValidationError as exc:
            raise PosInputError(422, validation_problems(exc, ("body", "data", "object", "refund"))) from None


class SquareAdapter:
    """POST /v1/pos/webhooks/square: refund.created and refund.updated, signed with the subscription's key."""

    source = "square"
    auth: Auth = "signature"
    content_types: tuple[str, ...] = JSON_TYPES

    def __init__(self, config: StoreConfig, signature_key: SecretStr | None, notification_url: str) -> None:
        self.config, self.signature_key, self.notification_url = config, signature_key, notification_url

    def begin(self, headers: Mapping[str, str]) -> _SquareParse:
        signature = header(headers, SIGNATURE_HEADER)
        if self.signature_key is None or not self.notification_url:
            raise PosInputError(401, "Square webhooks are not configured here (SW_POS_SQUARE_SIGNATURE_KEY, SW_POS_SQUARE_NOTIFICATION_URL)")
        if not signature:
            raise PosInputError(401, f"{SIGNATURE_HEADER} is missing: Square signs every webhook")
        return _SquareParse(self.config, self.signature_key, self.notification_url, signature)
