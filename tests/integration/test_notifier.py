"""The notifier over Apache Kafka, a real Redis and real receivers (a signed-webhook endpoint and an
ntfy-compatible push server, which Apprise's ntfy plugin talks to): each recipient gets each alert
once on each contact, through a receiver outage and a SIGKILL; escalations fire on time and stop when
acknowledged; bursts become digests; what cannot be delivered or decoded is kept in the DLQ."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from devplatform.launcher import free_port
from services.notifier.channels import build_channel
from services.notifier.dispatcher import Contact, Dispatcher
from services.notifier.outbox import Job, Outbox
from services.notifier.routing import parse_routing
from services.notifier.service import Notifier
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert, Severity
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.deliveries import read_deliveries
from services.shared.evidence import EvidenceStore
from services.shared.incidents import incident_id
from services.shared.kafka import ConsumeLoop, make_producer
from tests.conftest import Proc, _spawn, consume_all, wait_for

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret"


@dataclass
class Sink:
    """devplatform.webhooksink on a fixed port, so a test can stop it and start it again (an outage)."""

    tmp: Path
    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def record(self) -> Path:
        return self.tmp / f"sink-{self.port}.jsonl"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    @property
    def ntfy(self) -> str:
        return f"ntfy://127.0.0.1:{self.port}"

    def start(self) -> Sink:
        argv = [sys.executable, "-m", "devplatform.webhooksink", "--port", str(self.port), "--record", str(self.record), "--secret", SECRET]
        self.proc = _spawn("sink", argv, self.tmp)

        def up() -> bool:
            try:
                return httpx.get(self.url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, f"sink on port {self.port}", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def entries(self, kind: str | None = None) -> list[dict]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [e for e in map(json.loads, lines) if kind is None or e["kind"] == kind]

    def webhook_alerts(self, recipient: str | None = None) -> list[str]:
        return [e["body"]["alert"]["alert_id"] for e in self.entries("webhook")
                if e["body"]["kind"] == "alert" and (recipient is None or e["body"]["recipient"] == recipient)]

    def ntfy_alerts(self, topic: str) -> list[str]:
        """The alerts pushed, by the incident page each push links to (each test alert is an incident of its own)."""
        return [_opened_by(e["message"].rsplit("/incidents/", 1)[-1]) for e in self.entries("ntfy") if e["topic"] == topic]


@pytest.fixture
def sinks(tmp_path):
    made: list[Sink] = []

    def make() -> Sink:
        made.append(Sink(tmp_path).start())
        return made[-1]

    yield make
    for sink in made:
        sink.stop()


_TEST_ALERT_IDS = [f"al-{i:03d}" for i in range(300)] + [f"al-{i:02d}" for i in range(10)] + ["al-a", "al-b"]


def _opened_by(incident: str) -> str:
    """The test alert that opened an incident (its page's link names the incident)."""
    return next((a for a in _TEST_ALERT_IDS if incident_id("store-001", a) == incident), incident)


def _alert(alert_id: str, severity: int = Severity.SEVERITY_HIGH, store: str = "store-001") -> Alert:
    # Each at a register of its own: separate situations, so separate incidents and pages.
    return Alert(alert_id=alert_id, rule="refund_without_customer", severity=severity, store_id=store, register_id=f"reg-{alert_id}",  # type: ignore[arg-type]
                 explanation=f"test alert {alert_id}", event_time_ms=int(time.time() * 1000), raised_time_ms=int(time.time() * 1000))


def _webhook(sink: Sink, secret: str = "${SW_ROUTING_TEST_SECRET}", timeout_s: float = 2.0) -> dict:
    return {"type": "webhook", "name": "hook", "url": sink.url, "secret": secret, "timeout_s": timeout_s}


def _ntfy(sink: Sink, topic: str) -> dict:
    return {"type": "apprise", "name": "phone", "url": f"{sink.ntfy}/{topic}", "timeout_s": 2.0}


def _notifier_env(broker: str, redis_url: str, tmp_path: Path, routing: dict) -> dict[str, str]:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(routing))
    return {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_NOTIFIER_ROUTING_FILE": str(path),
            "SW_NOTIFIER_SNAPSHOT_WAIT_S": "0", "SW_EVIDENCE_URL": str(tmp_path / "evidence"), "SW_ROUTING_TEST_SECRET": SECRET}


