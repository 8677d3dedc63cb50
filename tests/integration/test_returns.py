"""Return authorization over real connections: the store-facing service (pos) projects sw.pos.v1 into
Redis, reads the counter camera's status, scores with the return-risk model and publishes each
decision on sw.returns.v1; the HQ api lists the decisions. The till keeps its answers while the HQ
api is flooded, killed or without its Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from services.api.auth import hash_password
from services.pos.gateway.keys import key_hash
from services.pos.returns import token_key
from services.shared import topics
from services.shared.cameras import CAMERA_STATUS_HASH
from services.shared.contracts.alert_pb2 import Alert, Severity
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.contracts.return_decision_pb2 import ReturnDecision, ReturnOutcome
from services.shared.kafka import make_producer
from tests.conftest import at_store_time, consume_all, wait_for
from tests.integration.test_hq_api import two_store_config

pytestmark = pytest.mark.integration

KEY, OTHER_KEY, PASSWORD = "swpos_till-key-store-001", "swpos_till-key-store-002", "correct horse battery staple"
DAY = 86_400_000


def _write_common(tmp_path: Path, sample_config: Path) -> dict[str, str]:
    keys = tmp_path / "pos-keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": {key_hash(KEY): {"name": "tills-001", "stores": ["store-001"]},
                                             key_hash(OTHER_KEY): {"name": "tills-002", "stores": ["store-002"]}}}))
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"users": [{"username": "hq", "role": "hq_analyst", "password_hash": hash_password(PASSWORD)},
                                               {"username": "manager2", "role": "store_manager", "stores": ["store-002"], "password_hash": hash_password(PASSWORD)}]}))
    config = yaml.safe_load(two_store_config(sample_config, tmp_path / "chain.yaml").read_text())
    # Store 001 checks every receipt-less return, whatever the score.
    config["stores"][0]["returns"] = {"always_warn": ["no_receipt"]}
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(config))
    return {"SW_POS_KEYS_FILE": str(keys), "SW_API_USERS_FILE": str(users), "SW_STORE_CONFIG": str(tmp_path / "chain.yaml"),
            "SW_EVIDENCE_URL": str(tmp_path / "evidence")}


def _event(event_id: str, kind: int, time_ms: int, store: str = "store-001", **fields) -> PosEvent:
    return PosEvent(event_id=event_id, type=kind, store_id=store, register_id="reg-1", event_time_ms=time_ms, currency="GBP",  # type: ignore[arg-type]
                    employee_id=fields.pop("employee_id", "emp-042"), **fields)


def _camera(client: redis.Redis, customer: int, merchandise: int) -> None:
    now = int(time.time() * 1000)
    status = {"store_id": "store-001", "camera_id": "cam-counter-1", "last_frame_ms": now, "last_seen_ms": now, "fps": 10.0, "heartbeat": False,
              "zones": {"counter-1-customer": {"kind": "counter_customer", "persons": customer, "objects": 0, "at_ms": now},
                        "counter-1-merchandise": {"kind": "counter_merchandise", "persons": 0, "objects": merchandise, "at_ms": now}}}
    client.hset(CAMERA_STATUS_HASH, "cam-counter-1", json.dumps(status))


def _assess(api: str, key: str, at_ms: int | None = None, **fields) -> httpx.Response:
    """Asks about a refund made at `at_ms` (default now)."""
    now = time.time()
    when = now if at_ms is None else at_ms / 1000
    body = {"event_id": f"pos-{now:.6f}", "type": "refund", "store_id": "store-001", "register_id": "reg-1",
            "event_time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when)), "employee_id": "emp-042", "currency": "GBP",
            "total_minor": 15999, "tender": "card", **fields}
    return httpx.post(f"{api}/v1/returns/assess", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_a_scripted_abuser_is_denied_and_a_normal_return_accepted_with_reasons_published(broker, redis_url, start_service, sample_assets, risk_models, tmp_path):
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_API_MODELS_DIR": str(risk_models), "SW_POS_MODELS_DIR": str(risk_models),
           **_write_common(tmp_path, Path(sample_assets["store_config"]))}
    till = start_service("pos", env).http
    api = start_service("api", env).http
    store = redis.Redis.from_url(redis_url)
    # The returns are made at a fixed store time (a Wednesday, 15:00 in London), since the model
    # scores the store's local hour and weekday; the chain's history is dated from it.
    now = at_store_time("Europe/London")
    # The chain's history, straight into sw.pos.v1 (as any POS may publish): a card returning goods
    # without receipts at four stores in three weeks; an ordinary sale four days ago.
    history = [_event(f"pos-h{i}", PosEventType.POS_EVENT_TYPE_RETURN, now - (i + 1) * 3 * DAY, store=f"store-00{i % 4 + 1}",
                      total_minor=14999, card_token="tok-abuser", employee_id=f"emp-{i}") for i in range(6)]
    history.append(_event("pos-sale", PosEventType.POS_EVENT_TYPE_SALE, now - 4 * DAY, transaction_id="T-8001", total_minor=15999, card_token="tok-normal"))
    producer = make_producer(broker)
    for event in history:
        producer.produce(topics.POS, key=f"{event.store_id}:reg-1", value=event.SerializeToString())
    assert producer.flush(10) == 0
    wait_for(lambda: store.zcard(token_key("tok-abuser")) == 6 and store.exists("sw:hist:sale:store-001:T-8001"), 60, "the history projected into Redis")

    _camera(store, customer=0, merchandise=0)  # nobody at the counter
    denied = _assess(till, KEY, now, card_token="tok-abuser")
    assert denied.status_code == 200, denied.text
    answer = denied.json()
    # The till gets the outcome, the reasons and what its own camera saw; not the card's chain-wide
    # history or the employee's figures (HQ sees those).
    assert "features" not in answer and answer["camera"]["customer_present"] is False
    assert answer["outcome"] == "deny" and answer["score"] >= answer["deny_at"] and answer["scored_by"].startswith("model ")
    texts = [r["text"] for r in answer["reasons"]]
    assert any("with this card or account" in t or "without a receipt" in t or "no customer" in t.lower() for t in texts), texts
    assert "store policy: returns without a receipt are checked" in texts

    _camera(store, customer=1, merchandise=1)
    accepted = _assess(till, KEY, now, card_token="tok-normal", original_transaction_id="T-8001")
    assert accepted.status_code == 200 and accepted.json()["outcome"] == "accept", accepted.text

    # Both decisions on sw.returns.v1, keyed by store; and on the dashboard's list for HQ.
    published = {ReturnDecision.FromString(m.value()).decision_id: ReturnDecision.FromString(m.value()) for m in consume_all(broker, topics.RETURN_DECISIONS, expect=2)}
    assert {d.outcome for d in published.values()} == {ReturnOutcome.RETURN_OUTCOME_DENY, ReturnOutcome.RETURN_OUTCOME_ACCEPT}
    token = httpx.post(f"{api}/v1/auth/login", json={"username": "hq", "password": PASSWORD}).json()["token"]
    listed = httpx.get(f"{api}/v1/returns/decisions", headers={"Authorization": f"Bearer {token}"}).json()["decisions"]
    assert [d["outcome"] for d in listed] == ["accept", "deny"] and set(published) == {d["decision_id"] for d in listed}
    assert listed[1]["features"]["token_returns_30d"] == 7 and listed[1]["features"]["customer_present"] == 0
    assert listed[0]["features"]["days_since_purchase"] == pytest.approx(4, abs=0.01)
    card = httpx.get(f"{api}/v1/returns/model", headers={"Authorization": f"Bearer {token}"}).json()
    assert card["return"]["loaded"] and card["return"]["importances"]["impurity"]
    other = httpx.post(f"{api}/v1/auth/login", json={"username": "manager2", "password": PASSWORD}).json()["token"]
    assert httpx.get(f"{api}/v1/returns/decisions", headers={"Authorization": f"Bearer {other}"}).json()["decisions"] == []

    # Alerts get the triage model's chance that HQ confirms them, with its reasons.
    alert = Alert(alert_id="al-triage", rule="refund_without_customer", severity=Severity.SEVERITY_HIGH, store_id="store-001", register_id="reg-1",
                  camera_id="cam-counter-1", event_time_ms=now, raised_time_ms=now, facts={"amount": "189.99", "zone_id": "counter-1-customer"})
    producer.produce(topics.ALERTS, key="store-001", value=alert.SerializeToString())
    assert producer.flush(10) == 0
    hq = {"Authorization": f"Bearer {token}"}
    triage = wait_for(lambda: httpx.get(f"{api}/v1/alerts/al-triage", headers=hq).json().get("triage"), 30, "the triaged alert")
    assert 0 <= triage["probability"] <= 1 and triage["model"] >= 1 and triage["features"]["rule_refund_without_customer"] == 1

    # Asked twice, the same return gets the same decision id (the till may retry).
    again = _assess(till, KEY, now, card_token="tok-normal", original_transaction_id="T-8001", event_id="pos-retry-1")
    assert again.json()["decision_id"] == _assess(till, KEY, now, card_token="tok-normal", original_transaction_id="T-8001", event_id="pos-retry-1").json()["decision_id"]


def test_bad_requests_get_4xx_and_a_missing_model_falls_back_to_the_rules_with_a_warning(broker, redis_url, start_service, sample_assets, tmp_path):
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_POS_MODELS_DIR": str(tmp_path / "no-models"),
           "SW_POS_ASSESS_PER_KEY_PER_S": "0.05", "SW_POS_ASSESS_BURST": "12", **_write_common(tmp_path, Path(sample_assets["store_config"]))}
    api = start_service("pos", env).http
    answer = _assess(api, KEY, card_token="tok-x", original_transaction_id="T-1")
    assert answer.status_code == 200 and answer.json()["scored_by"] == "rules" and "no return risk model" in answer.json()["warning"]
    assert _assess(api, OTHER_KEY).status_code == 403
    assert _assess(api, "swpos_unknown").status_code == 401
    assert httpx.post(f"{api}/v1/returns/assess", json={"type": "refund"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 422
    sale = _assess(api, KEY, type="sale")
    assert sale.status_code == 422 and "return or refund" in sale.text
    unknown = _assess(api, KEY, register_id="reg-9")
    assert unknown.status_code == 422 and "reg-9" in unknown.text
    # A body over the cap is refused before a byte is read, key or not; the key before the body is parsed.
    huge = b'{"event_id": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert httpx.post(f"{api}/v1/returns/assess", content=huge, headers={"Content-Type": "application/json"}).status_code == 413
    assert httpx.post(f"{api}/v1/returns/assess", content=huge, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}).status_code == 413
    assert httpx.post(f"{api}/v1/returns/assess", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 401
    assert httpx.post(f"{api}/v1/returns/assess", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 422
    # A key that asks faster than a till does (looking cards up) is told to wait; another store's key is not.
    answers = [_assess(api, KEY, card_token=f"tok-scan-{i}").status_code for i in range(12)]
    assert answers[-1] == 429 and 200 in answers, answers
    limited = _assess(api, KEY, card_token="tok-scan-x")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert _assess(api, OTHER_KEY, store_id="store-002").status_code != 429


def test_the_till_keeps_its_answers_while_the_hq_api_is_flooded_killed_or_without_redis(broker, redis_url, start_service, sample_assets, tmp_path):
    """The tills talk to the store-facing service only: whatever happens to the HQ api (a sign-in
    flood, a 1 GB body, its Redis gone, the process killed) the till's question is answered."""
    from concurrent.futures import ThreadPoolExecutor

    from devplatform.launcher import Platform
    from tests.conftest import platform_part

    common = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, **_write_common(tmp_path, Path(sample_assets["store_config"]))}
    till = start_service("pos", {**common, "SW_REDIS_URL": redis_url, "SW_POS_MODELS_DIR": str(tmp_path / "no-models"),
                                 "SW_POS_ASSESS_PER_KEY_PER_S": "1000", "SW_POS_ASSESS_BURST": "1000"}).http
    with platform_part(tmp_path / "hq-redis", Platform.start_redis) as hq_redis:
        hq = start_service("api", {**common, "SW_REDIS_URL": hq_redis.env["SW_REDIS_URL"]})

        def asks(count: int) -> list[int]:
            return [_assess(till, KEY, card_token=f"tok-{time.monotonic_ns()}").status_code for _ in range(count)]

        assert asks(3) == [200] * 3
        # Flooded: sign-ins from 40 threads and a 1 GB body, while the till asks.
        def flood(i: int) -> int:
            return httpx.post(f"{hq.http}/v1/auth/login", json={"username": f"x{i}", "password": "guess"}, timeout=60).status_code

        def huge() -> int:
            def body():
                for _ in range(16 * 1024):
                    yield b"x" * 65536
            try:
                return httpx.post(f"{hq.http}/v1/auth/login", content=body(), headers={"Content-Type": "application/json"}, timeout=60).status_code
            except httpx.HTTPError:
                return 413  # the api answered and closed while the client was still sending
        with ThreadPoolExecutor(41) as pool:
            flooding = [pool.submit(flood, i) for i in range(200)] + [pool.submit(huge)]
            during = asks(10)
            results = [f.result() for f in flooding]
        assert during == [200] * 10 and set(results) <= {401, 413, 429, 503}, (during, sorted(set(results)))
        # Without its Redis the HQ api is not ready; the till does not notice.
        hq_redis.kill_component("redis")
        wait_for(lambda: httpx.get(f"{hq.http}/readyz", timeout=10).status_code == 503, 30, "the HQ api not ready without Redis")
        assert asks(3) == [200] * 3
    hq.kill()
    assert asks(3) == [200] * 3
    assert httpx.get(f"{till}/readyz", timeout=10).status_code == 200


