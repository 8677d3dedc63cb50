"""The POS gateway's adapters without infrastructure: realistic documents in each format (a vendor's
POSLog day with namespaces and extensions, Shopify's and Square's webhooks as their documentation
shows them), signatures, hostile XML, the keys file, and properties over generated input: anything
at all raises nothing but PosInputError, and generated valid documents give the expected events."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar, cast
from xml.sax.saxutils import escape

import httpx
import pytest
import redis
import yaml
from confluent_kafka import Producer
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from services.pos.gateway import poslog, routes
from services.pos.gateway.base import Parsed, PosInputError, source_event_id, to_minor
from services.pos.gateway.canonical import CanonicalAdapter, PosEventIn
from services.pos.gateway.dedupe import Dedupe
from services.pos.gateway.keys import KeyEntry, PosKeys, file_line, key_hash, load_keys_file, new_key
from services.pos.gateway.poslog import PosLogAdapter
from services.pos.gateway.routes import PosGateway, pos_router
from services.pos.gateway.shopify import ShopifyAdapter
from services.pos.gateway.square import SquareAdapter
from services.shared.contracts.pos_event_pb2 import PosEvent
from services.shared.storeconfig import StoreConfig, StoreConfigError, load_store_config
from tests.unit.test_storeconfig import SAMPLE

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "pos-examples"
SHOP = "sample-high-street.myshopify.com"
SHOP_SECRET = "shpss_8f2b7c1d"
SQUARE_KEY = "sq-signature-key-4d1e"
SQUARE_URL = "https://pos.example.com/v1/pos/webhooks/square"
ARTS = "http://www.nrf-arts.org/IXRetail/namespace/"
T = TypeVar("T")
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def config() -> StoreConfig:
    return load_store_config(SAMPLE)


def run(adapter, body: bytes, headers: dict[str, str] | None = None, chunk: int = 4096) -> tuple[list[Parsed], list]:
    """Feed the body as a route does, chunk by chunk; the events and the notes."""
    parse = adapter.begin(headers or {})
    events: list[Parsed] = []
    for start in range(0, len(body), chunk):
        events += parse.feed(body[start:start + chunk])
    events += parse.close()
    return events, parse.notes


def refused(adapter, body: bytes, headers: dict[str, str] | None = None) -> PosInputError:
    with pytest.raises(PosInputError) as err:
        run(adapter, body, headers)
    return err.value


def shopify_headers(body: bytes, secret: str = SHOP_SECRET, shop: str = SHOP, topic: str = "refunds/create") -> dict[str, str]:
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {"X-Shopify-Hmac-Sha256": digest, "X-Shopify-Shop-Domain": shop, "X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"}


def square_headers(body: bytes, key: str = SQUARE_KEY, url: str = SQUARE_URL) -> dict[str, str]:
    return {"x-square-hmacsha256-signature": base64.b64encode(hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()).decode()}


def shopify(config: StoreConfig) -> ShopifyAdapter:
    return ShopifyAdapter(config, {SHOP: SecretStr(SHOP_SECRET)})


def square(config: StoreConfig) -> SquareAdapter:
    return SquareAdapter(config, SecretStr(SQUARE_KEY), SQUARE_URL)


# ---- canonical JSON -------------------------------------------------------------------------------

EVENT = {"event_id": "pos-1", "type": "refund", "store_id": "store-001", "register_id": "reg-1", "event_time": "2026-11-25T10:00:00+00:00",
         "currency": "GBP", "total_minor": 2999, "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 2999}]}


def test_canonical_single_event_and_batch(config):
    [single], _ = run(CanonicalAdapter(), json.dumps(EVENT).encode())
    assert single.index is None and single.event.total_minor == 2999
    batch = {"events": [EVENT, {**EVENT, "event_id": "pos-2", "type": "void", "after_tender": True, "original_transaction_id": "T-9"}]}
    events, _ = run(CanonicalAdapter(), json.dumps(batch).encode(), chunk=7)
    assert [(p.index, p.event.event_id) for p in events] == [(0, "pos-1"), (1, "pos-2")]
    assert events[1].event.to_proto().after_tender


def test_canonical_batch_errors_name_the_index_the_field_and_the_reason():
    batch = {"events": [EVENT, {**EVENT, "total_minor": "a lot"}, {**EVENT, "type": "robbery"}]}
    err = refused(CanonicalAdapter(), json.dumps(batch).encode())
    assert err.status == 422
    found = {(p.index, p.loc[-1]) for p in err.problems}
    assert found == {(1, "total_minor"), (2, "type")}
    assert all(p.loc[:3] == ("body", "events", p.index) for p in err.problems)
    assert "integer" in next(p.msg for p in err.problems if p.loc[-1] == "total_minor")


def test_canonical_batch_is_bounded():
    err = refused(CanonicalAdapter(max_batch=3), json.dumps({"events": [EVENT] * 4}).encode())
    assert err.problems[0].loc == ("body", "events") and "at most 3" in err.problems[0].msg


@pytest.mark.parametrize("body", [b"", b"{not json", b"[" * 100_000, b'"just a string"', b"{}", b'{"events": []}', b'{"events": 5}'])
def test_canonical_garbage_is_a_422(body):
    assert refused(CanonicalAdapter(), body).status == 422


# ---- POSLog -----------------------------------------------------------------------------------------

def test_vendor_poslog_day_maps_every_transaction(config):
    events, notes = run(PosLogAdapter(config), (EXAMPLES / "poslog-store-0042.xml").read_bytes(), chunk=333)
    by_kind = {(p.event.type, p.event.transaction_id): p.event for p in events}
    assert sorted(by_kind) == [("no_sale", "3:2026-11-27:1045"), ("return", "3:2026-11-27:1042"), ("return", "3:2026-11-27:1043"),
                               ("sale", "3:2026-11-27:1041"), ("void", "3:2026-11-27:1044"), ("void", "3:2026-11-27:1046")]
    sale = by_kind["sale", "3:2026-11-27:1041"]
    assert (sale.store_id, sale.register_id, sale.employee_id, sale.currency, sale.tender) == ("store-001", "reg-1", "emp-042", "GBP", "CreditDebit")
    assert sale.total_minor == 8825
    # the voided cable is left out; the loose apples (0.42 kg) are one line of their extended amount
    assert [(i.sku, i.quantity, i.unit_price_minor) for i in sale.items] == [("SKU-HEADPHONES", 1, 7999), ("PLU-4131", 1, 126), ("SKU-BATTERY-AA", 2, 350)]
    # local time without an offset is the store's own (Europe/London, GMT in November)
    assert sale.event_time.astimezone(UTC) == datetime(2026, 11, 27, 9, 14, 5, tzinfo=UTC)
    linked = by_kind["return", "3:2026-11-27:1042"]
    assert (linked.original_transaction_id, linked.total_minor, linked.items[0].quantity) == ("3:2026-11-27:1041", 7999, 1)
    unverified = by_kind["return", "3:2026-11-27:1043"]
    assert (unverified.original_transaction_id, unverified.total_minor, unverified.tender, unverified.employee_id) == ("", 5900, "Cash", "emp-017")
    post_void = by_kind["void", "3:2026-11-27:1044"]
    assert post_void.after_tender and post_void.original_transaction_id == "3:2026-11-27:1041" and post_void.total_minor == 8825
    cancelled = by_kind["void", "3:2026-11-27:1046"]
    assert not cancelled.after_tender and cancelled.original_transaction_id == "" and cancelled.total_minor == 3450
    assert {n.index for n in notes} == {0, 7}  # the sign-on and the training-mode transaction
    assert any("training" in n.reason for n in notes)
    # a later check (an unknown store, a time in the future) is reported in the document's own terms
    assert events[0].problem("store_id", "x").loc == ("body", "Transaction", 1, "RetailStoreID")


def test_poslog_event_ids_are_deterministic_per_transaction_and_kind(config):
    body = (EXAMPLES / "poslog-store-0042.xml").read_bytes()
    first, _ = run(PosLogAdapter(config), body)
    again, _ = run(PosLogAdapter(config), body, chunk=50)
    assert [p.event.event_id for p in first] == [p.event.event_id for p in again]
    assert len({p.event.event_id for p in first}) == len(first)


def _tx(body: str, store: str = "0042", workstation: str = "3", sequence: str = "7", extra: str = "", attrs: str = "") -> str:
    return (f"<Transaction{attrs}><RetailStoreID>{store}</RetailStoreID><WorkstationID>{workstation}</WorkstationID>"
            f"<SequenceNumber>{sequence}</SequenceNumber><BusinessDayDate>2026-11-27</BusinessDayDate>"
            f"<EndDateTime>2026-11-27T10:00:00+00:00</EndDateTime><OperatorID>emp-1</OperatorID><CurrencyCode>GBP</CurrencyCode>{extra}{body}</Transaction>")


SALE = "<RetailTransaction><LineItem><Sale><ItemID>SKU-1</ItemID><ExtendedAmount>10.00</ExtendedAmount><Quantity>1</Quantity></Sale></LineItem></RetailTransaction>"


def test_poslog_with_a_prefixed_namespace_and_a_single_transaction_root(config):
    prefixed = (f'<ix:POSLog xmlns:ix="{ARTS}" xmlns:v="urn:vendor"><ix:Transaction><ix:RetailStoreID>0042</ix:RetailStoreID>'
                "<ix:WorkstationID>reg-1</ix:WorkstationID><ix:SequenceNumber>9</ix:SequenceNumber><ix:EndDateTime>2026-11-27T10:00:00Z</ix:EndDateTime>"
                "<v:RetailStoreID>not-this</v:RetailStoreID><ix:RetailTransaction><ix:LineItem><ix:Sale><ix:ItemID>A</ix:ItemID>"
                "<v:ItemID>not-this-either</v:ItemID><ix:ExtendedAmount>1.50</ix:ExtendedAmount></ix:Sale></ix:LineItem></ix:RetailTransaction>"
                "</ix:Transaction></ix:POSLog>").encode()
    [event], _ = run(PosLogAdapter(config), prefixed)
    assert (event.event.store_id, event.event.register_id, event.event.items[0].sku, event.event.total_minor) == ("store-001", "reg-1", "A", 150)
    assert event.event.transaction_id == "reg-1:2026-11-27:9"  # no BusinessDayDate: the day of EndDateTime
    single = f'<Transaction xmlns="{ARTS}">' + _tx(SALE)[len("<Transaction>"):]
    [event], _ = run(PosLogAdapter(config), single.encode())
    assert event.event.type == "sale"


def test_poslog_control_transaction_post_void_and_an_exchange(config):
    post_void = ("<ControlTransaction><PostVoid><TransactionLink ReasonCode=\"PostVoid\"><WorkstationID>3</WorkstationID>"
                 "<SequenceNumber>6</SequenceNumber><BusinessDayDate>2026-11-27</BusinessDayDate></TransactionLink>"
                 "<Total TotalType=\"TransactionGrandAmount\">120.00</Total></PostVoid></ControlTransaction>")
    exchange = ("<RetailTransaction><LineItem><Return><ItemID>OLD</ItemID><ExtendedAmount>20.00</ExtendedAmount></Return></LineItem>"
                "<LineItem><Sale><ItemID>NEW</ItemID><ExtendedAmount>25.00</ExtendedAmount></Sale></LineItem>"
                "<Total TotalType=\"TransactionGrandAmount\">5.00</Total></RetailTransaction>")
    doc = f'<POSLog xmlns="{ARTS}">{_tx(post_void)}{_tx(exchange, sequence="8")}</POSLog>'
    events, _ = run(PosLogAdapter(config), doc.encode())
    kinds = {p.event.type: p.event for p in events}
    assert kinds["void"].after_tender and kinds["void"].original_transaction_id == "3:2026-11-27:6" and kinds["void"].total_minor == 12000
    assert kinds["sale"].total_minor == 2500 and kinds["return"].total_minor == 2000 and kinds["return"].original_transaction_id == ""
    assert kinds["sale"].event_id != kinds["return"].event_id


@pytest.mark.parametrize("doc, field, reason", [
    (_tx(SALE, store="9999"), "RetailStoreID", "unknown store"),
    (_tx(SALE, workstation="77"), "WorkstationID", "unknown register"),
    (_tx(SALE, sequence=""), "SequenceNumber", "missing"),
    (_tx(SALE.replace("10.00", "10.005")), "ExtendedAmount", "exact"),
    (_tx(SALE.replace("10.00", "ten pounds")), "ExtendedAmount", "decimal"),
    (_tx(SALE.replace("<Quantity>1</Quantity>", "<Quantity>0</Quantity>")), "Quantity", "quantity"),
    (_tx(SALE).replace("2026-11-27T10:00:00+00:00", "yesterday"), "EndDateTime", "xs:dateTime"),
    (_tx(SALE, extra="<CurrencyCode>pounds</CurrencyCode>").replace("<CurrencyCode>GBP</CurrencyCode>", ""), "CurrencyCode", "ISO 4217"),
])
def test_poslog_errors_name_the_transaction_the_element_and_the_reason(config, doc, field, reason):
    body = f'<POSLog xmlns="{ARTS}">{_tx(SALE, sequence="1")}{doc}</POSLog>'.encode()
    err = refused(PosLogAdapter(config), body)
    assert err.status == 422
    [problem] = err.problems
    assert problem.index == 1 and problem.loc[:3] == ("body", "Transaction", 1) and field in problem.loc and reason in problem.msg


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/"><Transaction><RetailStoreID>&lol9;</RetailStoreID></Transaction></POSLog>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE POSLog [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/"><Transaction><RetailStoreID>&xxe;</RetailStoreID></Transaction></POSLog>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE POSLog SYSTEM "http://attacker.example/poslog.dtd"><POSLog/>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE, EXTERNAL_DTD])
def test_entity_expansion_and_external_entities_are_refused(config, doc):
    err = refused(PosLogAdapter(config), doc)
    assert err.status == 422 and "refused" in err.problems[0].msg and "root" not in str(err)


@pytest.mark.parametrize("doc, reason", [
    (b"", "no element"), (b"<POSLog>", "no element"), (b"<html><body/></html>", "root element"), (b"<POSLog xmlns='urn:other'/>", "root element"),
    (f'<POSLog xmlns="{ARTS}"/>'.encode(), "no Transaction"), (b"<POSLog><Transaction></POSLog>", "mismatched"),
])
def test_malformed_poslog_is_a_422_with_the_reason(config, doc, reason):
    err = refused(PosLogAdapter(config), doc)
    assert err.status == 422 and reason in err.problems[0].msg


def test_poslog_streams_one_transaction_at_a_time(config):
    """Events come out of feed() as their Transaction ends, and the root keeps none of them."""
    adapter = PosLogAdapter(config)
    parse = adapter.begin({})
    head = f'<POSLog xmlns="{ARTS}">'.encode()
    assert parse.feed(head) == []
    for sequence in range(200):
        [event] = parse.feed(_tx(SALE, sequence=str(sequence)).encode())
        assert event.index == sequence
    root = parse._parser.target.root
    assert len(root) == 0
    assert parse.feed(b"</POSLog>") == [] and parse.close() == []


def _peak_bytes(step: Callable[[], T]) -> tuple[T, int]:
    """What `step()` returns, and the most memory Python held above where it started while it ran."""
    tracemalloc.start()
    try:
        result = step()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_poslog_one_huge_transaction_is_a_422_naming_its_index_and_the_limit(config):
    """A Transaction is a tree in memory until it ends: one of 200,000 elements (about 16 MB as a
    tree; an 8 MB one of <a/> grew the api by 172 MB) is refused as it grows, never built whole."""
    huge = SALE.replace("</RetailTransaction>", "<a/>" * 200_000 + "</RetailTransaction>")
    body = f'<POSLog xmlns="{ARTS}">{_tx(SALE, sequence="1")}{_tx(huge, sequence="2")}</POSLog>'.encode()
    err, peak = _peak_bytes(lambda: refused(PosLogAdapter(config), body))
    assert isinstance(err, PosInputError) and err.status == 422
    [problem] = err.problems
    assert problem.index == 1 and problem.loc == ("body", "Transaction", 1)
    assert f"more than {poslog.MAX_TRANSACTION_ELEMENTS} elements" in problem.msg
    assert peak < 5_000_000, peak


@pytest.mark.parametrize("inside", [True, False])
def test_poslog_nesting_is_bounded_inside_and_outside_transactions(config, inside):
    deep = "<a>" * 40 + "</a>" * 40
    body = (f'<POSLog xmlns="{ARTS}">{_tx(SALE, sequence="1")}{_tx(SALE + deep, sequence="2")}</POSLog>' if inside
            else f'<POSLog xmlns="{ARTS}">{_tx(SALE, sequence="1")}<Batch>{deep}</Batch></POSLog>')
    err = refused(PosLogAdapter(config), body.encode())
    assert err.status == 422 and "more than 32 levels deep" in err.problems[-1].msg
    if inside:
        assert err.problems[-1].index == 1 and err.problems[-1].loc == ("body", "Transaction", 1)
    else:
        assert err.problems[-1].index is None and "outside any Transaction" in err.problems[-1].msg


def test_poslog_wrappers_and_vendor_extensions_are_never_built(config):
    """What is never read takes no memory: a wrapper of 150,000 elements around nothing ARTS reads,
    and a Transaction carrying 30,000 vendor elements (which count against no limit)."""
    extended = SALE.replace("</RetailTransaction>", "<v:Metric/>" * 30_000 + "</RetailTransaction>")
    body = (f'<POSLog xmlns="{ARTS}" xmlns:v="urn:vendor"><Batch>' + "<a/>" * 150_000 + "</Batch>"
            f"{_tx(extended, sequence='1')}{_tx(SALE, sequence='2')}</POSLog>").encode()
    (events, _), peak = _peak_bytes(lambda: run(PosLogAdapter(config), body, chunk=64 * 1024))
    assert [p.event.transaction_id for p in events] == ["3:2026-11-27:1", "3:2026-11-27:2"]
    assert events[0].event.total_minor == 1000
    assert peak < 2_000_000, peak


# ---- Shopify ----------------------------------------------------------------------------------------

def test_shopify_refund_as_documented_maps_to_a_refund(config):
    body = (EXAMPLES / "shopify-refund.json").read_bytes()
    [parsed], notes = run(shopify(config), body, shopify_headers(body))
    event = parsed.event
    assert (event.type, event.store_id, event.register_id, event.currency, event.total_minor) == ("refund", "store-001", "reg-1", "USD", 19900)
    assert (event.event_id, event.transaction_id, event.original_transaction_id, event.employee_id) == (
        "shopify-890088186047892319", "890088186047892319", "820982911946154508", "548380009")
    assert [(i.sku, i.description, i.quantity, i.unit_price_minor) for i in event.items] == [("SKU2006-020", "Aviator sunglasses", 1, 19900)]
    assert event.tender == "shopify_payments" and event.event_time.astimezone(UTC) == datetime(2026, 11, 27, 15, 15, tzinfo=UTC) and notes == []


@pytest.mark.parametrize("change, reason", [
    ({"secret": "not-the-secret"}, "does not match"),
    ({"shop": "someone-else.myshopify.com"}, "not configured"),
    ({"tamper": True}, "does not match"),
    ({"drop": "X-Shopify-Hmac-Sha256"}, "missing"),
    ({"drop": "X-Shopify-Shop-Domain"}, "missing"),
])
def test_shopify_signature_is_checked(config, change, reason):
    body = (EXAMPLES / "shopify-refund.json").read_bytes()
    headers = shopify_headers(body, secret=change.get("secret", SHOP_SECRET), shop=change.get("shop", SHOP))
    headers.pop(change.get("drop", ""), None)
    if change.get("tamper"):
        body = body.replace(b'"amount": "199.00"', b'"amount": "999.00"')
    err = refused(shopify(config), body, headers)
    assert err.status == 401 and reason in str(err)


def test_shopify_other_topics_and_unpaid_refunds_are_answered_not_published(config):
    body = (EXAMPLES / "shopify-refund.json").read_bytes()
    events, notes = run(shopify(config), body, shopify_headers(body, topic="orders/create"))
    assert events == [] and "orders/create" in notes[0].reason
    pending = body.replace(b'"status": "success"', b'"status": "pending"')
    events, notes = run(shopify(config), pending, shopify_headers(pending))
    assert events == [] and "no successful refund transaction" in notes[0].reason


def test_shopify_payload_errors_name_the_field(config):
    body = json.dumps({**json.loads((EXAMPLES / "shopify-refund.json").read_text()), "created_at": "last tuesday"}).encode()
    err = refused(shopify(config), body, shopify_headers(body))
    assert err.status == 422 and err.problems[0].loc == ("body", "created_at")


# ---- Square -----------------------------------------------------------------------------------------

def test_square_completed_refund_maps_to_a_refund(config):
    body = (EXAMPLES / "square-refund-completed.json").read_bytes()
    [parsed], _ = run(square(config), body, square_headers(body))
    event = parsed.event
    assert (event.type, event.store_id, event.register_id, event.total_minor, event.currency) == ("refund", "store-001", "reg-1", 4599, "GBP")
    refund_id = "KkAkhdMsgzn59SM8A89WgKwekxLZY_ptNBVqHYxt5gAdfcobBe4u1AZsXhoz06KTtuq9Ls24P"
    assert event.event_id == f"square-{refund_id}" and event.transaction_id == refund_id
    assert event.original_transaction_id == "haOyDuHiqtAXMk3ro4qtrQ6pI3HmSbHC0xW4nkdSfpL4TtlD5vNV" and event.employee_id == "TMoK_ogh6rH1o4dV"


@pytest.mark.parametrize("status", ["PENDING", "FAILED", "REJECTED"])
def test_square_refunds_not_completed_are_answered_with_the_reason(config, status):
    body = (EXAMPLES / "square-refund-completed.json").read_bytes().replace(b'"COMPLETED"', f'"{status}"'.encode())
    events, notes = run(square(config), body, square_headers(body))
    assert events == [] and status in notes[0].reason and "only COMPLETED" in notes[0].reason


@pytest.mark.parametrize("headers_for, status, reason", [
    (lambda body: square_headers(body, key="wrong"), 401, "does not match"),
    (lambda body: square_headers(body, url="https://proxy.internal/square"), 401, "does not match"),
    (lambda body: {}, 401, "missing"),
])
def test_square_signature_covers_the_registered_url_and_the_body(config, headers_for, status, reason):
    body = (EXAMPLES / "square-refund-completed.json").read_bytes()
    err = refused(square(config), body, headers_for(body))
    assert err.status == status and reason in str(err)


def test_square_unknown_location_and_unconfigured_key(config):
    body = (EXAMPLES / "square-refund-completed.json").read_bytes().replace(b"L8W2GZ7C1Y0QH", b"LNOTOURS0000")
    err = refused(square(config), body, square_headers(body))
    assert err.status == 422 and err.problems[0].loc[-1] == "location_id"
    assert refused(SquareAdapter(config, None, ""), body, square_headers(body)).status == 401


# ---- the routes, over stand-ins for Redis and the broker ---------------------------------------------

class FakeRedis:
    """Just what Dedupe uses of Redis (SET NX EX, MGET, pipelines, the release script), in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def set(self, key: str, value: str | bytes, nx: bool = False, ex: int | None = None) -> bool | None:
        with self.lock:
            if nx and key in self.data:
                return None
            self.data[key] = value.encode() if isinstance(value, str) else value
            return True

    def mget(self, keys: list[str]) -> list[bytes | None]:
        with self.lock:
            return [self.data.get(key) for key in keys]

    def release(self, key: str, token: str) -> int:
        with self.lock:
            if self.data.get(key) == token.encode():
                del self.data[key]
                return 1
            return 0

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def register_script(self, _source: str):
        def script(keys: list[str], args: list[str], client: FakePipeline | None = None):
            if client is not None:
                client.calls.append(lambda: self.release(keys[0], args[0]))
                return None
            return self.release(keys[0], args[0])
        return script


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.calls: list[Callable[[], object]] = []

    def set(self, key: str, value: str | bytes, nx: bool = False, ex: int | None = None) -> None:
        self.calls.append(lambda: self.redis.set(key, value, nx=nx, ex=ex))

    def execute(self) -> list:
        return [call() for call in self.calls]


