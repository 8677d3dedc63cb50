"""The POS gateway over Apache Kafka and redis-server: every route publishes to sw.pos.v1, the
same event sent twice (or at the same moment, the copy told to retry) is published once per store,
keys are per store, bodies are size-capped while they are read, and a POSLog file of many
transactions streams through."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from devplatform.launcher import Platform
from services.pos.gateway.dedupe import Busy, Dedupe
from services.shared import topics
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from tests.conftest import consume_all, platform_part
from tests.integration.pos_files import SHOP, write_pos_keys, write_pos_secrets
from tests.integration.test_hq_api import two_store_config

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "pos-examples"
ARTS = "http://www.nrf-arts.org/IXRetail/namespace/"
MAX_BYTES = 64 * 1024
POSLOG_MAX_BYTES = 48 * 1024 * 1024
EVENT = {"event_id": "pos-gw-1", "type": "refund", "store_id": "store-001", "register_id": "reg-1", "event_time": "2026-11-25T10:00:00+00:00",
         "currency": "GBP", "total_minor": 2999, "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 2999}]}


class Gateway:
    def __init__(self, url: str, broker: str, redis_url: str, keys: dict[str, str], secrets: dict[str, str], proc) -> None:
        self.url, self.broker, self.redis_url, self.keys, self.secrets, self.proc = url, broker, redis_url, keys, secrets, proc

    def post(self, path: str, body: bytes | Iterator[bytes], key: str | None = "tills-001", content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Content-Type": content_type, **({"Authorization": f"Bearer {self.keys[key]}"} if key else {}), **(headers or {})}
        return httpx.post(f"{self.url}{path}", content=body, headers=sent, timeout=120)

    def events(self, expect: int | None = None, timeout: float = 30.0) -> list[PosEvent]:
        return [PosEvent.FromString(m.value()) for m in consume_all(self.broker, topics.POS, expect=expect, timeout=timeout, idle=2)]


@pytest.fixture
def gateway(broker, redis_url, start_service, sample_assets, tmp_path) -> Gateway:
    config = two_store_config(Path(sample_assets["store_config"]), tmp_path / "chain.yaml")
    keys = write_pos_keys(tmp_path / "pos-keys.yaml", {"tills-001": ["store-001"], "tills-002": ["store-002"]})
    secrets = write_pos_secrets(tmp_path / "pos-secrets.yaml")
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_STORE_CONFIG": str(config),
           "SW_POS_KEYS_FILE": str(tmp_path / "pos-keys.yaml"), "SW_POS_SECRETS_FILE": str(tmp_path / "pos-secrets.yaml"),
           "SW_POS_SQUARE_NOTIFICATION_URL": secrets["square_url"], "SW_POS_MAX_BYTES": str(MAX_BYTES), "SW_POS_POSLOG_MAX_BYTES": str(POSLOG_MAX_BYTES)}
    proc = start_service("pos", env)
    return Gateway(proc.http, broker, redis_url, keys, secrets, proc)


def test_json_event_and_batch_are_published_once_each(gateway):
    first = gateway.post("/v1/pos/events", json.dumps(EVENT).encode())
    assert first.status_code == 202, first.text
    assert first.json()["duplicate"] is False and first.json()["topic"] == topics.POS
    again = gateway.post("/v1/pos/events", json.dumps(EVENT).encode())
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert (again.json()["partition"], again.json()["offset"]) == (first.json()["partition"], first.json()["offset"])
    batch = {"events": [EVENT, {**EVENT, "event_id": "pos-gw-2"}, {**EVENT, "event_id": "pos-gw-3", "type": "void", "after_tender": True,
                                                                   "original_transaction_id": "T-77"}]}
    answer = gateway.post("/v1/pos/events", json.dumps(batch).encode())
    assert answer.status_code == 202, answer.text
    assert (answer.json()["published"], answer.json()["duplicates"]) == (2, 1)
    assert [(e["index"], e["event_id"], e["duplicate"]) for e in answer.json()["events"]] == [(0, "pos-gw-1", True), (1, "pos-gw-2", False), (2, "pos-gw-3", False)]
    events = gateway.events()
    assert sorted(e.event_id for e in events) == ["pos-gw-1", "pos-gw-2", "pos-gw-3"]
    assert next(e for e in events if e.event_id == "pos-gw-3").after_tender


def test_identical_requests_at_the_same_moment_publish_once(gateway):
    """A copy that arrives while another is being published is told to retry (409, Retry-After);
    its retry is answered with where the first one went."""
    batch = json.dumps({"events": [{**EVENT, "event_id": f"pos-race-{i}"} for i in range(40)]}).encode()
    single = json.dumps({**EVENT, "event_id": "pos-race-single"}).encode()
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []
    conflicts: list[httpx.Response] = []

    def send(body: bytes) -> None:
        start.wait()
        for _ in range(50):
            answer = gateway.post("/v1/pos/events", body)
            if answer.status_code != 409:
                break
            conflicts.append(answer)
            time.sleep(random.uniform(0.05, 0.15))  # Retry-After says 1 s; the test need not wait that long
        answers.append(answer)

    threads = [threading.Thread(target=send, args=(body,)) for body in [batch] * 4 + [single] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(a.status_code for a in answers) == [200] * 6 + [202] * 2, [a.text for a in answers]
    singles = [a.json() for a in answers if "event_id" in a.json()]
    assert sorted(a["duplicate"] for a in singles) == [False, True, True, True] and len({(a["partition"], a["offset"]) for a in singles}) == 1
    assert sum(a.json().get("published", 0) for a in answers) == 40
    assert all(c.headers["Retry-After"] == "1" and "another request" in c.json()["detail"] for c in conflicts)
    print(f"{len(conflicts)} copies were told to retry while the first was being published")
    events = gateway.events()
    assert len(events) == 41 and len({e.event_id for e in events}) == 41


def test_the_same_event_id_in_two_stores_is_published_for_each(gateway):
    """Separate POS systems reuse ids: store-002's event is not store-001's duplicate, and neither
    store's key can claim the other's ids; each store's own copy again is a duplicate."""
    first = gateway.post("/v1/pos/events", json.dumps(EVENT).encode(), key="tills-001")
    other = gateway.post("/v1/pos/events", json.dumps({**EVENT, "store_id": "store-002"}).encode(), key="tills-002")
    again = gateway.post("/v1/pos/events", json.dumps({**EVENT, "store_id": "store-002"}).encode(), key="tills-002")
    assert (first.status_code, other.status_code, again.status_code) == (202, 202, 200), other.text
    assert other.json()["duplicate"] is False and again.json()["duplicate"] is True and again.json()["offset"] == other.json()["offset"]
    assert gateway.post("/v1/pos/events", json.dumps(EVENT).encode(), key="tills-001").json()["duplicate"] is True
    events = gateway.events()
    assert sorted((e.store_id, e.event_id) for e in events) == [("store-001", "pos-gw-1"), ("store-002", "pos-gw-1")]