def test_one_stores_decisions_never_push_out_anothers(redis_url):
    """Each store has its own bounded list: a store (or its key) sending thousands of returns trims
    only its own oldest decisions; the chain-wide view still finds a quiet store's."""
    from services.shared.contracts.return_decision_pb2 import ReturnDecision
    from services.shared.returndecisions import keep_decision, recent_decisions, store_decisions_hash, store_decisions_key

    client = redis.Redis.from_url(redis_url)
    for store in ("store-busy", "store-quiet"):
        client.delete(store_decisions_key(store), store_decisions_hash(store))
    keep_decision(client, ReturnDecision(decision_id="rd-quiet", store_id="store-quiet", decided_time_ms=1_000, outcome=ReturnOutcome.RETURN_OUTCOME_ACCEPT), kept=5)
    for i in range(40):
        keep_decision(client, ReturnDecision(decision_id=f"rd-busy-{i}", store_id="store-busy", decided_time_ms=2_000 + i, outcome=ReturnOutcome.RETURN_OUTCOME_DENY), kept=5)
    busy = recent_decisions(client, {"store-busy"}, 100)
    assert [d["decision_id"] for d in busy] == [f"rd-busy-{i}" for i in range(39, 34, -1)]
    assert client.hlen(store_decisions_hash("store-busy")) == 5  # the trimmed ones' records went with them
    both = recent_decisions(client, {"store-busy", "store-quiet"}, 100)
    assert both[-1]["decision_id"] == "rd-quiet" and both[-1]["outcome"] == "accept"