def _produce(broker: str, values: list[bytes], topic: str = topics.ALERTS) -> None:
    producer = make_producer(broker)
    for value in values:
        producer.produce(topic, key="store-001", value=value)
    assert producer.flush(15) == 0


def test_each_recipient_gets_each_alert_once_per_contact_and_the_rest_goes_to_the_dlq(broker, redis_url, sinks, tmp_path, start_service):
    sink = sinks()
    routing = {"recipients": {"officer": {"contacts": [_ntfy(sink, "lp-officer"), {"type": "log"}]},
                              "hq": {"contacts": [_webhook(sink)]},
                              # A receiver that refuses our signature (the secrets differ): 401, kept in the DLQ.
                              "forged": {"contacts": [{**_webhook(sink, secret="not-the-receivers-secret"), "name": "refused"}]}},
               "routes": [{"name": "all", "levels": [{"notify": ["officer", "hq"]}]},
                          {"name": "refused-b", "match": {"min_severity": "critical"}, "levels": [{"notify": ["forged"]}]}]}
    env = {**_notifier_env(broker, redis_url, tmp_path, routing), "SW_NOTIFIER_SNAPSHOT_WAIT_S": "2"}
    # The recorder has written al-a's snapshot already (with its pending manifest); al-b has no evidence.
    evidence = EvidenceStore(env["SW_EVIDENCE_URL"])
    snapshot = b"\xff\xd8 a jpeg \xff\xd9"
    evidence.write_files("store-001", "al-a", {"snapshot.jpg": snapshot})
    evidence.write_manifest({"store_id": "store-001", "alert_id": "al-a", "status": "pending", "frames": [], "snapshot": {"name": "snapshot.jpg"}, "clip": None})
    notifier = start_service("notifier", env)
    _produce(broker, [_alert("al-a").SerializeToString(), b"\x00\x01 not an alert", _alert("al-a").SerializeToString(),
                      _alert("al-b", Severity.SEVERITY_CRITICAL).SerializeToString()])
    wait_for(lambda: len(sink.webhook_alerts()) >= 2 and len(sink.ntfy_alerts("lp-officer")) >= 2, 30, "two alerts on both contacts", notifier)
    # A restarted notifier (new process, same group and Redis) sees a replay and sends nothing new.
    notifier.stop()
    _produce(broker, [_alert("al-b", Severity.SEVERITY_CRITICAL).SerializeToString()])
    restarted = start_service("notifier", env)
    wait_for(lambda: 'sw_notifier_enqueued_total{outcome="duplicate"}' in httpx.get(restarted.http + "/metrics").text, 30, "replay seen", restarted)
    time.sleep(2)
    assert sorted(sink.webhook_alerts("hq")) == ["al-a", "al-b"]
    assert sorted(sink.ntfy_alerts("lp-officer")) == ["al-a", "al-b"]
    hook = next(e for e in sink.entries("webhook") if e["alert_id"] == "al-a")
    assert hook["signature"] == "valid" and hook["delivery_id"] == "al-a|hq/hook"
    assert hook["body"]["alert"]["rule"] == "refund_without_customer" and hook["body"]["url"].endswith("/incidents/" + incident_id("store-001", "al-a"))
    phone = next(e for e in sink.entries("ntfy") if e["message"].endswith(incident_id("store-001", "al-a")))
    assert phone["title"] == "[HIGH] refund without customer at store-001 reg-al-a" and "test alert al-a" in phone["message"]
    # The snapshot goes with the push where it exists; al-b's push went with the link only, after the wait.
    assert (phone["filename"], phone["attachment_bytes"], phone["path"]) == ("snapshot.jpg", len(snapshot), "/lp-officer")
    assert next(e for e in sink.entries("ntfy") if e["message"].endswith(incident_id("store-001", "al-b")))["attachment_bytes"] == 0
    assert "ALERT test alert al-a" in notifier.log_text()
    # The poison message and the refused delivery are both kept, with the reason.
    dead = consume_all(broker, topics.dlq(topics.ALERTS), expect=2, timeout=20)
    errors = sorted(dict(m.headers())["sw-error"].decode() for m in dead)
    assert "shrinkwatch.v1.Alert" in errors[1] and "forged/refused refused by the receiver: webhook refused: HTTP 401" in errors[0]
    refused = next(m for m in dead if b"forged" in dict(m.headers())["sw-error"])
    assert Alert.FromString(refused.value()).alert_id == "al-b"
    assert dict(refused.headers())["sw-recipient"] == b"forged"
    # Every delivery is on record for the alert page.
    records = {r["channel"]: r for r in read_deliveries(redis.Redis.from_url(redis_url), "al-b")}
    assert set(records) == {"officer/phone", "officer/log", "hq/hook", "forged/refused"}
    assert records["hq/hook"]["status"] == "delivered" and records["hq/hook"]["attempts"] == 1 and records["hq/hook"]["latency_ms"] is not None
    assert records["forged/refused"]["status"] == "failed" and "HTTP 401" in records["forged/refused"]["last_error"]