class FakeMessage:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Acknowledges what it was given on poll, once `gate` is set (cleared: a broker that is slow to answer)."""

    def __init__(self) -> None:
        self.sent: list[PosEvent] = []
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self._waiting: list = []

    def produce(self, topic: str, key=None, value: bytes = b"", headers=None, on_delivery=None) -> None:
        with self.lock:
            self.sent.append(PosEvent.FromString(value))
            self._waiting.append((on_delivery, FakeMessage(len(self.sent) - 1)))

    def poll(self, timeout: float = 0) -> int:
        if not self.gate.wait(timeout):
            return 0
        with self.lock:
            waiting, self._waiting = self._waiting, []
        for on_delivery, message in waiting:
            on_delivery(None, message)
        return len(waiting)

    def flush(self, timeout: float = 0) -> int:
        self.poll(timeout)
        return 0


HQ_KEY = "swpos_test-hq-export-key"


@dataclass
class PosApi:
    """The POS routes of an app, served in-process (httpx's ASGI transport, the app's lifespan run)."""

    app: FastAPI
    gateway: PosGateway
    producer: FakeProducer
    redis: FakeRedis
    client: httpx.AsyncClient | None = None

    def serve(self, scenario: Callable[[], Awaitable[None]]) -> None:
        async def served() -> None:
            async with self.app.router.lifespan_context(self.app), httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://api") as client:
                self.client = client
                await scenario()
        asyncio.run(served())

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, key: str | None = HQ_KEY) -> httpx.Response:
        assert self.client is not None
        sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        return await self.client.post(path, content=body, headers=sent)


@pytest.fixture
def pos_api(tmp_path) -> PosApi:
    """The POS routes for two stores (store-002 a copy of the sample store), with a key for both."""
    raw = yaml.safe_load(SAMPLE.read_text())
    second = json.loads(json.dumps(raw["stores"][0]).replace("cam-counter-1", "cam-counter-2"))
    second.update(id="store-002", name="Second Store", pos={"retail_store_id": "0043"})
    raw["stores"].append(second)
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(raw))
    chain = load_store_config(tmp_path / "chain.yaml")
    fake_redis, producer = FakeRedis(), FakeProducer()
    gateway = PosGateway(config=chain, producer=cast(Producer, producer), dedupe=Dedupe(cast(redis.Redis, fake_redis), ttl_s=7 * 86400),
                         keys=PosKeys({key_hash(HQ_KEY): KeyEntry(name="hq-export", all_stores=True)}), shopify=shopify(chain), square=square(chain))
    app = FastAPI()
    app.include_router(pos_router(gateway))
    return PosApi(app, gateway, producer, fake_redis)


def test_the_same_event_id_in_two_stores_is_published_for_each(pos_api):
    """Each store's POS system numbers its own events: the same id from two stores is two events,
    and the same store's event sent again is published once."""
    async def scenario() -> None:
        first = await pos_api.post("/v1/pos/events", json.dumps(EVENT).encode())
        other_store = await pos_api.post("/v1/pos/events", json.dumps({**EVENT, "store_id": "store-002"}).encode())
        again = await pos_api.post("/v1/pos/events", json.dumps({**EVENT, "store_id": "store-002"}).encode())
        assert (first.status_code, other_store.status_code, again.status_code) == (202, 202, 200), other_store.text
        assert other_store.json()["duplicate"] is False and again.json()["duplicate"] is True
        assert again.json()["offset"] == other_store.json()["offset"] != first.json()["offset"]
        batch = {"events": [{**EVENT, "event_id": "pos-7"}, {**EVENT, "event_id": "pos-7", "store_id": "store-002"}, {**EVENT, "event_id": "pos-7"}]}
        answer = await pos_api.post("/v1/pos/events", json.dumps(batch).encode())
        assert answer.status_code == 202 and [e["duplicate"] for e in answer.json()["events"]] == [False, False, True]

    pos_api.serve(scenario)
    assert sorted((e.store_id, e.event_id) for e in pos_api.producer.sent) == [("store-001", "pos-1"), ("store-001", "pos-7"),
                                                                              ("store-002", "pos-1"), ("store-002", "pos-7")]