def test_keys_are_per_store(gateway):
    body = json.dumps(EVENT).encode()
    assert gateway.post("/v1/pos/events", body, key=None).status_code == 401
    unknown = httpx.post(f"{gateway.url}/v1/pos/events", content=body, headers={"Content-Type": "application/json", "Authorization": "Bearer swpos_guess"})
    assert unknown.status_code == 401 and unknown.headers["WWW-Authenticate"] == "Bearer"
    other = gateway.post("/v1/pos/events", body, key="tills-002")
    assert other.status_code == 403 and "store-001" in other.json()["detail"] and "tills-002" in other.json()["detail"]
    poslog = gateway.post("/v1/pos/poslog", (EXAMPLES / "poslog-store-0042.xml").read_bytes(), key="tills-002", content_type="application/xml")
    assert poslog.status_code == 403 and "store-001" in poslog.json()["detail"]
    assert gateway.events(timeout=5) == []
    by_header = httpx.post(f"{gateway.url}/v1/pos/events", content=body,
                           headers={"Content-Type": "application/json", "X-ShrinkWatch-Pos-Key": gateway.keys["tills-001"]})
    assert by_header.status_code == 202, by_header.text


def test_size_and_content_type_limits_publish_nothing(gateway):
    big = json.dumps({"events": [{**EVENT, "event_id": f"pos-big-{i}"} for i in range(400)]}).encode()
    assert len(big) > MAX_BYTES
    declared = gateway.post("/v1/pos/events", big)
    assert declared.status_code == 413 and "SW_POS_MAX_BYTES" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body is read
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    assert gateway.post("/v1/pos/events", chunks()).status_code == 413
    wrong_type = gateway.post("/v1/pos/events", json.dumps(EVENT).encode(), content_type="text/plain")
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["detail"]
    assert gateway.post("/v1/pos/poslog", b"<POSLog/>", content_type="application/json").status_code == 415
    # A sender that goes away halfway through its body: nothing published, nothing broken.
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/pos/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n"
                     f"Authorization: Bearer {gateway.keys['tills-001']}\r\n\r\n".encode() + big[:20000])
    assert gateway.events(timeout=5) == []
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert "Exception in ASGI application" not in gateway.proc.log_text()