def test_a_contact_down_for_30s_gets_each_alert_exactly_once_and_does_not_delay_the_others(broker, redis_url, sinks, tmp_path, start_service):
    down, up = sinks(), sinks()
    routing = {"recipients": {"officer": {"contacts": [_ntfy(down, "lp-officer")]}, "hq": {"contacts": [_webhook(down)]},
                              "soc": {"contacts": [_webhook(up)]}},
               "routes": [{"name": "all", "levels": [{"notify": ["officer", "hq", "soc"]}]}],
               "limits": {"max_per_window": 1000}, "delivery": {"max_backoff_s": 8}}
    notifier = start_service("notifier", _notifier_env(broker, redis_url, tmp_path, routing))
    down.stop()
    stopped = time.monotonic()
    ids = [f"al-{i:02d}" for i in range(10)]
    _produce(broker, [_alert(i).SerializeToString() for i in ids])
    wait_for(lambda: len(up.webhook_alerts()) == 10, 30, "the working contact's deliveries", notifier)
    others_done_s = time.monotonic() - stopped
    time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    records = read_deliveries(redis.Redis.from_url(redis_url), "al-00")
    assert {r["channel"]: r["status"] for r in records} == {"officer/phone": "retrying", "hq/hook": "retrying", "soc/hook": "delivered"}
    down.start()
    wait_for(lambda: len(down.webhook_alerts()) >= 10 and len(down.ntfy_alerts("lp-officer")) >= 10, 60, "deliveries after the outage", notifier)
    time.sleep(3)  # a duplicate would arrive meanwhile
    assert sorted(down.webhook_alerts()) == ids and sorted(down.ntfy_alerts("lp-officer")) == ids and sorted(up.webhook_alerts()) == ids
    assert others_done_s < 25, f"the working contact waited {others_done_s:.0f}s for the failing ones"
    after = {r["channel"]: r for r in read_deliveries(redis.Redis.from_url(redis_url), "al-00")}
    assert after["hq/hook"]["status"] == "delivered" and after["hq/hook"]["attempts"] > 1
    assert [a["outcome"] for a in after["hq/hook"]["attempt_log"]][-1] == "delivered"
    assert all(a["outcome"] == "failed" for a in after["hq/hook"]["attempt_log"][:-1])