def _days_ago(days: float) -> str:
    return datetime.fromtimestamp(time.time() - days * 86400, UTC).isoformat()


@pytest.mark.parametrize("vendor", ["shopify", "square"])
def test_a_signed_refund_older_than_the_dedupe_window_is_answered_not_published(pos_api, vendor):
    """A vendor's signature carries no time: a captured refund replayed once the dedupe record has
    expired (7 days here) would be published again, so a refund that old is answered, not published."""
    async def send(days: float) -> httpx.Response:
        if vendor == "shopify":
            payload = json.loads((EXAMPLES / "shopify-refund.json").read_text())
            payload.update(created_at=_days_ago(days), id=int(days * 1000))
            body = json.dumps(payload).encode()
            return await pos_api.post("/v1/pos/webhooks/shopify", body, shopify_headers(body), key=None)
        payload = json.loads((EXAMPLES / "square-refund-completed.json").read_text())
        payload["data"]["object"]["refund"].update(created_at=_days_ago(days), id=f"refund{int(days * 1000)}")
        body = json.dumps(payload).encode()
        return await pos_api.post("/v1/pos/webhooks/square", body, square_headers(body), key=None)

    async def scenario() -> None:
        stale = await send(8)
        assert stale.status_code == 200 and stale.json()["published"] is False, stale.text
        assert "days ago" in stale.json()["reason"] and "SW_POS_DEDUPE_DAYS" in stale.json()["reason"]
        assert pos_api.producer.sent == []
        fresh = await send(1)
        assert fresh.status_code == 202 and fresh.json()["duplicate"] is False, fresh.text

    pos_api.serve(scenario)
    assert len(pos_api.producer.sent) == 1


