"""The correlator's Faust agents, driven in process with Faust's test_context() (no broker)."""

import asyncio
import time
from pathlib import Path
from unittest.mock import patch

import pytest
import yaml

from services.correlator import agents
from services.correlator.agents import Correlator
from services.correlator.settings import CorrelatorSettings
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType

pytestmark = pytest.mark.timeout(60)
T0 = (int(time.time()) - 3600) * 1000  # event times must not lie in the future
KEY = b"store-001:reg-1"
SAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "sample-store.yaml"


class Recorder:
    """Stands in for a topic's send(): records what would have been produced."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, **kwargs):
        self.sent.append(kwargs)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _config(tmp_path: Path, edit=None) -> Path:
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["stores"][0]["cameras"][0]["source"] = "file:unused.mp4"
    raw["employees"] = [{"id": "emp-7", "tokens": ["tok-emp-7"]}]
    if edit:
        edit(raw)
    path = tmp_path / "stores.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _make(tmp_path: Path, config: Path) -> tuple[Correlator, dict]:
    settings = CorrelatorSettings(store_config=config, table_store="memory", correlator_data_dir=tmp_path / "data", config_poll_s=0)
    correlator = Correlator(settings)
    correlator.app.finalize()
    correlator.app.flow_control.resume()
    return correlator, {"alerts": Recorder(), "camera": Recorder(), "dlq": Recorder(), "tokens": Recorder(), "transactions": Recorder(),
                        "steps": Recorder()}


@pytest.fixture
def worker(tmp_path):
    correlator, sent = _make(tmp_path, _config(tmp_path))
    streams = correlator.streams
    tables = [streams.register_state, streams.till_state, streams.camera_state, streams.token_state, streams.transaction_state, streams.feedback_state,
              streams.store_journeys]
    with patch.object(streams.alerts, "send", sent["alerts"].send), \
            patch.object(streams.camera_events, "send", sent["camera"].send), \
            patch.object(streams.returns_by_token, "send", sent["tokens"].send), \
            patch.object(streams.transactions, "send", sent["transactions"].send), \
            patch.object(streams.store_steps, "send", sent["steps"].send), \
            patch.object(streams, "dlq", lambda source: sent["dlq"]):
        for table in tables:
            table._send_changelog = lambda *a, **k: None
        correlator.sent = sent  # type: ignore[attr-defined]
        yield correlator


def _channel(correlator: Correlator, name: str):
    return correlator.app.topic(name, key_serializer="raw", value_serializer="raw")


async def _put_all(correlator: Correlator, agent_name: str, topic: str, items):
    agent_def = correlator.app.agents[f"sw-correlator.{agent_name}"]
    async with agent_def.test_context() as agent:
        # Some agents read a topic pair; tell the test wrapper which topic these events come from.
        agent.original_channel = _channel(correlator, topic)
        for item in items:
            key, value, headers = item if len(item) == 3 else (*item, None)
            await agent.put(value, key=key, headers=headers)


async def _route_to_cameras(worker) -> None:
    """What the registers agent sent to the camera-events topic, delivered to the cameras agent."""
    routed = [(s["key"], s["value"], s["headers"]) for s in worker.sent["camera"].sent]
    worker.sent["camera"].sent.clear()
    await _put_all(worker, "cameras", topics.CAMERA_EVENTS, routed)


def _frame(ms: int, present: bool, seq: int = 0) -> tuple[bytes, bytes]:
    analysis = FrameAnalysis(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=ms, frame_sequence=seq)
    analysis.zones.add(zone_id="counter-1-customer", kind="counter_customer", person_present=present, presence_score=0.3 if present else 0)
    analysis.zones.add(zone_id="counter-1-staff", kind="staff_only", person_present=True, presence_score=0.3)
    return b"cam-counter-1", analysis.SerializeToString()


def _frames(seconds: range, present) -> list[tuple[bytes, bytes]]:
    """Frames at 2 fps over these seconds after T0; `present(s)` says whether a customer is there."""
    return [_frame(T0 + half * 500, present(half / 2), half) for half in range(seconds.start * 2, seconds.stop * 2)]


def _pos(event_id: str, ms: int, kind=PosEventType.POS_EVENT_TYPE_REFUND, **fields) -> tuple[bytes, bytes]:
    event = PosEvent(event_id=event_id, type=kind, store_id="store-001", register_id="reg-1", event_time_ms=ms, total_minor=5000, currency="GBP", **fields)
    return KEY, event.SerializeToString()


def _alerts(worker) -> list[Alert]:
    return [Alert.FromString(s["value"]) for s in worker.sent["alerts"].sent]


async def test_frames_update_the_registers_presence_and_watermark_in_process(worker):
    # 10 fps for 3 s; the customer arrives at 0.5 s. The staff zone does not count as a customer.
    await _put_all(worker, "cameras", topics.DETECTIONS, [_frame(T0 + i * 100, i >= 5, i) for i in range(30)])
    state = worker.registers.get("store-001:reg-1")
    assert [(c.time_ms - T0, c.customer, c.merchandise) for c in state.changes] == [(0, False, -1), (500, True, -1)]
    assert state.watermark_ms == T0 + 2900 and state.watermark_seq == 29 and len(state.covered) == 1
    assert worker.sent["camera"].sent == [] and worker.sent["alerts"].sent == []
    # Nothing is written per frame: the cached state goes to the table once, when offsets are committed.
    assert worker.streams.register_state.get("store-001:reg-1") is None
    assert worker.registers.flush() == 1 and worker.registers.flush() == 0
    assert worker.streams.register_state["store-001:reg-1"].watermark_ms == T0 + 2900


async def test_refund_waits_for_video_then_alerts_once_when_nobody_was_there(worker):
    await _put_all(worker, "registers", topics.POS, [_pos("r-empty", T0 + 20_000), _pos("r-empty", T0 + 20_000)])
    await _route_to_cameras(worker)
    assert worker.sent["alerts"].sent == []  # no video yet
    await _put_all(worker, "cameras", topics.DETECTIONS, _frames(range(1, 30), lambda s: False))
    [sent] = worker.sent["alerts"].sent
    alert = Alert.FromString(sent["value"])
    assert sent["key"] == b"store-001" and alert.rule == "refund_without_customer" and alert.evidence[0].ref == "r-empty"
    assert alert.facts["amount"] == "50.00 GBP" and {e.kind for e in alert.evidence} >= {"pos_event", "camera_window", "frames"}
    # The same refund sent again after it was decided raises nothing more.
    await _put_all(worker, "registers", topics.POS, [_pos("r-empty", T0 + 20_000)])
    await _route_to_cameras(worker)
    await _put_all(worker, "cameras", topics.DETECTIONS, _frames(range(30, 31), lambda s: False))
    assert len(worker.sent["alerts"].sent) == 1


def _decided(outcome: str) -> float:
    return agents.REFUNDS_DECIDED.labels(outcome)._value.get()


async def test_refund_with_customer_in_window_raises_nothing(worker):
    before = _decided("customer_present")
    await _put_all(worker, "cameras", topics.DETECTIONS, _frames(range(1, 30), lambda s: 17 <= s <= 18))
    await _put_all(worker, "registers", topics.POS, [_pos("r-ok", T0 + 20_000)])
    await _route_to_cameras(worker)  # a late refund: decided at once from the kept history
    assert worker.sent["alerts"].sent == []
    assert worker.registers.get("store-001:reg-1").pending == []
    assert _decided("customer_present") == before + 1


async def test_failed_alert_send_keeps_the_refund_pending_until_it_succeeds(worker):
    async def broken_send(**kwargs):
        raise ConnectionError("broker unreachable")

    await _put_all(worker, "registers", topics.POS, [_pos("r-retry", T0 + 20_000)])
    await _route_to_cameras(worker)
    with patch.object(worker.streams.alerts, "send", broken_send):
        await _put_all(worker, "cameras", topics.DETECTIONS, _frames(range(1, 30), lambda s: False))
    assert [p.event_id for p in worker.registers.get("store-001:reg-1").pending] == ["r-retry"]
    await _put_all(worker, "cameras", topics.DETECTIONS, _frames(range(30, 31), lambda s: False))
    [sent] = worker.sent["alerts"].sent
    assert Alert.FromString(sent["value"]).evidence[0].ref == "r-retry"
    assert worker.registers.get("store-001:reg-1").pending == []


async def test_tick_lets_a_silent_cameras_refund_time_out_as_unverifiable(worker):
    before = _decided("no_camera_coverage")
    await _put_all(worker, "cameras", topics.DETECTIONS, _frames(range(0, 5), lambda s: False))
    await _put_all(worker, "registers", topics.POS, [_pos("r-silent", T0 + 20_000)])
    await _route_to_cameras(worker)
    state = worker.registers.get("store-001:reg-1")
    await worker.send_ticks()
    assert worker.sent["camera"].sent == []  # the camera spoke recently: no tick yet
    # The refund and the camera's last frame are older than timing.max_wait_s.
    state.pending[0].received_ms = state.sample_received_ms = 0
    await worker.send_ticks()
    [tick] = worker.sent["camera"].sent
    assert tick["key"] == b"cam-counter-1" and tick["value"] == KEY and tick["headers"] == {"sw-kind": b"tick"}
    await _route_to_cameras(worker)
    assert worker.registers.get("store-001:reg-1").pending == []
    assert worker.sent["alerts"].sent == [] and _decided("no_camera_coverage") == before + 1


async def test_pos_event_with_a_foreign_key_or_future_time_is_dead_lettered(worker):
    _, value = _pos("r-key", T0)
    _, future = _pos("r-future", int(time.time() * 1000) + 3600_000)
    await _put_all(worker, "registers", topics.POS, [(b"store-001", value), (KEY, future)])
    errors = [dict(d["headers"])["sw-error"] for d in worker.sent["dlq"].sent]
    assert b"is not b'store-001:reg-1'" in errors[0] and b"in the future" in errors[1]
    assert worker.sent["camera"].sent == []


async def test_poison_messages_are_dead_lettered_and_the_next_one_processed(worker):
    await _put_all(worker, "registers", topics.POS, [(KEY, b"\xff\xfe garbage"), _pos("r-after", T0 + 5_000)])
    [dead] = worker.sent["dlq"].sent
    assert dead["value"] == b"\xff\xfe garbage" and b"PosEvent" in dict(dead["headers"])["sw-error"]
    await _route_to_cameras(worker)
    assert [p.event_id for p in worker.registers.get("store-001:reg-1").pending] == ["r-after"]
    await _put_all(worker, "cameras", topics.DETECTIONS, [(b"cam-counter-1", b"\x00\x01 not a frame"), _frame(T0, True)])
    await _put_all(worker, "feedback", topics.FEEDBACK, [(b"store-001", Feedback(alert_id="al-1", store_id="store-001", verdict=Verdict.VERDICT_CONFIRMED,
                                                                              rule="no_such_rule").SerializeToString())])
    assert len(worker.sent["dlq"].sent) == 3 and worker.registers.get("store-001:reg-1").watermark_ms == T0
    assert b"unknown rule 'no_such_rule'" in dict(worker.sent["dlq"].sent[2]["headers"])["sw-error"]


async def test_refunds_go_on_by_token_and_transaction_and_sales_by_transaction(worker):
    await _put_all(worker, "registers", topics.POS, [
        _pos("s-1", T0, PosEventType.POS_EVENT_TYPE_SALE, transaction_id="tx-1", employee_id="emp-1"),
        _pos("r-1", T0 + 9_000, card_token="card-a", customer_token="cust-b", original_transaction_id="tx-1", employee_id="emp-1"),
    ])
    assert [s["key"] for s in worker.sent["tokens"].sent] == [b"card-a", b"cust-b"]
    assert [s["key"] for s in worker.sent["camera"].sent] == [b"cam-counter-1"]
    assert [s["key"] for s in worker.sent["transactions"].sent] == [b"store-001:tx-1", b"store-001:tx-1"]
    # The transaction agent: the same employee rang the sale and the refund.
    await _put_all(worker, "transactions", topics.TRANSACTIONS, [(s["key"], s["value"]) for s in worker.sent["transactions"].sent])
    [alert] = _alerts(worker)
    assert alert.rule == "employee_own_sale" and alert.facts["employee"] == "emp-1"


async def test_refund_to_the_employees_own_card_and_post_void_alert_on_arrival(worker):
    await _put_all(worker, "registers", topics.POS, [
        _pos("r-own", T0, employee_id="emp-7", card_token="tok-emp-7"),
        _pos("v-1", T0 + 1000, PosEventType.POS_EVENT_TYPE_VOID, after_tender=True, transaction_id="tx-9"),
        _pos("v-2", T0 + 2000, PosEventType.POS_EVENT_TYPE_VOID),  # an in-transaction void
    ])
    assert [a.rule for a in _alerts(worker)] == ["employee_own_card", "post_void"]


async def test_return_abuse_across_stores_from_the_token_table(worker):
    def returned(i: int) -> tuple[bytes, bytes]:
        event = PosEvent(event_id=f"ret-{i}", type=PosEventType.POS_EVENT_TYPE_RETURN, store_id=f"store-{i:03d}", register_id="reg-1",
                         event_time_ms=T0 + i * 3600_000, total_minor=2000, currency="GBP", card_token="card-x")
        return b"card-x", event.SerializeToString()

    await _put_all(worker, "tokens", topics.RETURNS_BY_TOKEN, [returned(i) for i in range(1, 7)])
    # Three stores within two days (the fast window) raise it at the third; the rest of the run adds nothing.
    [alert] = _alerts(worker)
    assert alert.rule == "return_abuse" and alert.facts["window"] == "fast" and alert.facts["returns"] == "3" and alert.store_id == "store-003"


async def test_feedback_counts_once_per_alert_and_moves_the_stores_factor(worker):
    def verdict(alert_id: str, kind) -> tuple[bytes, bytes]:
        return b"store-001", Feedback(alert_id=alert_id, store_id="store-001", verdict=kind, rule="refund_without_customer").SerializeToString()

    await _put_all(worker, "feedback", topics.FEEDBACK, [
        verdict("al-1", Verdict.VERDICT_CONFIRMED), verdict("al-1", Verdict.VERDICT_CONFIRMED),
        verdict("al-2", Verdict.VERDICT_FALSE_ALARM), verdict("al-3", Verdict.VERDICT_FALSE_ALARM), verdict("al-4", Verdict.VERDICT_ACKNOWLEDGED),
    ])
    report = worker.precision_report()["stores"]["store-001"]["refund_without_customer"]
    assert (report["confirmed"], report["false_alarm"], report["judged"]) == (1, 2, 3)
    assert report["precision"] == pytest.approx(1 / 3) and report["threshold_factor"] == pytest.approx(1.15)


async def test_an_edited_store_config_is_taken_live(tmp_path):
    path = _config(tmp_path)
    correlator, _ = _make(tmp_path, path)
    assert "store-001:reg-2" not in correlator.index.registers

    def add_register(raw):
        raw["stores"][0]["registers"].append({"id": "reg-2", "camera": "cam-counter-1", "customer_zones": ["counter-1-customer"]})
        raw["stores"][0]["rules"] = {"post_void": {"min_total": 10}}

    _config(tmp_path, add_register)
    correlator.refresh_config(force=True)
    assert "store-001:reg-2" in correlator.index.registers
    assert correlator.index.registers["store-001:reg-2"].rules.post_void.min_total == 10
    path.write_text("stores: [")  # a broken edit keeps the running config
    correlator.refresh_config(force=True)
    assert "store-001:reg-2" in correlator.index.registers and "not valid YAML" in correlator.watcher.error


async def test_a_broker_failure_is_not_blamed_on_the_pos_event(worker):
    async def broken_send(**kwargs):
        raise ConnectionError("broker unreachable")

    event = _pos("v-9", T0, PosEventType.POS_EVENT_TYPE_VOID, after_tender=True, transaction_id="tx-9")
    with patch.object(worker.streams.alerts, "send", broken_send), pytest.raises(ConnectionError):
        await _put_all(worker, "registers", topics.POS, [event])
    assert worker.sent["dlq"].sent == []  # stopped uncommitted, to be processed again; not dead-lettered


def _with_cabinet_and_door(raw: dict) -> None:
    raw["stores"][0].pop("opening_hours")  # open at any hour the test runs
    raw["stores"][0].setdefault("rules", {})["checkout_bypass"] = {"needs_reach": False}  # no pose stage in these frames
    camera = raw["stores"][0]["cameras"][0]
    camera["zones"].append({"id": "cabinet", "kind": "high_value", "polygon": [[0.0, 0.0], [0.1, 0.0], [0.1, 1.0], [0.0, 1.0]]})
    camera["lines"] = [{"id": "front-door", "kind": "door", "points": [[0.0, 0.9], [1.0, 0.9]], "inside": [0.5, 0.5]}]


async def test_a_cameras_steps_reach_its_stores_journeys_and_raise_checkout_bypass(tmp_path):
    correlator, sent = _make(tmp_path, _config(tmp_path, _with_cabinet_and_door))
    streams = correlator.streams
    with patch.object(streams.alerts, "send", sent["alerts"].send), patch.object(streams.store_steps, "send", sent["steps"].send), \
            patch.object(streams.camera_events, "send", sent["camera"].send):
        for table in (streams.camera_state, streams.register_state, streams.store_journeys):
            table._send_changelog = lambda *a, **k: None
        frames = []
        for i in range(60):  # 2 fps for 30 s: 10 s at the cabinet, on the floor, out of the door at 20 s, gone
            analysis = FrameAnalysis(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=T0 + i * 500, frame_sequence=i)
            if i < 40:
                person = analysis.persons.add(track_id=5, first_seen_ms=T0, detected=True)
                if i < 20:
                    person.zones.add(zone_id="cabinet", entered_ms=T0)
            if i == 40:
                analysis.line_crossings.add(line_id="front-door", track_id=5, direction="out", line_kind="door")
            frames.append((b"cam-counter-1", analysis.SerializeToString()))
        await _put_all(correlator, "cameras", topics.DETECTIONS, frames)
        steps = sent["steps"].sent
        assert all(s["key"] == b"store-001" for s in steps)
        kinds = [agents.STEP_CODEC.loads(s["value"]).kind for s in steps]
        assert kinds.count("enter") == 1 and kinds.count("leave") == 1 and kinds.count("cross") == 1 and kinds.count("clock") >= 10
        await _put_all(correlator, "stores", topics.STORE_STEPS, [(s["key"], s["value"]) for s in steps])
        [raised] = [Alert.FromString(a["value"]) for a in sent["alerts"].sent]
        assert raised.rule == "checkout_bypass" and raised.facts["track"] == "5" and raised.facts["zone"] == "cabinet"
        # A poison step goes to the DLQ, not into the journeys.
        dlq = Recorder()
        with patch.object(streams, "dlq", lambda source: dlq):
            await _put_all(correlator, "stores", topics.STORE_STEPS, [(b"store-001", b"{not json")])
        assert len(dlq.sent) == 1