def test_sigkill_mid_burst_then_restart_delivers_every_alert_once_per_recipient(broker, redis_url, sinks, tmp_path, start_service):
    """The remaining window: a kill after the receiver took a request and before the notifier recorded
    it repeats that one notification (same delivery id) when its lease runs out. Measured here and by
    `scripts/bench_notifier.py --kills`."""
    sink = sinks()
    routing = {"recipients": {"officer": {"contacts": [_ntfy(sink, "lp-officer")]}, "hq": {"contacts": [_webhook(sink)]}},
               "routes": [{"name": "all", "levels": [{"notify": ["officer", "hq"]}]}], "limits": {"max_per_window": 100000}}
    env = _notifier_env(broker, redis_url, tmp_path, routing)
    notifier = start_service("notifier", env)
    ids = [f"al-{i:03d}" for i in range(300)]
    _produce(broker, [_alert(i).SerializeToString() for i in ids])
    wait_for(lambda: len(sink.webhook_alerts()) >= 60 or len(sink.ntfy_alerts("lp-officer")) >= 60, 60, "a fifth of the burst", notifier)
    notifier.kill()
    at_kill = len(sink.webhook_alerts()), len(sink.ntfy_alerts("lp-officer"))
    assert min(at_kill) < 300, "the burst ended before the kill; nothing was tested"
    restarted = start_service("notifier", env)
    wait_for(lambda: set(sink.webhook_alerts()) == set(ids) and set(sink.ntfy_alerts("lp-officer")) == set(ids), 120, "every alert after the restart", restarted)
    time.sleep(15)  # past the lease of anything in flight at the kill: a repeat would have arrived
    hooks, phones = Counter(sink.webhook_alerts()), Counter(sink.ntfy_alerts("lp-officer"))
    repeated = {a: n for a, n in (hooks + phones).items() if n > 2}
    print(f"\nkilled after {at_kill[0]} webhook and {at_kill[1]} ntfy deliveries of 300; repeated notifications: {repeated or 'none'}")
    assert set(hooks) == set(ids) and set(phones) == set(ids)
    # At most the one notification in flight per contact at the kill can repeat, with its delivery id.
    assert sum(hooks.values()) - 300 <= 1 and sum(phones.values()) - 300 <= 1
    delivery_ids = Counter(e["delivery_id"] for e in sink.entries("webhook"))
    assert len(delivery_ids) == 300 and all(delivery_ids[f"{a}|hq/hook"] == hooks[a] for a in ids)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _in_process(redis_url: str, routing_raw: dict, clock: FakeClock, broker: str = "127.0.0.1:1") -> tuple[Notifier, Dispatcher, Outbox]:
    routing = parse_routing(routing_raw)
    outbox = Outbox(redis.Redis.from_url(redis_url), keep_ms=86_400_000)
    contacts = {cid: Contact(cid, rec, build_channel(cfg), cfg.type, routing.recipients[rec].timezone) for cid, (rec, cfg) in routing.channels().items()}
    dispatcher = Dispatcher(outbox, routing, contacts, broker, clock, poll_s=0.02).start()
    return Notifier(outbox, routing, {"store-001": "uk-south"}, clock, on_enqueued=dispatcher.wake.set), dispatcher, outbox


def test_escalation_fires_at_the_configured_time_reaches_whoever_took_over_and_stops_when_acknowledged(broker, redis_url, sinks, monkeypatch):
    monkeypatch.setenv("SW_ROUTING_TEST_SECRET", SECRET)
    sink = sinks()
    people = {name: {"contacts": [_webhook(sink)]} for name in ("alice", "bob", "manager")}
    routing = {"recipients": people,
               "schedules": {"store": {"timezone": "America/New_York", "shifts": [{"start": "07:00", "end": "19:00", "on_call": ["alice"]},
                                                                                 {"start": "19:00", "end": "07:00", "on_call": ["bob"]}]}},
               "routes": [{"name": "store", "levels": [{"notify": ["schedule:store"]}, {"after_min": 10, "notify": ["schedule:store", "manager"]}]}]}
    clock = FakeClock(datetime.fromisoformat("2026-12-01T18:55:00-05:00"))  # alice's shift; bob takes over at 19:00
    notifier, dispatcher, outbox = _in_process(redis_url, routing, clock, broker)
    loop = ConsumeLoop("notifier", broker, "test-notifier", [topics.ALERTS, topics.FEEDBACK], notifier.handle, dead_letters=[topics.ALERTS], batch_size=16)
    consumer = threading.Thread(target=loop.run, daemon=True)
    consumer.start()
    try:
        _produce(broker, [_alert("al-open").SerializeToString(), _alert("al-acked").SerializeToString()])
        wait_for(lambda: sorted(sink.webhook_alerts("alice")) == ["al-acked", "al-open"], 30, "level 1 to alice")
        clock.advance(10 * 60 - 1)
        assert notifier.escalate_due() == 0, "an escalation fired before its 10 minutes"
        _produce(broker, [Feedback(alert_id="al-acked", store_id="store-001", verdict=Verdict.VERDICT_ACKNOWLEDGED, user="alice",
                                   time_ms=int(clock() * 1000), rule="refund_without_customer").SerializeToString()], topics.FEEDBACK)
        wait_for(lambda: outbox.acknowledged("al-acked"), 30, "the acknowledgement read from sw.feedback.v1")
        clock.advance(1)
        assert notifier.escalate_due() == 1
        wait_for(lambda: sink.webhook_alerts("bob") == ["al-open"] and sink.webhook_alerts("manager") == ["al-open"], 30, "level 2")
        clock.advance(3600)
        assert notifier.escalate_due() == 0
        time.sleep(1)
        assert sorted(sink.webhook_alerts()) == ["al-acked", "al-open", "al-open", "al-open"]
        reasons = {r["recipient"]: r["reason"] for r in read_deliveries(outbox.redis, "al-open")}
        assert reasons == {"alice": "route store, level 1", "bob": "route store, level 2 (after 10 min unacknowledged)",
                           "manager": "route store, level 2 (after 10 min unacknowledged)"}
    finally:
        loop.stop_event.set()
        consumer.join(15)
        dispatcher.close()


