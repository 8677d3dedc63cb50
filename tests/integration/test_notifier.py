"""The notifier over the dev broker and a real Redis: one delivery per alert, however often replayed."""

import json
from pathlib import Path

import pytest

from devplatform.launcher import Platform
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert, Severity
from services.shared.kafka import make_producer
from tests.conftest import consume_all, platform_part, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook(tmp_path):
    with platform_part(tmp_path / "sink", Platform.start_webhook_sink) as platform:
        sink = platform.components["webhook-sink"]
        record = Path(sink["record"])
        yield sink["url"], lambda: [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _alert(alert_id: str) -> bytes:
    return Alert(alert_id=alert_id, rule="refund_without_customer", severity=Severity.SEVERITY_HIGH, store_id="store-001",
                 register_id="reg-1", explanation="test alert", event_time_ms=1).SerializeToString()


def test_replayed_alerts_are_delivered_once_and_poison_goes_to_dlq(broker, redis_url, webhook, start_service):
    url, deliveries = webhook
    channels = json.dumps([{"type": "log"}, {"type": "webhook", "name": "hq", "url": url, "secret": "s3cret"}])
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_NOTIFIER_CHANNELS": channels}
    notifier = start_service("notifier", env)
    producer = make_producer(broker)
    producer.produce(topics.ALERTS, key="store-001", value=_alert("al-a"))
    producer.produce(topics.ALERTS, key="store-001", value=b"\x00\x01 not an alert")
    producer.produce(topics.ALERTS, key="store-001", value=_alert("al-a"))  # replay
    producer.produce(topics.ALERTS, key="store-001", value=_alert("al-b"))
    producer.flush(10)
    wait_for(lambda: len(deliveries()) >= 2, 30, "two deliveries", notifier)
    # A restarted notifier (new process, same group and Redis) sees a replay and still sends nothing new.
    notifier.stop()
    producer.produce(topics.ALERTS, key="store-001", value=_alert("al-b"))
    producer.flush(10)
    restarted = start_service("notifier", env)
    wait_for(lambda: "duplicate alert skipped" in restarted.log_text(), 30, "replay skipped", restarted)
    got = deliveries()
    assert sorted(d["alert_id"] for d in got) == ["al-a", "al-b"]
    assert got[0]["body"]["rule"] == "refund_without_customer"
    assert '"ALERT test alert"' in notifier.log_text() or "ALERT test alert" in notifier.log_text()
    [dead] = consume_all(broker, topics.dlq(topics.ALERTS), expect=1, timeout=10)
    assert b"shrinkwatch.v1.Alert" in dict(dead.headers())["sw-error"]


def test_unreachable_webhook_keeps_the_alert_in_the_dlq(broker, redis_url, start_service):
    channels = json.dumps([{"type": "webhook", "name": "down", "url": "http://127.0.0.1:9/nothing"}])
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_NOTIFIER_CHANNELS": channels, "SW_NOTIFIER_MAX_ATTEMPTS": "2"}
    start_service("notifier", env)
    producer = make_producer(broker)
    producer.produce(topics.ALERTS, key="store-001", value=_alert("al-c"))
    producer.flush(10)
    [dead] = consume_all(broker, topics.dlq(topics.ALERTS), expect=1, timeout=30)
    assert b"delivery to down failed" in dict(dead.headers())["sw-error"]
    assert dead.value() == _alert("al-c")