def test_poslog_day_publishes_each_event_once_and_refuses_hostile_xml(gateway):
    body = (EXAMPLES / "poslog-store-0042.xml").read_bytes()
    answer = gateway.post("/v1/pos/poslog", body, content_type="application/xml")
    assert answer.status_code == 202, answer.text
    assert (answer.json()["published"], answer.json()["duplicates"], len(answer.json()["skipped"])) == (6, 0, 2)
    events = gateway.events(expect=6)
    assert sorted(PosEventType.Name(e.type) for e in events) == ["POS_EVENT_TYPE_NO_SALE", "POS_EVENT_TYPE_RETURN", "POS_EVENT_TYPE_RETURN",
                                                                 "POS_EVENT_TYPE_SALE", "POS_EVENT_TYPE_VOID", "POS_EVENT_TYPE_VOID"]
    post_void = next(e for e in events if e.after_tender)
    assert post_void.original_transaction_id == "3:2026-11-27:1041" and post_void.store_id == "store-001" and post_void.register_id == "reg-1"
    again = gateway.post("/v1/pos/poslog", body, content_type="text/xml; charset=utf-8")
    assert again.status_code == 200 and again.json()["duplicates"] == 6
    xxe = b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><POSLog>&x;</POSLog>'
    refused = gateway.post("/v1/pos/poslog", xxe, content_type="application/xml")
    assert refused.status_code == 422 and "refused" in refused.json()["detail"][0]["msg"]
    bad = body.replace(b"<SequenceNumber>1043</SequenceNumber>", b"<SequenceNumber></SequenceNumber>")
    invalid = gateway.post("/v1/pos/poslog", bad, content_type="application/xml")
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["index"] == 3 and invalid.json()["detail"][0]["loc"][-1] == "SequenceNumber"
    assert len(gateway.events(timeout=6)) == 6