def test_one_incident_pages_once_a_later_reason_raises_it_and_a_verdict_on_any_reason_acknowledges_it(broker, redis_url, sinks, monkeypatch):
    monkeypatch.setenv("SW_ROUTING_TEST_SECRET", SECRET)
    sink = sinks()
    routing = {"recipients": {"officer": {"contacts": [_webhook(sink)]}, "manager": {"contacts": [_webhook(sink)]}},
               "routes": [{"name": "store", "levels": [{"notify": ["officer"]}, {"after_min": 10, "notify": ["manager"]}]},
                          {"name": "urgent", "match": {"min_severity": "critical"}, "levels": [{"notify": ["manager"]}]}]}
    clock = FakeClock(datetime.fromisoformat("2026-12-01T23:00:00+00:00"))
    notifier, dispatcher, outbox = _in_process(redis_url, routing, clock, broker)
    loop = ConsumeLoop("notifier", broker, "test-notifier-incidents", [topics.ALERTS, topics.FEEDBACK], notifier.handle, dead_letters=[topics.ALERTS],
                       batch_size=16)
    consumer = threading.Thread(target=loop.run, daemon=True)
    consumer.start()
    t = int(clock() * 1000)
    # One refund, neither customer nor goods at the counter: two rules, one situation.
    no_customer = Alert(alert_id="al-inc-1", rule="refund_without_customer", severity=Severity.SEVERITY_HIGH, store_id="store-001", register_id="reg-7",
                        camera_id="cam-7", explanation="nobody at the counter", event_time_ms=t)
    no_goods = Alert(alert_id="al-inc-2", rule="refund_without_merchandise", severity=Severity.SEVERITY_MEDIUM, store_id="store-001", register_id="reg-7",
                     camera_id="cam-7", explanation="no goods on the counter", event_time_ms=t + 500)
    try:
        _produce(broker, [no_customer.SerializeToString()])
        wait_for(lambda: sink.webhook_alerts("officer") == ["al-inc-1"], 30, "the incident's page")
        _produce(broker, [no_goods.SerializeToString(), no_customer.SerializeToString()])  # a later reason, and a replay
        # Two rules agree: the incident is critical now, which the urgent route pages; the officer is not paged again.
        wait_for(lambda: sink.webhook_alerts("manager") == ["al-inc-1"], 30, "the urgent route's page at the raised severity")
        [urgent] = [e["body"] for e in sink.entries("webhook") if e["body"]["recipient"] == "manager"]
        assert urgent["alert"]["severity"] == "SEVERITY_CRITICAL" and "no goods on the counter" in urgent["alert"]["explanation"]
        assert urgent["alert"]["facts"]["reasons"] == "refund_without_customer,refund_without_merchandise"
        assert urgent["url"].endswith("/incidents/" + urgent["alert"]["facts"]["incident_id"])
        time.sleep(1)
        assert sink.webhook_alerts("officer") == ["al-inc-1"]
        # A verdict on the later reason acknowledges the incident: its escalation to the manager is dropped.
        _produce(broker, [Feedback(alert_id="al-inc-2", store_id="store-001", verdict=Verdict.VERDICT_ACKNOWLEDGED, user="officer",
                                   time_ms=t, rule="refund_without_merchandise").SerializeToString()], topics.FEEDBACK)
        wait_for(lambda: outbox.acknowledged("al-inc-1"), 30, "the incident acknowledged through its other reason")
        clock.advance(11 * 60)
        assert notifier.escalate_due() == 0
    finally:
        loop.stop_event.set()
        consumer.join(15)
        dispatcher.close()


