"""The correlator's Faust agents, driven in process with Faust's test_context() (no broker)."""

import asyncio
import time
from unittest.mock import patch

import pytest

from services.correlator import agents
from services.correlator.app import app
from services.correlator.streams import register_state
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.contracts.register_presence_pb2 import RegisterPresence

pytestmark = pytest.mark.timeout(60)
T0 = (int(time.time()) - 3600) * 1000  # event times must not lie in the future
KEY = b"store-001:reg-1"


class Recorder:
    """Stands in for a topic's send(): records what would have been produced."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, **kwargs):
        self.sent.append(kwargs)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
def faust_app():
    app.finalize()
    app.flow_control.resume()
    register_state.data.clear()
    alerts, presence, dlq = Recorder(), Recorder(), Recorder()
    agents._last_forwarded.clear()
    with patch.object(agents.alerts_topic, "send", alerts.send), \
            patch.object(agents.register_presence_topic, "send", presence.send), \
            patch.object(agents, "dlq_topic", lambda source: dlq), \
            patch.object(register_state, "_send_changelog", lambda *a, **k: None):
        yield {"alerts": alerts, "presence": presence, "dlq": dlq}


def _channel(name: str):
    return app.topic(name, key_serializer="raw", value_serializer="raw")


async def _put_all(agent_def, topic: str, items):
    async with agent_def.test_context() as agent:
        # The agent reads a topic pair; tell the test wrapper which topic these events come from.
        agent.original_channel = _channel(topic)
        for key, value in items:
            await agent.put(value, key=key)


def _frame(ms: int, present: bool) -> tuple[bytes, bytes]:
    analysis = FrameAnalysis(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=ms)
    analysis.zones.add(zone_id="counter-1-customer", kind="counter_customer", person_present=present, presence_score=0.3 if present else 0)
    analysis.zones.add(zone_id="counter-1-staff", kind="staff_only", person_present=True, presence_score=0.3)
    return b"cam-counter-1", analysis.SerializeToString()


def _presence(ms: int, present: bool) -> tuple[bytes, bytes]:
    sample = RegisterPresence(store_id="store-001", register_id="reg-1", camera_id="cam-counter-1", capture_time_ms=ms, customer_present=present)
    return KEY, sample.SerializeToString()


def _refund(event_id: str, ms: int) -> tuple[bytes, bytes]:
    event = PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_REFUND, store_id="store-001", register_id="reg-1",
                     event_time_ms=ms, total_minor=5000, currency="GBP")
    return KEY, event.SerializeToString()


async def test_detections_become_register_presence_changes_and_heartbeats(faust_app):
    # 10 fps for 3 s; the customer arrives at 0.5 s. The staff zone does not count as a customer.
    await _put_all(agents.detections_to_registers, topics.DETECTIONS, [_frame(T0 + i * 100, i >= 5) for i in range(30)])
    sent = [(s["key"], RegisterPresence.FromString(s["value"])) for s in faust_app["presence"].sent]
    assert all(key == KEY for key, _ in sent)
    assert [(p.capture_time_ms - T0, p.customer_present) for _, p in sent] == [(0, False), (500, True), (1500, True), (2500, True)]


async def test_refund_waits_for_video_then_alerts_once_when_nobody_was_there(faust_app):
    await _put_all(agents.correlate_registers, topics.POS, [_refund("r-empty", T0 + 20_000), _refund("r-empty", T0 + 20_000)])
    assert faust_app["alerts"].sent == []  # no video yet
    await _put_all(agents.correlate_registers, topics.REGISTER_PRESENCE, [_presence(T0 + s * 1000, False) for s in range(1, 30)])
    [sent] = faust_app["alerts"].sent
    alert = Alert.FromString(sent["value"])
    assert sent["key"] == b"store-001" and alert.rule == "refund_without_customer" and alert.evidence[0].ref == "r-empty"


def _decided(outcome: str) -> float:
    return agents.REFUNDS_DECIDED.labels(outcome)._value.get()


async def test_refund_with_customer_in_window_raises_nothing(faust_app):
    before = _decided("customer_present")
    await _put_all(agents.correlate_registers, topics.REGISTER_PRESENCE, [_presence(T0 + s * 1000, 17 <= s <= 18) for s in range(1, 30)])
    await _put_all(agents.correlate_registers, topics.POS, [_refund("r-ok", T0 + 20_000)])
    assert faust_app["alerts"].sent == []
    assert register_state["store-001:reg-1"]["pending"] == []
    assert _decided("customer_present") == before + 1


async def test_failed_alert_send_keeps_the_refund_pending_until_it_succeeds(faust_app):
    async def broken_send(**kwargs):
        raise ConnectionError("broker unreachable")

    await _put_all(agents.correlate_registers, topics.POS, [_refund("r-retry", T0 + 20_000)])
    with patch.object(agents.alerts_topic, "send", broken_send):
        await _put_all(agents.correlate_registers, topics.REGISTER_PRESENCE, [_presence(T0 + s * 1000, False) for s in range(1, 30)])
    assert [p["event_id"] for p in register_state["store-001:reg-1"]["pending"]] == ["r-retry"]
    await _put_all(agents.correlate_registers, topics.REGISTER_PRESENCE, [_presence(T0 + 30_000, False)])
    [sent] = faust_app["alerts"].sent
    assert Alert.FromString(sent["value"]).evidence[0].ref == "r-retry"
    assert register_state["store-001:reg-1"]["pending"] == []


async def test_tick_lets_a_silent_cameras_refund_time_out_as_unverifiable(faust_app, monkeypatch):
    before = _decided("no_camera_coverage")
    await _put_all(agents.correlate_registers, topics.POS, [_refund("r-silent", T0 + 20_000)])
    monkeypatch.setattr(agents, "MAX_WAIT_MS", -1)  # every pending refund has waited too long
    await agents.send_ticks()
    [tick] = faust_app["presence"].sent
    assert RegisterPresence.FromString(tick["value"]).tick and tick["key"] == KEY
    await _put_all(agents.correlate_registers, topics.REGISTER_PRESENCE, [(tick["key"], tick["value"])])
    assert register_state["store-001:reg-1"]["pending"] == []
    assert faust_app["alerts"].sent == [] and _decided("no_camera_coverage") == before + 1


async def test_pos_event_with_a_foreign_key_or_future_time_is_dead_lettered(faust_app):
    _, value = _refund("r-key", T0)
    _, future = _refund("r-future", int(time.time() * 1000) + 3600_000)
    await _put_all(agents.correlate_registers, topics.POS, [(b"store-001", value), (KEY, future)])
    errors = [dict(d["headers"])["sw-error"] for d in faust_app["dlq"].sent]
    assert b"is not b'store-001:reg-1'" in errors[0] and b"in the future" in errors[1]
    assert register_state.get("store-001:reg-1") is None


async def test_poison_pos_message_is_dead_lettered_and_the_next_one_processed(faust_app):
    await _put_all(agents.correlate_registers, topics.POS, [(KEY, b"\xff\xfe garbage"), _refund("r-after", T0 + 5_000)])
    [dead] = faust_app["dlq"].sent
    assert dead["value"] == b"\xff\xfe garbage" and b"PosEvent" in dict(dead["headers"])["sw-error"]
    assert [p["event_id"] for p in register_state["store-001:reg-1"]["pending"]] == ["r-after"]
