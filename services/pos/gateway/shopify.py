"""Shopify's `refunds/create` webhook: a refund made in a shop (online or on Shopify POS).

Shopify signs the raw body with the app's shared secret: `X-Shopify-Hmac-Sha256` is
base64(HMAC-SHA256(secret, body)), checked in constant time before anything in the body is
believed. `X-Shopify-Shop-Domain` names the shop, which the store config maps to a store
(`pos.shopify_shop_domain`); the refund is booked to that store's `pos.default_register`, since
Shopify names no till. The event id is the refund's own id, so Shopify's retries, or the same
refund through a second subscription, are published once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from services.pos.gateway.base import Auth, Buffered, Note, Parsed, PosInputError, Problem, header, json_with_decimals, minor_digits, same_signature, source_event_id, to_minor
from services.pos.gateway.canonical import JSON_TYPES, PosEventIn, validation_problems
from services.shared.storeconfig import Store, StoreConfig

HMAC_HEADER = "X-Shopify-Hmac-Sha256"
SHOP_HEADER = "X-Shopify-Shop-Domain"
TOPIC_HEADER = "X-Shopify-Topic"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
TOPIC = "refunds/create"


class _Payload(BaseModel):
    # Shopify adds fields over API versions; what is not read here is passed over.
    model_config = ConfigDict(extra="ignore")


class ShopifyLineItem(_Payload):
    id: int | str | None = None
    variant_id: int | str | None = None
    sku: str | None = Field(None, max_length=255)
    title: str = Field("", max_length=1000)
    price: Decimal


class ShopifyRefundLineItem(_Payload):
    id: int | str | None = None
    line_item_id: int | str | None = None
    quantity: int = Field(ge=1, le=10_000)
    line_item: ShopifyLineItem
    subtotal: Decimal | None = None


class ShopifyTransaction(_Payload):
    amount: Decimal
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    kind: str = Field(max_length=32)
    gateway: str | None = Field(None, max_length=255)
    status: str = Field(max_length=32)


class ShopifyRefund(_Payload):
    """The refund resource as the webhook sends it (only the fields ShrinkWatch maps)."""

    id: int | str
    order_id: int | str
    created_at: AwareDatetime
    user_id: int | str | None = None
    note: str | None = None
    refund_line_items: list[ShopifyRefundLineItem] = Field(default_factory=list, max_length=1000)
    transactions: list[ShopifyTransaction] = Field(default_factory=list, max_length=100)


class _ShopifyParse(Buffered):
    def __init__(self, store: Store, secret: SecretStr, signature: str, topic: str, webhook_id: str) -> None:
        super().__init__()
        self.store, self.secret, self.signature, self.topic, self.webhook_id = store, secret, signature, topic, webhook_id

    def close(self) -> list[Parsed]:
        body = self.body()
        expected = base64.b64encode(hmac.new(self.secret.get_secret_value().encode(), body, hashlib.sha256).digest())
        if not same_signature(expected, self.signature):
            raise PosInputError(401, f"{HMAC_HEADER} does not match the body: not signed with this shop's webhook secret")
        if self.topic and self.topic != TOPIC:
            self.notes.append(Note(f"topic {self.topic[:64]!r} carries no POS event (only {TOPIC})", ref=self.webhook_id[:64]))
            return []
        try:
            refund = ShopifyRefund.model_validate(json_with_decimals(body))
        except ValidationError as exc:
            raise PosInputError(422, validation_problems(exc, ("body",))) from None
        return self._events(refund)

    def _events(self, refund: ShopifyRefund) -> list[Parsed]:
        paid = [t for t in refund.transactions if t.kind == "refund" and t.status == "success"]
        if not paid:
            self.notes.append(Note("no successful refund transaction: nothing was paid back yet, so nothing is published", ref=str(refund.id)))
            return []
        currencies = {t.currency for t in paid}
        if len(currencies) > 1:
            raise PosInputError(422, [Problem(("body", "transactions"), f"refund transactions in several currencies {sorted(currencies)}")])
        currency = currencies.pop()
        problems: list[Problem] = []
        total = 0
        for number, transaction in enumerate(refund.transactions):
            if transaction.kind == "refund" and transaction.status == "success":
                minor = to_minor(transaction.amount, currency)
                if minor is None:
                    problems.append(Problem(("body", "transactions", number, "amount"), f"{transaction.amount} is not an exact {currency} amount"))
                total += minor or 0
        items = []
        for number, line in enumerate(refund.refund_line_items):
            price = line.line_item.price
            unit = to_minor(price.quantize(Decimal(1).scaleb(-minor_digits(currency)), rounding=ROUND_HALF_EVEN), currency) if price.adjusted() <= 15 else None
            if unit is None or unit < 0:
                problems.append(Problem(("body", "refund_line_items", number, "line_item", "price"), f"{price} is not a {currency} price"))
                continue
            sku = line.line_item.sku or (f"variant-{line.line_item.variant_id}" if line.line_item.variant_id else f"line-{line.line_item_id or number + 1}")
            items.append({"sku": sku[:64], "description": line.line_item.title[:256], "quantity": line.quantity, "unit_price_minor": unit})
        if problems:
            raise PosInputError(422, problems)
        register = self.store.pos.default_register or ""
        event = {"event_id": source_event_id("shopify", str(refund.id)), "type": "refund", "store_id": self.store.id, "register_id": register,
                 "event_time": refund.created_at, "transaction_id": str(refund.id)[:128], "employee_id": str(refund.user_id or "")[:128],
                 "currency": currency, "total_minor": total, "items": items, "tender": (paid[0].gateway or "")[:32],
                 "original_transaction_id": str(refund.order_id)[:128]}
        try:
            return [Parsed(PosEventIn.model_validate(event), names={"event_time": "created_at", "total_minor": "transactions"})]
        except ValidationError as exc:
            raise PosInputError(422, validation_problems(exc, ("body",))) from None


class ShopifyAdapter:
    """POST /v1/pos/webhooks/shopify: `refunds/create`, signed per shop."""

    source = "shopify"
    auth: Auth = "signature"
    content_types: tuple[str, ...] = JSON_TYPES

    def __init__(self, config: StoreConfig, secrets: Mapping[str, SecretStr]) -> None:
        self.config = config
        self.secrets = {shop.lower(): secret for shop, secret in secrets.items()}

    def begin(self, headers: Mapping[str, str]) -> _ShopifyParse:
        signature, shop = header(headers, HMAC_HEADER), header(headers, SHOP_HEADER).strip().lower()
        if not signature:
            raise PosInputError(401, f"{HMAC_HEADER} is missing: Shopify signs every webhook")
        if not shop:
            raise PosInputError(401, f"{SHOP_HEADER} is missing: it says whose secret signed the webhook")
        secret = self.secrets.get(shop)
        store = self.config.store_for_pos(shopify_shop=shop)
        if secret is None or store is None:
            raise PosInputError(401, f"shop {shop[:100]!r} is not configured (a store's pos.shopify_shop_domain and its secret in SW_POS_SHOPIFY_SECRETS)")
        return _ShopifyParse(store, secret, signature, header(headers, TOPIC_HEADER).strip(), header(headers, WEBHOOK_ID_HEADER).strip())