def test_a_burst_becomes_a_digest_and_quiet_hours_hold_all_but_critical(redis_url, sinks, monkeypatch):
    monkeypatch.setenv("SW_ROUTING_TEST_SECRET", SECRET)
    sink = sinks()
    routing = {"recipients": {"busy": {"contacts": [_webhook(sink)]},
                              "sleeper": {"contacts": [_webhook(sink)], "timezone": "Europe/London", "quiet_hours": {"start": "22:00", "end": "06:30"}}},
               "routes": [{"name": "busy", "match": {"stores": ["store-001"]}, "levels": [{"notify": ["busy"]}]},
                          {"name": "night", "match": {"stores": ["store-002"]}, "levels": [{"notify": ["sleeper"]}]}],
               "limits": {"max_per_window": 3, "window_s": 300, "digest_after_s": 60}}
    clock = FakeClock(datetime.fromisoformat("2026-12-01T23:00:00+00:00"))
    notifier, dispatcher, outbox = _in_process(redis_url, routing, clock)
    try:
        burst = [_alert(f"al-{i}") for i in range(8)]
        for alert in burst:
            notifier.route(alert, alert.SerializeToString())
        wait_for(lambda: len(sink.webhook_alerts("busy")) == 3, 20, "the first three of the burst")
        # The storm goes on: later alerts join the open digest and do not delay it; a critical one is not held.
        clock.advance(30)
        for alert in (_alert("al-8"), _alert("al-9"), _alert("al-critical", Severity.SEVERITY_CRITICAL)):
            notifier.route(alert, alert.SerializeToString())
        wait_for(lambda: "al-critical" in sink.webhook_alerts("busy"), 20, "the critical alert at once")
        clock.advance(29)
        dispatcher.wake.set()
        time.sleep(1)
        assert not [e for e in sink.entries("webhook") if e["body"]["kind"] == "digest"]
        clock.advance(2)
        dispatcher.wake.set()
        wait_for(lambda: [e for e in sink.entries("webhook") if e["body"]["kind"] == "digest"], 20, "the digest")
        [digest] = [e["body"] for e in sink.entries("webhook") if e["body"]["kind"] == "digest"]
        assert sorted(a["alert_id"] for a in digest["alerts"]) == [f"al-{i}" for i in range(3, 10)]
        assert digest["recipient"] == "busy" and digest["reason"] == "burst over the rate limit"
        [held] = read_deliveries(outbox.redis, "al-5")
        assert held["kind"] == "digest" and held["status"] == "delivered" and held["alerts_in_digest"] == 7
        # Quiet hours (22:00-06:30 London): a high alert waits for the morning digest, a critical one goes now.
        night = [_alert("al-night-high", store="store-002"), _alert("al-night-critical", Severity.SEVERITY_CRITICAL, store="store-002")]
        for alert in night:
            notifier.route(alert, alert.SerializeToString())
        wait_for(lambda: sink.webhook_alerts("sleeper") == ["al-night-critical"], 20, "the critical alert at once")
        clock.now = datetime.fromisoformat("2026-12-02T06:29:00+00:00").timestamp()
        dispatcher.wake.set()
        time.sleep(1)
        assert len([e for e in sink.entries("webhook") if e["body"]["recipient"] == "sleeper"]) == 1
        clock.advance(61)
        dispatcher.wake.set()
        wait_for(lambda: any(e["body"]["kind"] == "digest" and e["body"]["recipient"] == "sleeper" for e in sink.entries("webhook")), 20, "the morning digest")
        morning = next(e["body"] for e in sink.entries("webhook") if e["body"]["kind"] == "digest" and e["body"]["recipient"] == "sleeper")
        assert [a["alert_id"] for a in morning["alerts"]] == ["al-night-high"] and morning["reason"] == "quiet hours"
    finally:
        dispatcher.close()