def test_a_shopify_refund_replayed_under_another_shops_domain_is_a_duplicate(tmp_path):
    """Shopify signs the body, not the shop header: two shops that share an app's secret would let a
    refund signed for one be sent again as the other's. Shopify's ids are global, so the claim is
    chain-wide and the replay is answered as a duplicate, never a refund in a second store."""
    raw = yaml.safe_load(SAMPLE.read_text())
    second = json.loads(json.dumps(raw["stores"][0]).replace("cam-counter-1", "cam-counter-2"))
    second_shop = "second-street.myshopify.com"
    register = raw["stores"][0]["pos"]["default_register"]
    second.update(id="store-002", name="Second Store", pos={"shopify_shop_domain": second_shop, "retail_store_id": "0043", "default_register": register})
    raw["stores"].append(second)
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(raw))
    chain = load_store_config(tmp_path / "chain.yaml")
    fake_redis, producer = FakeRedis(), FakeProducer()
    gateway = PosGateway(config=chain, producer=cast(Producer, producer), dedupe=Dedupe(cast(redis.Redis, fake_redis), ttl_s=7 * 86400),
                         keys=PosKeys({}), shopify=ShopifyAdapter(chain, {SHOP: SecretStr(SHOP_SECRET), second_shop: SecretStr(SHOP_SECRET)}),
                         square=square(chain))
    app = FastAPI()
    app.include_router(pos_router(gateway))
    api = PosApi(app, gateway, producer, fake_redis)
    payload = json.loads((EXAMPLES / "shopify-refund.json").read_text())
    payload.update(created_at=_days_ago(1))
    body = json.dumps(payload).encode()

    async def scenario() -> None:
        first = await api.post("/v1/pos/webhooks/shopify", body, shopify_headers(body), key=None)
        assert first.status_code == 202 and first.json()["duplicate"] is False, first.text
        replayed = await api.post("/v1/pos/webhooks/shopify", body, shopify_headers(body, shop=second_shop), key=None)
        assert replayed.status_code == 200 and replayed.json()["duplicate"] is True, replayed.text

    api.serve(scenario)
    assert [(e.store_id, e.event_id) for e in producer.sent] == [("store-001", f"shopify-{payload['id']}")]