def _transactions(count: int) -> Iterator[bytes]:
    """A till's log of `count` sales, each written as a vendor writes one (lines, tender, totals, extensions)."""
    yield f'<?xml version="1.0" encoding="UTF-8"?>\n<POSLog xmlns="{ARTS}" xmlns:acs="urn:vendor:acs">'.encode()
    line = ("<LineItem EntryMethod=\"Scanned\" acs:weightItem=\"false\"><SequenceNumber>{n}</SequenceNumber><Sale ItemType=\"Stock\">"
            "<POSIdentity POSIDType=\"GTIN\"><POSItemID>0501234567890{n}</POSItemID></POSIdentity><ItemID>SKU-{n}</ItemID>"
            "<MerchandiseHierarchy Level=\"Department\" acs:DepartmentDescription=\"Household\">4</MerchandiseHierarchy><Description>Item number {n}</Description>"
            "<RegularSalesUnitPrice>4.99</RegularSalesUnitPrice><ActualSalesUnitPrice>4.99</ActualSalesUnitPrice><ExtendedAmount>9.98</ExtendedAmount>"
            "<Quantity>2</Quantity><acs:OperatorSequence>{n}</acs:OperatorSequence><acs:Itemizers Itemizer1=\"true\">112</acs:Itemizers></Sale></LineItem>")
    for sequence in range(count):
        yield (f"<Transaction><RetailStoreID>0042</RetailStoreID><WorkstationID>3</WorkstationID><SequenceNumber>{sequence}</SequenceNumber>"
               "<BusinessDayDate>2026-11-27</BusinessDayDate><BeginDateTime>2026-11-27T09:59:12</BeginDateTime><EndDateTime>2026-11-27T10:00:00</EndDateTime>"
               "<OperatorID OperatorName=\"J. Patel\">emp-1</OperatorID><CurrencyCode>GBP</CurrencyCode><RetailTransaction Version=\"2.1\">"
               + "".join(line.format(n=n) for n in range(1, 4))
               + "<LineItem EntryMethod=\"MSR\"><Tender TenderType=\"CreditDebit\" TypeCode=\"Sale\"><Amount>29.94</Amount><Authorization HostAuthorized=\"true\">"
               "<AuthorizationCode>734277</AuthorizationCode></Authorization></Tender></LineItem><Total TotalType=\"TransactionGrandAmount\">29.94</Total>"
               "<Total TotalType=\"TransactionTaxAmount\">4.99</Total><acs:PerformanceMetrics><acs:RingTime>21</acs:RingTime><acs:TenderTime>9</acs:TenderTime>"
               "</acs:PerformanceMetrics></RetailTransaction></Transaction>\n").encode()
    yield b"</POSLog>"


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return 1024 * int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_poslog_stream_of_many_transactions(gateway):
    count = 12_000
    size = sum(len(part) for part in _transactions(count))
    pid = gateway.proc.popen.pid
    before, peak, done = _rss_bytes(pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        answer = gateway.post("/v1/pos/poslog", _transactions(count), content_type="application/xml")
    finally:
        done.set()
        sampler.join()
    took = time.monotonic() - started
    assert answer.status_code == 202, answer.text[:2000]
    assert answer.json()["published"] == count
    grew = peak[0] - before
    print(f"POSLog of {count} transactions, {size / 1e6:.1f} MB, chunked: {took:.1f} s; api peak RSS grew {grew / 1e6:.1f} MB")
    # A whole tree of the document takes about four times its size; one transaction at a time leaves
    # only the compact serialised events growing.
    assert grew < size / 2
    events = gateway.events(expect=count, timeout=120)
    assert len(events) == count and len({e.event_id for e in events}) == count
    too_big = gateway.post("/v1/pos/poslog", _transactions(POSLOG_MAX_BYTES // 2000), content_type="application/xml")
    assert too_big.status_code == 413 and "SW_POS_POSLOG_MAX_BYTES" in too_big.json()["detail"]


def _shopify_headers(body: bytes, secret: str) -> dict[str, str]:
    return {"X-Shopify-Hmac-Sha256": base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode(),
            "X-Shopify-Shop-Domain": SHOP, "X-Shopify-Topic": "refunds/create", "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"}


def _dated(body: bytes, old: bytes, days_ago: float) -> bytes:
    """An example webhook as if sent `days_ago` (refunds older than the dedupe window are not published)."""
    return body.replace(old, (datetime.now(UTC) - timedelta(days=days_ago)).isoformat().encode())


def test_shopify_webhook_publishes_a_refund_once(gateway):
    example = (EXAMPLES / "shopify-refund.json").read_bytes()
    body = _dated(example, b"2026-11-27T10:15:00-05:00", 0.5)
    signed = _shopify_headers(body, gateway.secrets["shopify"])
    answer = gateway.post("/v1/pos/webhooks/shopify", body, key=None, headers=signed)
    assert answer.status_code == 202, answer.text
    assert answer.json()["event_id"] == "shopify-890088186047892319"
    assert gateway.post("/v1/pos/webhooks/shopify", body, key=None, headers=signed).json()["duplicate"] is True
    forged = gateway.post("/v1/pos/webhooks/shopify", body, key=None, headers=_shopify_headers(body, "not-the-secret"))
    assert forged.status_code == 401
    replayed = _dated(example.replace(b"890088186047892319", b"890088186047892320"), b"2026-11-27T10:15:00-05:00", 8)
    stale = gateway.post("/v1/pos/webhooks/shopify", replayed, key=None, headers=_shopify_headers(replayed, gateway.secrets["shopify"]))
    assert stale.status_code == 200 and stale.json()["published"] is False and "days ago" in stale.json()["reason"], stale.text
    [event] = gateway.events(expect=1)
    assert (event.store_id, event.register_id, event.total_minor, event.currency, event.type) == ("store-001", "reg-1", 19900, "USD", PosEventType.POS_EVENT_TYPE_REFUND)
    assert len(gateway.events(timeout=5)) == 1


def test_square_publishes_completed_refunds_once(gateway):
    completed = _dated((EXAMPLES / "square-refund-completed.json").read_bytes(), b"2026-11-27T14:34:58.715Z", 0.5)
    pending = completed.replace(b'"COMPLETED"', b'"PENDING"').replace(b'"refund.updated"', b'"refund.created"')

    def signed(body: bytes) -> dict[str, str]:
        digest = hmac.new(gateway.secrets["square"].encode(), gateway.secrets["square_url"].encode() + body, hashlib.sha256).digest()
        return {"x-square-hmacsha256-signature": base64.b64encode(digest).decode()}

    waiting = gateway.post("/v1/pos/webhooks/square", pending, key=None, headers=signed(pending))
    assert waiting.status_code == 200 and waiting.json()["published"] is False and "PENDING" in waiting.json()["reason"]
    done = gateway.post("/v1/pos/webhooks/square", completed, key=None, headers=signed(completed))
    assert done.status_code == 202, done.text
    again = gateway.post("/v1/pos/webhooks/square", completed, key=None, headers=signed(completed))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert gateway.post("/v1/pos/webhooks/square", completed, key=None, headers=signed(pending)).status_code == 401
    replayed = _dated((EXAMPLES / "square-refund-completed.json").read_bytes(), b"2026-11-27T14:34:58.715Z", 10).replace(b"KkAkhdMsgzn", b"ReplayedXzn")
    stale = gateway.post("/v1/pos/webhooks/square", replayed, key=None, headers=signed(replayed))
    assert stale.status_code == 200 and stale.json()["published"] is False and "days ago" in stale.json()["reason"], stale.text
    [event] = gateway.events(expect=1)
    assert (event.total_minor, event.currency, event.store_id) == (4599, "GBP", "store-001")
    assert len(gateway.events(timeout=5)) == 1


def test_a_claim_is_given_back_when_the_broker_fails(redis_url, start_service, sample_assets, tmp_path):
    """The broker stops: the request answers 503 and leaves no marker, so the POS system's retry publishes."""
    keys = write_pos_keys(tmp_path / "pos-keys.yaml", {"tills-001": ["store-001"]})
    with platform_part(tmp_path / "broker", Platform.start_broker) as platform:
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        proc = start_service("pos", {"SW_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SW_REDIS_URL": redis_url, "SW_POS_KEYS_FILE": str(tmp_path / "pos-keys.yaml")})
        platform.down(echo=lambda *_: None)
        answer = httpx.post(f"{proc.http}/v1/pos/events", json={**EVENT, "event_id": "pos-broker-down"}, headers={"Authorization": f"Bearer {keys['tills-001']}"},
                            timeout=60)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
        assert redis.Redis.from_url(redis_url).keys("sw:pos:seen:*") == []


def test_an_event_answered_503_while_the_broker_is_down_is_on_the_topic_once_after_the_retry(redis_url, start_service, sample_assets, tmp_path):
    """The broker dies mid-request: the gateway answers 503 and gives the claim back. The message it
    had queued must not reach the broker once it is back, beside the POS system's retry."""
    keys = write_pos_keys(tmp_path / "pos-keys.yaml", {"tills-001": ["store-001"]})
    with platform_part(tmp_path / "broker", Platform.start_broker) as platform:
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        proc = start_service("pos", {"SW_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SW_REDIS_URL": redis_url, "SW_POS_KEYS_FILE": str(tmp_path / "pos-keys.yaml")})
        [broker] = [name for name in platform.components if name.startswith("broker")]
        platform.kill_component(broker)

        def post() -> httpx.Response:
            return httpx.post(f"{proc.http}/v1/pos/events", json={**EVENT, "event_id": "pos-broker-back"},
                              headers={"Authorization": f"Bearer {keys['tills-001']}"}, timeout=60)

        answer = post()
        assert answer.status_code == 503, answer.text
        platform.restart(broker)
        deadline = time.monotonic() + 60
        while (answer := post()).status_code in (409, 503) and time.monotonic() < deadline:
            time.sleep(1)
        assert answer.status_code == 202, answer.text
        copies = [m for m in consume_all(bootstrap, topics.POS, timeout=30, idle=10) if PosEvent.FromString(m.value()).event_id == "pos-broker-back"]
        assert len(copies) == 1


def test_dedupe_claims_fail_fast_on_each_other(redis_url):
    """A claim never waits for another request's: it gives back what it took and raises Busy at
    once; once the other is done, the same claim sees where its events went."""
    client = redis.Redis.from_url(redis_url)
    first, second = Dedupe(client, ttl_s=60), Dedupe(client, ttl_s=60)
    a, b, c = ("store-001", "a"), ("store-001", "b"), ("store-001", "c")
    token, seen = first.claim("json", [a, b], hold_s=30)
    assert seen == {a: None, b: None}
    started = time.monotonic()
    with pytest.raises(Busy, match="another request"):
        second.claim("json", [c, a], hold_s=30)
    assert time.monotonic() - started < 1
    assert client.get(Dedupe.key("json", *c)) is None  # a claim that gave up gives back what it took
    first.published("json", {a: {"offset": 7}})
    first.release("json", token, [b])
    _, later = second.claim("json", [a, b], hold_s=30)
    assert later == {a: {"offset": 7}, b: None}
    first.release("json", token, [b])  # not the holder any more: the second claim keeps it
    assert client.get(Dedupe.key("json", *b)) is not None
    assert second.claim("poslog", [a], hold_s=30)[1] == {a: None}  # per source
    assert second.claim("json", [("store-002", "a")], hold_s=30)[1] == {("store-002", "a"): None}  # per store