def test_a_notification_failing_past_give_up_goes_to_the_dlq_counted_from_its_first_try(broker, redis_url, monkeypatch):
    """A digest held through the night is not "failing" for those hours: its give-up clock starts at its first try."""
    dead_url = f"http://127.0.0.1:{free_port()}/alerts"  # nothing listens there
    routing = {"recipients": {"down": {"contacts": [{"type": "webhook", "name": "hook", "url": dead_url, "timeout_s": 1}],
                                       "timezone": "Europe/London", "quiet_hours": {"start": "22:00", "end": "06:30"}}},
               "routes": [{"name": "all", "levels": [{"notify": ["down"]}]}],
               "delivery": {"first_backoff_s": 1, "max_backoff_s": 1, "give_up_after_s": 60}}
    clock = FakeClock(datetime.fromisoformat("2026-12-01T23:00:00+00:00"))
    notifier, dispatcher, outbox = _in_process(redis_url, routing, clock, broker)

    def status(alert_id: str) -> str:
        records = read_deliveries(outbox.redis, alert_id)
        return records[0]["status"] if records else ""

    def step(seconds: float, until: str, alert_id: str) -> None:
        """Move the clock; the next attempt is made and ends as `until`."""
        tried = len(read_deliveries(outbox.redis, alert_id)[0]["attempt_log"])
        clock.advance(seconds)
        dispatcher.wake.set()
        wait_for(lambda: len(read_deliveries(outbox.redis, alert_id)[0]["attempt_log"]) > tried and status(alert_id) == until, 20, f"{alert_id} {until}")

    try:
        for alert in (_alert("al-now", Severity.SEVERITY_CRITICAL), _alert("al-held")):
            notifier.route(alert, alert.SerializeToString())
        wait_for(lambda: status("al-now") == "retrying", 20, "the first failed attempt")
        assert status("al-held") == "held"
        step(30, "retrying", "al-now")
        step(31, "failed", "al-now")
        [dead] = consume_all(broker, topics.dlq(topics.ALERTS), expect=1, timeout=20)
        headers = dict(dead.headers())
        assert headers["sw-recipient"] == b"down" and headers["sw-channel"] == b"down/hook"
        assert b"still failing after 60s" in headers["sw-error"] and Alert.FromString(dead.value()).alert_id == "al-now"
        # The morning digest: its first try fails, and it is retried rather than dead-lettered at once.
        clock.now = datetime.fromisoformat("2026-12-02T06:30:01+00:00").timestamp()
        dispatcher.wake.set()
        wait_for(lambda: status("al-held") == "retrying", 20, "the digest's first failed attempt")
        step(61, "failed", "al-held")
        assert [Alert.FromString(m.value()).alert_id for m in consume_all(broker, topics.dlq(topics.ALERTS), expect=2, timeout=20)] == ["al-now", "al-held"]
        assert read_deliveries(outbox.redis, "al-held")[0]["attempts"] >= 2
    finally:
        dispatcher.close()


def test_a_worker_whose_lease_ran_out_cannot_undo_what_the_next_claim_recorded(redis_url):
    outbox = Outbox(redis.Redis.from_url(redis_url), keep_ms=3_600_000)
    assert outbox.enqueue("al-lease", "hq", [("hq/hook", "webhook")], 1_000, 0, 5, 300_000, 60_000, "route all, level 1") == "now"
    slow = outbox.claim("hq/hook", 1_000, 10_000)
    assert isinstance(slow, Job)
    # Its lease runs out mid-send; another worker (a second replica) claims the job, sends it, records it.
    fast = outbox.claim("hq/hook", 11_001, 10_000)
    assert isinstance(fast, Job) and fast.lease != slow.lease
    outbox.complete(fast, 11_500, {"n": 2, "outcome": "delivered"}, "HTTP 200")
    # The slow worker's send then times out: its retry must change nothing.
    outbox.retry(slow, 12_000, {"n": 1, "outcome": "failed", "error": "timeout"}, "timeout")
    outbox.fail(slow, 12_000, {"n": 1, "outcome": "failed"}, "timeout")
    [record] = read_deliveries(outbox.redis, "al-lease")
    assert record["status"] == "delivered" and [a["outcome"] for a in record["attempt_log"]] == ["delivered"]
    assert outbox.claim("hq/hook", 1_000_000, 10_000) is None