def test_parsing_and_checking_run_off_the_event_loop(pos_api, monkeypatch):
    """Checking and serialising a large POSLog's events takes seconds: never on the event loop."""
    on_loop: list[bool] = []
    take = routes._Collector.take

    def spy(self, parsed: list[Parsed]) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        take(self, parsed)

    monkeypatch.setattr(routes._Collector, "take", spy)

    async def scenario() -> None:
        body = (EXAMPLES / "poslog-store-0042.xml").read_bytes()
        assert (await pos_api.post("/v1/pos/poslog", body, {"Content-Type": "application/xml"})).status_code == 202
        assert (await pos_api.post("/v1/pos/events", json.dumps(EVENT).encode())).status_code == 202

    pos_api.serve(scenario)
    assert on_loop and not any(on_loop)


def test_publishing_runs_in_the_gateways_own_threads_which_end_with_the_app(pos_api, monkeypatch):
    """Publishing can block for seconds (a broker hiccup): not in the threads every other route shares."""
    threads: list[str] = []
    publish = routes.publish

    def spy(*args):
        threads.append(threading.current_thread().name)
        return publish(*args)

    monkeypatch.setattr(routes, "publish", spy)

    async def scenario() -> None:
        assert (await pos_api.post("/v1/pos/events", json.dumps(EVENT).encode())).status_code == 202

    pos_api.serve(scenario)
    assert threads and all(name.startswith("pos-publish") for name in threads), threads
    with pytest.raises(RuntimeError):  # shut down with the app
        pos_api.gateway.publisher.submit(int)


