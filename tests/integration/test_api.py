"""The store-facing service's POS gateway over a real broker: validated POS events in (every format,
keys, duplicates and limits: test_pos_gateway.py; the HQ routes: test_hq_api.py)."""

import re

import httpx
import pytest

from services.shared import topics
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from tests.conftest import consume_all
from tests.integration.pos_files import write_pos_keys

pytestmark = pytest.mark.integration

VALID = {
    "event_id": "pos-api-1", "type": "refund", "store_id": "store-001", "register_id": "reg-1",
    "event_time": "2026-11-25T10:00:00+00:00", "currency": "GBP", "total_minor": 2999,
    "employee_id": "emp-1", "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 2999}],
}


@pytest.fixture
def api(broker, redis_url, start_service, tmp_path):
    keys = write_pos_keys(tmp_path / "pos-keys.yaml", {"tills-001": ["store-001"]})
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_POS_KEYS_FILE": str(tmp_path / "pos-keys.yaml")}
    proc = start_service("pos", env)
    client = httpx.Client(base_url=proc.http, headers={"Authorization": f"Bearer {keys['tills-001']}"})
    client.health = proc.health  # type: ignore[attr-defined]
    return client


def test_valid_pos_event_is_published_as_protobuf(api, broker):
    response = api.post("/v1/pos/events", json=VALID)
    assert response.status_code == 202, response.text
    assert response.json()["topic"] == topics.POS
    [msg] = consume_all(broker, topics.POS, expect=1)
    assert msg.key() == b"store-001:reg-1"
    event = PosEvent.FromString(msg.value())
    assert event.event_id == "pos-api-1" and event.type == PosEventType.POS_EVENT_TYPE_REFUND
    assert event.event_time_ms == 1795600800000


def test_each_event_carries_its_requests_correlation_id_from_traceparent_the_senders_id_or_a_new_one(api, broker):
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = [({"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}, trace),
            ({"traceparent": "00-not-a-trace-01", "X-Correlation-Id": "till-7:req-19"}, "till-7:req-19"),
            ({"X-Correlation-Id": "spaces, quotes\" and a <tag> are not an id"}, None)]
    answered = []
    for number, (headers, expected) in enumerate(sent):
        response = api.post("/v1/pos/events", json={**VALID, "event_id": f"pos-corr-{number}"}, headers=headers)
        assert response.status_code == 202, response.text
        answered.append(response.headers["X-Correlation-Id"])
        assert answered[-1] == expected or (expected is None and re.fullmatch(r"[0-9a-f]{32}", answered[-1]))
    published = {PosEvent.FromString(msg.value()).event_id: PosEvent.FromString(msg.value()).correlation_id
                 for msg in consume_all(broker, topics.POS, expect=3)}
    assert published == {f"pos-corr-{n}": answered[n] for n in range(3)}
    refused = api.post("/v1/pos/events", json={**VALID, "event_id": "pos-corr-bad", "type": "robbery"}, headers={"X-Request-Id": "req-4"})
    assert refused.status_code == 422 and refused.headers["X-Correlation-Id"] == "req-4"


@pytest.mark.parametrize(
    "body, field",
    [
        ({k: v for k, v in VALID.items() if k != "register_id"}, "register_id"),
        ({**VALID, "type": "robbery"}, "type"),
        ({**VALID, "total_minor": "a lot"}, "total_minor"),
        ({**VALID, "event_time": "yesterday"}, "event_time"),
        ({**VALID, "register_id": "reg-404"}, "register_id"),  # well-formed but unknown to the store config
    ],
)
def test_malformed_pos_event_gets_422_naming_the_field_and_publishes_nothing(api, broker, body, field):
    response = api.post("/v1/pos/events", json=body)
    assert response.status_code == 422
    assert field in [part for err in response.json()["detail"] for part in err["loc"]]
    assert consume_all(broker, topics.POS, timeout=4, idle=1) == []


def test_non_json_body_gets_422(api, broker):
    response = api.post("/v1/pos/events", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert consume_all(broker, topics.POS, timeout=4, idle=1) == []


def test_health_and_metrics_on_the_health_port_only(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    # /metrics and the OpenAPI document are for the operators' network, not for the stores.
    assert api.get("/metrics").status_code == 404 and api.get("/openapi.json").status_code == 404
    assert "sw_pos_requests_total" in httpx.get(f"{api.health}/metrics").text
    assert "/v1/returns/assess" in httpx.get(f"{api.health}/openapi.json").json()["paths"]