def test_a_copy_sent_while_the_first_is_being_published_is_answered_409_at_once(pos_api):
    """The first copy is waiting for the broker: the second does not wait with it (a thread held
    up to 15 s), it is told to retry; the retry, once the first is done, is a duplicate."""
    body = json.dumps(EVENT).encode()

    async def scenario() -> None:
        pos_api.producer.gate.clear()
        first = asyncio.create_task(pos_api.post("/v1/pos/events", body))
        for _ in range(1000):
            if pos_api.producer.sent:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        try:
            second = await asyncio.wait_for(pos_api.post("/v1/pos/events", body), 5)
        finally:
            pos_api.producer.gate.set()
        assert second.status_code == 409 and time.monotonic() - started < 2, second.text
        assert second.headers["Retry-After"] == "1" and "another request" in second.json()["detail"]
        assert (await first).status_code == 202
        retry = await pos_api.post("/v1/pos/events", body)
        assert retry.status_code == 200 and retry.json()["duplicate"] is True

    pos_api.serve(scenario)
    assert len(pos_api.producer.sent) == 1


# ---- store config, keys, ids and money -------------------------------------------------------------

def _config_with(tmp_path, pos: dict) -> Path:
    raw = yaml.safe_load(SAMPLE.read_text())
    raw["stores"][0]["pos"] = pos
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("pos, message", [
    ({"default_register": "reg-9"}, "pos.default_register"),
    ({"workstations": {"3": "reg-9"}}, "pos.workstations"),
    ({"shopify_shop_domain": "shop.myshopify.com"}, "say which register"),
    ({"shopify_shop_domain": "https://shop.example.com", "default_register": "reg-1"}, "shopify_shop_domain"),
    ({"unknown": 1}, "pos.unknown"),
])
def test_store_pos_section_is_validated(tmp_path, pos, message):
    with pytest.raises(StoreConfigError) as err:
        load_store_config(_config_with(tmp_path, pos))
    assert message in str(err.value)


def test_keys_file_hashes_only_and_stores_are_checked(tmp_path):
    key, other = new_key(), new_key()
    path = tmp_path / "pos-keys.yaml"
    path.write_text("keys:\n  " + file_line(key, "tills-001", ["store-001"]) + "\n  " + file_line(other, "hq-export", []) + "\n")
    keys = load_keys_file(path, {"store-001"})
    assert key not in path.read_text() and key_hash(key) in path.read_text()
    holder = keys.identify(key)
    assert holder is not None and holder.name == "tills-001" and holder.may_publish("store-001") and not holder.may_publish("store-002")
    every = keys.identify(other)
    assert every is not None and every.may_publish("store-002")
    assert keys.identify(key + "x") is None and keys.identify("") is None
    path.write_text("keys:\n  " + file_line(key, "tills-002", ["store-002"]) + "\n")
    with pytest.raises(SystemExit, match="store-002"):
        load_keys_file(path, {"store-001"})
    path.write_text("keys:\n  not-a-hash: {name: x, stores: [store-001]}\n")
    with pytest.raises(SystemExit, match="SHA-256"):
        load_keys_file(path, {"store-001"})
    assert len(load_keys_file(None, set())) == 0 and len(PosKeys({})) == 0


def test_ids_and_money():
    assert source_event_id("square", "abc_DEF-1") == "square-abc_DEF-1"
    assert source_event_id("x", "has space") == source_event_id("x", "has space") and source_event_id("x", "has space").startswith("x-")
    assert to_minor(Decimal("19.99"), "GBP") == 1999 and to_minor(Decimal("1990"), "JPY") == 1990 and to_minor(Decimal("1.005"), "KWD") == 1005
    assert to_minor(Decimal("19.999"), "GBP") is None and to_minor(Decimal("1e30"), "GBP") is None


# ---- properties -----------------------------------------------------------------------------------

@PROPERTY
@given(st.binary(max_size=2000))
def test_canonical_any_bytes_raise_only_its_error(body):
    try:
        run(CanonicalAdapter(max_batch=5), body)
    except PosInputError as err:
        assert 400 <= err.status < 500


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=30)


@PROPERTY
@given(st.dictionaries(st.sampled_from([*EVENT, "events", "after_tender", "tender", "card_token"]), JSON_VALUES, max_size=12))
def test_canonical_any_json_object_raises_only_its_error(doc):
    try:
        run(CanonicalAdapter(max_batch=5), json.dumps(doc).encode())
    except PosInputError as err:
        assert err.status == 422 and err.problems


IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z")
TIMES = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
ITEMS: st.SearchStrategy[list[dict]] = st.lists(st.builds(dict, sku=IDS, quantity=st.integers(1, 50), unit_price_minor=st.integers(0, 10**6)), max_size=5)


@st.composite
def canonical_events(draw) -> dict:
    kind = draw(st.sampled_from(["sale", "return", "refund", "void", "no_sale", "drawer_open"]))
    items = draw(ITEMS)
    total = draw(st.integers(1 if kind in ("refund", "return") and not items else 0, 10**8))
    return {"event_id": draw(IDS), "type": kind, "store_id": "store-001", "register_id": "reg-1", "event_time": draw(TIMES).isoformat(),
            "transaction_id": draw(IDS), "total_minor": total, "items": items, "after_tender": draw(st.booleans())}


@PROPERTY
@given(st.lists(canonical_events(), min_size=1, max_size=5), st.booleans(), st.integers(1, 64))
def test_canonical_valid_documents_give_their_events(events, as_batch, chunk):
    body = json.dumps({"events": events} if as_batch or len(events) > 1 else events[0]).encode()
    parsed, _ = run(CanonicalAdapter(), body, chunk=chunk)
    assert [p.event.model_dump(mode="json", include=set(events[0])) for p in parsed] == [PosEventIn.model_validate(e).model_dump(mode="json", include=set(e))
                                                                                         for e in events]


@PROPERTY
@given(st.binary(max_size=2000), st.integers(1, 300))
def test_poslog_any_bytes_raise_only_its_error(body, chunk):
    try:
        run(PosLogAdapter(load_store_config(SAMPLE)), body, chunk=chunk)
    except PosInputError as err:
        assert err.status == 422


ARTS_NAMES = ["POSLog", "Transaction", "RetailStoreID", "WorkstationID", "SequenceNumber", "BusinessDayDate", "EndDateTime", "OperatorID", "CurrencyCode",
              "RetailTransaction", "ControlTransaction", "LineItem", "Sale", "Return", "Tender", "Total", "ItemID", "Quantity", "ExtendedAmount",
              "ActualSalesUnitPrice", "TransactionLink", "NoSale", "PostVoid", "VoidFlag", "CancelFlag", "Description", "POSIdentity", "POSItemID"]
ATTRS = st.dictionaries(st.sampled_from(["VoidFlag", "CancelFlag", "TrainingModeFlag", "TransactionStatus", "TotalType", "TenderType", "ReasonCode"]),
                        st.sampled_from(["true", "false", "PostVoided", "Cancelled", "Suspended", "Voided", "TransactionGrandAmount", "Cash", "x"]), max_size=2)
TEXTS = st.one_of(st.sampled_from(["0042", "3", "reg-1", "7", "2026-11-27", "2026-11-27T10:00:00", "GBP", "1", "0.42", "-5.00", "10.00", "1e9", ""]),
                  st.text(max_size=12))


@st.composite
def arts_trees(draw, depth: int = 0) -> str:
    name = draw(st.sampled_from(ARTS_NAMES))
    attrs = "".join(f' {k}="{escape(v)}"' for k, v in draw(ATTRS).items())
    children = draw(st.lists(arts_trees(depth + 1), max_size=4)) if depth < 5 else []
    inner = "".join(children) if children else escape(draw(TEXTS))
    return f"<{name}{attrs}>{inner}</{name}>"


@PROPERTY
@given(st.lists(arts_trees(1), max_size=4), st.integers(1, 500))
def test_poslog_any_arts_shaped_document_raises_only_its_error(transactions, chunk):
    body = f'<POSLog xmlns="{ARTS}" xmlns:v="urn:vendor">{"".join(transactions)}</POSLog>'.encode()
    try:
        events, _ = run(PosLogAdapter(load_store_config(SAMPLE)), body, chunk=chunk)
    except PosInputError as err:
        assert err.status == 422 and err.problems
    else:
        assert all(p.event.store_id == "store-001" for p in events)


AMOUNTS = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999.99"), places=2)


@st.composite
def poslog_transactions(draw) -> tuple[str, dict]:
    """A generated transaction and the event it must give."""
    kind = draw(st.sampled_from(["sale", "return", "no_sale"]))
    sequence = str(draw(st.integers(1, 10**9)))
    if kind == "no_sale":
        return _tx("<ControlTransaction><NoSale/></ControlTransaction>", sequence=sequence), {"type": "no_sale", "total_minor": 0, "items": []}
    lines = draw(st.lists(st.tuples(IDS, st.integers(1, 20), AMOUNTS, st.booleans()), min_size=1, max_size=5))
    element = "Sale" if kind == "sale" else "Return"
    xml, items = "", []
    for sku, quantity, price, voided in lines:
        flag = ' VoidFlag="true"' if voided else ""
        xml += (f"<LineItem{flag}><{element}><ItemID>{escape(sku)}</ItemID><ActualSalesUnitPrice>{price}</ActualSalesUnitPrice>"
                f"<ExtendedAmount>{price * quantity}</ExtendedAmount><Quantity>{quantity}</Quantity><v:Extra>{sku}</v:Extra></{element}></LineItem>")
        if not voided:
            items.append({"sku": sku, "quantity": quantity, "unit_price_minor": int(price * 100), "description": ""})
    if not items:
        return _tx(f"<RetailTransaction>{xml}</RetailTransaction>", sequence=sequence), {}
    total = sum(i["quantity"] * i["unit_price_minor"] for i in items)
    return _tx(f"<RetailTransaction>{xml}</RetailTransaction>", sequence=sequence), {"type": kind, "total_minor": total, "items": items,
                                                                                  "transaction_id": f"3:2026-11-27:{sequence}"}


@PROPERTY
@given(st.lists(poslog_transactions(), min_size=1, max_size=6, unique_by=lambda t: t[0]), st.integers(1, 700))
def test_poslog_valid_documents_give_their_events(transactions, chunk):
    body = f'<POSLog xmlns="{ARTS}" xmlns:v="urn:vendor">{"".join(t for t, _ in transactions)}</POSLog>'.encode()
    events, notes = run(PosLogAdapter(load_store_config(SAMPLE)), body, chunk=chunk)
    expected = [(i, e) for i, (_, e) in enumerate(transactions) if e]
    assert len(events) == len(expected) and len(notes) == len(transactions) - len(expected)
    for parsed, (index, event) in zip(events, expected, strict=True):
        assert parsed.index == index
        assert parsed.event.model_dump(mode="json", include=set(event)) == event
        assert (parsed.event.store_id, parsed.event.register_id) == ("store-001", "reg-1")


@PROPERTY
@given(st.binary(max_size=1000), st.dictionaries(st.sampled_from(["X-Shopify-Hmac-Sha256", "X-Shopify-Shop-Domain", "X-Shopify-Topic"]), st.text(max_size=60)))
def test_shopify_any_request_raises_only_its_error(body, headers):
    try:
        run(shopify(load_store_config(SAMPLE)), body, headers)
    except PosInputError as err:
        assert err.status in (401, 422)


SHOPIFY_KEYS = ["id", "order_id", "created_at", "user_id", "note", "refund_line_items", "transactions", "quantity", "line_item", "sku", "title", "price",
                "amount", "currency", "kind", "status", "gateway", "subtotal"]


@PROPERTY
@given(st.dictionaries(st.sampled_from(SHOPIFY_KEYS), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.sampled_from(["refund", "success", "USD", "2026-11-27T10:00:00Z", "1.00", "1e999"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(SHOPIFY_KEYS), inner, max_size=6), max_leaves=25), max_size=9))
def test_shopify_any_signed_payload_raises_only_its_error(payload):
    body = json.dumps(payload).encode()
    try:
        run(shopify(load_store_config(SAMPLE)), body, shopify_headers(body))
    except PosInputError as err:
        assert err.status == 422


@PROPERTY
@given(st.integers(1, 10**15), st.integers(1, 10**15), TIMES, st.lists(st.tuples(st.integers(1, 10), AMOUNTS, st.text(max_size=20)), max_size=4),
       st.lists(AMOUNTS, min_size=1, max_size=3), st.sampled_from(["USD", "GBP", "EUR"]))
def test_shopify_valid_refunds_give_their_event(refund_id, order_id, created, lines, paid, currency):
    payload = {"id": refund_id, "order_id": order_id, "created_at": created.isoformat(),
               "refund_line_items": [{"quantity": q, "line_item": {"sku": sku, "title": "t", "price": str(price)}} for q, price, sku in lines],
               "transactions": [{"amount": str(a), "currency": currency, "kind": "refund", "status": "success", "gateway": "cash"} for a in paid]
               + [{"amount": "5.00", "currency": currency, "kind": "refund", "status": "failure"}]}
    body = json.dumps(payload).encode()
    [parsed], _ = run(shopify(load_store_config(SAMPLE)), body, shopify_headers(body))
    assert parsed.event.total_minor == sum(int(a * 100) for a in paid) and parsed.event.currency == currency
    assert parsed.event.event_id == f"shopify-{refund_id}" and parsed.event.original_transaction_id == str(order_id)
    assert [(i.quantity, i.unit_price_minor) for i in parsed.event.items] == [(q, int(price * 100)) for q, price, _ in lines]


@PROPERTY
@given(st.binary(max_size=1000), st.text(max_size=80))
def test_square_any_request_raises_only_its_error(body, signature):
    try:
        run(square(load_store_config(SAMPLE)), body, {"x-square-hmacsha256-signature": signature})
    except PosInputError as err:
        assert err.status == 401


@PROPERTY
@given(JSON_VALUES, st.sampled_from(["refund.created", "refund.updated", "payment.created", None]))
def test_square_any_signed_payload_raises_only_its_error(data, kind):
    payload = {"type": kind, "event_id": "e1", "merchant_id": "m", "created_at": "2026-11-27T10:00:00Z", "data": data}
    body = json.dumps(payload).encode()
    try:
        run(square(load_store_config(SAMPLE)), body, square_headers(body))
    except PosInputError as err:
        assert err.status == 422


@PROPERTY
@given(st.from_regex(r"\A[A-Za-z0-9_]{1,80}\Z"), st.integers(1, 10**9), st.sampled_from(["COMPLETED", "PENDING", "FAILED"]), TIMES)
def test_square_valid_refunds_give_their_event(refund_id, amount, status, created):
    refund = {"id": refund_id, "status": status, "amount_money": {"amount": amount, "currency": "GBP"}, "payment_id": "p1", "location_id": "L8W2GZ7C1Y0QH",
              "created_at": created.isoformat()}
    payload = {"merchant_id": "m", "type": "refund.updated", "event_id": "e", "created_at": created.isoformat(),
               "data": {"type": "refund", "id": refund_id, "object": {"refund": refund}}}
    body = json.dumps(payload).encode()
    events, notes = run(square(load_store_config(SAMPLE)), body, square_headers(body))
    if status != "COMPLETED":
        assert events == [] and status in notes[0].reason
        return
    [parsed] = events
    assert (parsed.event.event_id, parsed.event.total_minor, parsed.event.original_transaction_id) == (f"square-{refund_id}", amount, "p1")


def test_example_files_and_secrets_from_file_or_environment(tmp_path, monkeypatch):
    from services.pos.__main__ import PosSettings
    from services.shared.settings import SettingsError

    config_dir = SAMPLE.parent
    assert len(load_keys_file(config_dir / "pos-keys.example.yaml", {"store-001"})) == 2
    monkeypatch.setenv("SW_POS_SECRETS_FILE", str(config_dir / "pos-secrets.example.yaml"))
    monkeypatch.setenv("SW_POS_SQUARE_NOTIFICATION_URL", SQUARE_URL)
    from_file = PosSettings()
    assert from_file.pos_shopify_secrets[SHOP].get_secret_value() == "REPLACE_WITH_THE_APP_SECRET"
    assert from_file.pos_square_signature_key is not None and "REPLACE" in from_file.pos_square_signature_key.get_secret_value()
    assert "REPLACE" not in repr(from_file)
    monkeypatch.setenv("SW_POS_SQUARE_SIGNATURE_KEY", "from-the-environment")
    assert PosSettings().pos_square_signature_key == SecretStr("from-the-environment")
    odd = tmp_path / "secrets.yaml"
    odd.write_text("square_key: typo\n")
    monkeypatch.setenv("SW_POS_SECRETS_FILE", str(odd))
    with pytest.raises(SettingsError, match="square_key"):
        PosSettings()
    monkeypatch.delenv("SW_POS_SECRETS_FILE")
    monkeypatch.delenv("SW_POS_SQUARE_NOTIFICATION_URL")
    with pytest.raises(ValueError, match="SW_POS_SQUARE_NOTIFICATION_URL"):
        PosSettings()
