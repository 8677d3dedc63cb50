"""The evidence store (a local folder) and the recorder's buffers, windows and pending alerts, without infrastructure."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pydantic import SecretStr

from services.recorder.buffer import CameraBuffer, StorePos
from services.recorder.service import Recorder, RecorderOptions
from services.recorder.settings import RecorderSettings
from services.shared import topics
from services.shared.cameras import CAMERA_STATUS_HASH, camera_statuses, write_camera_statuses
from services.shared.contracts.alert_pb2 import Alert, EvidenceRef
from services.shared.contracts.frame_analysis_pb2 import BoundingBox, DetectedObject, FrameAnalysis, PersonObservation, ZoneObservation
from services.shared.contracts.frame_pb2 import Frame
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.evidence import EvidenceNotFound, EvidenceStore, evidence_store_from_settings, manifest_files
from services.shared.kafka import Outcome, RetryableError
from services.shared.storeconfig import load_store_config

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "sample-store.yaml"
T0 = 1_760_000_000_000
CAM = "cam-counter-1"
STORE = "store-001"


# ---- builders ----------------------------------------------------------------------------------

def jpeg(value: int = 128, width: int = 320, height: int = 240) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), value, np.uint8))
    assert ok
    return data.tobytes()


GREY = jpeg()


def frame(seq: int, t: int, heartbeat: bool = False, data: bytes = GREY) -> Frame:
    return Frame(store_id=STORE, camera_id=CAM, capture_time_ms=t, sequence=seq, jpeg=b"" if heartbeat else data,
                 width=320, height=240, heartbeat=heartbeat)


def analysis(seq: int, t: int) -> FrameAnalysis:
    return FrameAnalysis(store_id=STORE, camera_id=CAM, capture_time_ms=t, frame_sequence=seq, persons=[
        PersonObservation(track_id=7, score=0.9, box=BoundingBox(ymin=0.2, xmin=0.1, ymax=0.9, xmax=0.4), detected=True)],
        objects=[DetectedObject(label="handbag", score=0.5, box=BoundingBox(ymin=0.6, xmin=0.5, ymax=0.8, xmax=0.7), track_id=3)])


def refund(event_id: str = "ev-1", t: int = T0 + 5000, txn: str = "tx-1") -> PosEvent:
    return PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_REFUND, store_id=STORE, register_id="reg-1", transaction_id=txn,
                    employee_id="emp-1", event_time_ms=t, currency="GBP", total_minor=4999)


def refund_alert(alert_id: str = "al-1", start: int = T0 + 2000, end: int = T0 + 8000, event_t: int = T0 + 5000) -> Alert:
    return Alert(alert_id=alert_id, rule="refund_without_customer", store_id=STORE, camera_id=CAM, register_id="reg-1",
                 event_time_ms=event_t, raised_time_ms=end + 500, evidence=[
                     EvidenceRef(kind="pos_event", ref="ev-1", time_ms=event_t),
                     EvidenceRef(kind="pos_transaction", ref="tx-1", time_ms=event_t),
                     EvidenceRef(kind="camera_window", ref=f"{start}-{end}", camera_id=CAM, time_ms=event_t)])


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@pytest.fixture
def store(tmp_path):
    return EvidenceStore(str(tmp_path / "evidence"))


@pytest.fixture
def clock():
    return Clock(T0 + 1000)


@pytest.fixture
def recorder(store, clock):
    options = RecorderOptions(buffer_ms=30_000, before_ms=1000, after_ms=1000, max_wait_ms=20_000)
    return Recorder(load_store_config(SAMPLE), store, options, clock=clock)


def feed(recorder: Recorder, first_seq: int, start: int, end: int, step: int = 100, analyses: bool = True) -> None:
    seq = first_seq
    for t in range(start, end + 1, step):
        recorder.take(topics.FRAMES, frame(seq, t).SerializeToString(), recorder.now_ms())
        if analyses:
            recorder.take(topics.DETECTIONS, analysis(seq, t).SerializeToString(), recorder.now_ms())
        seq += 1


# ---- the store ---------------------------------------------------------------------------------

def test_layout_read_write_and_manifest(store, tmp_path):
    store.write(STORE, "al-1", "frames/0000000123.jpg", b"jpg")
    store.write(STORE, "al-1", "snapshot.jpg", b"snap")
    manifest = {"version": 1, "alert_id": "al-1", "store_id": STORE, "status": "complete", "raised_time_ms": T0,
                "frames": [{"name": "frames/0000000123.jpg"}], "snapshot": {"name": "snapshot.jpg"}, "clip": None}
    store.write_manifest(manifest)
    root = tmp_path / "evidence" / STORE / "al-1"
    assert (root / "frames" / "0000000123.jpg").read_bytes() == b"jpg"
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in root.iterdir()) == ["frames", "manifest.json", "snapshot.jpg"]  # no temporary file left
    assert store.read(STORE, "al-1", "snapshot.jpg") == b"snap"
    assert store.manifest(STORE, "al-1") == manifest
    assert store.manifest(STORE, "al-2") is None
    assert store.alert_ids(STORE) == ["al-1"] and store.alert_ids("store-999") == []
    with pytest.raises(EvidenceNotFound):
        store.read(STORE, "al-1", "clip.avi")
    with pytest.raises(ValueError, match="status"):
        store.write_manifest({**manifest, "status": "done"})


@pytest.mark.parametrize("name", ["../x", "frames/../../x", "/etc/passwd", "a b.jpg", "", "frames//x.jpg", "x\n"])
def test_unsafe_names_are_refused(store, name):
    with pytest.raises(ValueError):
        store.read(STORE, "al-1", name)
    with pytest.raises(ValueError):
        store.write(STORE, "al-1", name, b"x")


@pytest.mark.parametrize("store_id, alert_id", [("..", "al-1"), (STORE, "../al"), ("a/b", "al-1"), (STORE, ""), (STORE, "a..b")])
def test_unsafe_ids_are_refused(store, store_id, alert_id):
    with pytest.raises(ValueError, match="path-safe"):
        store.write(store_id, alert_id, "snapshot.jpg", b"x")


def test_package_holds_every_listed_file_the_manifest_and_extras(store):
    store.write_files(STORE, "al-1", {"frames/0000000001.jpg": b"f1", "frames/0000000002.jpg": b"f2", "snapshot.jpg": b"s", "clip.avi": b"c"})
    manifest = {"version": 1, "alert_id": "al-1", "store_id": STORE, "status": "complete",
                "frames": [{"name": "frames/0000000001.jpg"}, {"name": "frames/0000000002.jpg"}],
                "snapshot": {"name": "snapshot.jpg"}, "clip": {"name": "clip.avi"}, "pos_events": []}
    store.write_manifest(manifest)
    data = store.package(STORE, "al-1", {"alert.json": b"{}", "audit.json": b"[]"})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == sorted(["frames/0000000001.jpg", "frames/0000000002.jpg", "snapshot.jpg", "clip.avi",
                                                "manifest.json", "alert.json", "audit.json"])
        assert zf.read("frames/0000000002.jpg") == b"f2"
        assert json.loads(zf.read("manifest.json")) == manifest
    with pytest.raises(EvidenceNotFound):
        store.package(STORE, "al-none", {})
    with pytest.raises(ValueError):
        store.package(STORE, "al-1", {"../alert.json": b"{}"})
    os.remove(Path(store.root) / STORE / "al-1" / "clip.avi")
    with pytest.raises(EvidenceNotFound, match=r"clip\.avi"):
        store.package(STORE, "al-1", {})


def test_expire_deletes_alerts_raised_before_the_cutoff(store):
    for alert_id, raised in (("al-old", T0 - 10), ("al-new", T0 + 10), ("al-written", 0)):
        store.write_manifest({"alert_id": alert_id, "store_id": STORE, "status": "complete", "raised_time_ms": raised, "written_ms": T0 - 5})
    store.write(STORE, "al-orphan", "frames/0000000001.jpg", b"x")  # a crash before any manifest: its files' age counts
    old = (T0 - 60_000) / 1000
    os.utime(Path(store.root) / STORE / "al-orphan" / "frames" / "0000000001.jpg", (old, old))
    assert store.expire(STORE, T0) == 3
    assert store.alert_ids(STORE) == ["al-new"]
    assert store.expire(STORE, T0) == 0


def test_store_from_settings():
    s3 = evidence_store_from_settings("s3://bucket/prefix", "http://127.0.0.1:9", SecretStr("k"), SecretStr("s"))
    assert s3.root == "bucket/prefix" and s3.fs.key == "k" and s3.fs.client_kwargs == {"endpoint_url": "http://127.0.0.1:9"}
    chain = evidence_store_from_settings("s3://bucket/other", "", SecretStr(""), SecretStr(""))  # unset in compose: the AWS chain
    assert chain.fs.key is None and chain.fs.secret is None
    with pytest.raises(ValueError, match="not an s3"):
        evidence_store_from_settings("var/evidence", "http://minio:9000")


def test_settings_refuse_a_window_larger_than_the_buffer(monkeypatch):
    monkeypatch.setenv("SW_RECORDER_BUFFER_S", "8")
    with pytest.raises(ValueError, match="no window fits"):
        RecorderSettings()
    monkeypatch.setenv("SW_RECORDER_BUFFER_S", "30")
    assert RecorderSettings().options().before_ms == 5000


def test_the_default_buffer_outlasts_the_correlators_longest_wait_for_a_refunds_camera(monkeypatch):
    """`make chaos` found refund alerts decided 30-40 s after their window under load, and the old 30 s
    buffer had dropped their frames (partial evidence): the buffer must outlast the correlator's wait."""
    from services.shared.rulesconfig import RulesConfig

    monkeypatch.delenv("SW_RECORDER_BUFFER_S", raising=False)
    rules = RulesConfig()
    latest_s = rules.timing.max_wait_s + rules.refund_without_customer.after_s + rules.timing.pos_clock_skew_s
    settings = RecorderSettings()
    assert settings.recorder_buffer_s > latest_s + settings.recorder_before_s


def test_camera_status_round_trip():
    data: dict = {}
    fake = SimpleNamespace(hset=lambda key, mapping: data.setdefault(key, {}).update(mapping),
                           hgetall=lambda key: {k.encode(): v.encode() for k, v in data.get(key, {}).items()})
    status = {"store_id": STORE, "camera_id": CAM, "last_frame_ms": T0, "last_seen_ms": T0 + 5, "fps": 9.5, "heartbeat": False,
              "zones": {"counter-1-customer": {"kind": "counter_customer", "persons": 1, "objects": 0, "at_ms": T0}}}
    write_camera_statuses(fake, [status])  # type: ignore[arg-type]
    data[CAMERA_STATUS_HASH]["junk"] = "not json"
    assert camera_statuses(fake) == {CAM: status}  # type: ignore[arg-type]


def test_camera_status_carries_the_newest_analysis_zones_through_heartbeats():
    buffer = CameraBuffer(STORE, CAM, buffer_ms=30_000, max_bytes=10**9)
    seen = FrameAnalysis(store_id=STORE, camera_id=CAM, capture_time_ms=T0, frame_sequence=1, zones=[
        ZoneObservation(zone_id="counter-1-customer", kind="counter_customer", person_present=True, person_count=2),
        ZoneObservation(zone_id="counter-1-merchandise", kind="counter_merchandise", object_count=1)])
    buffer.add_analysis(seen)
    buffer.add_analysis(FrameAnalysis(store_id=STORE, camera_id=CAM, capture_time_ms=T0 + 500, heartbeat=True))
    buffer.add_analysis(FrameAnalysis(store_id=STORE, camera_id=CAM, capture_time_ms=T0 - 100, frame_sequence=0))  # late: ignored
    assert buffer.status()["zones"] == {"counter-1-customer": {"kind": "counter_customer", "persons": 2, "objects": 0, "at_ms": T0 + 500},
                                        "counter-1-merchandise": {"kind": "counter_merchandise", "persons": 0, "objects": 1, "at_ms": T0 + 500}}


# ---- buffers -----------------------------------------------------------------------------------

def test_buffer_is_bounded_by_time_and_bytes():
    big = b"\xff\xd8" + bytes(99_998)
    buffer = CameraBuffer(STORE, CAM, buffer_ms=30_000, max_bytes=1_000_000)
    for i in range(1000):
        buffer.add_frame(frame(i, T0 + i * 100, data=big), T0)
    assert buffer.bytes <= 1_000_000 and len(buffer.frames) == 10
    assert buffer.complete_since_ms == buffer.frames[0].capture_time_ms - 100 + 1
    small = CameraBuffer(STORE, CAM, buffer_ms=2_000, max_bytes=10**9)
    for i in range(100):
        small.add_frame(frame(i, T0 + i * 100), T0)
    assert small.frames[0].capture_time_ms == T0 + 99 * 100 - 2000
    small.add_frame(frame(5, T0 + 500), T0)  # late and older than the buffer: not kept
    assert 5 not in small.by_sequence


def test_heartbeats_only_advance_the_clock_and_replays_are_kept_once():
    buffer = CameraBuffer(STORE, CAM, buffer_ms=30_000, max_bytes=10**9)
    buffer.add_frame(frame(1, T0), T0)
    buffer.add_frame(frame(1, T0), T0)
    buffer.add_frame(frame(2, T0 + 500, heartbeat=True), T0 + 1)
    assert len(buffer.frames) == 1 and buffer.clock_ms == T0 + 500 and buffer.heartbeat
    for i in range(3, 23):
        buffer.add_frame(frame(i, T0 + i * 100), T0)
    assert 9 <= buffer.fps() <= 11 and not buffer.heartbeat


def test_pos_events_are_bounded_by_time_and_count():
    pos = StorePos(retention_ms=60_000, max_events=3)
    for i in range(5):
        pos.add(refund(f"ev-{i}", T0 + i, txn=f"tx-{i % 2}"))
    assert list(pos.events) == ["ev-2", "ev-3", "ev-4"]
    assert [e.event_id for e in pos.transaction("tx-0")] == ["ev-2", "ev-4"]
    pos.add(refund("ev-late", T0 + 200_000, txn="tx-9"))
    assert list(pos.events) == ["ev-late"] and pos.transaction("tx-0") == []


# ---- the recorder ------------------------------------------------------------------------------

def test_alert_in_the_buffer_gets_complete_evidence(recorder, store, clock):
    feed(recorder, 100, T0, T0 + 12_000)
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "complete", manifest["missing"]
    assert manifest["window_ms"] == [T0 + 1000, T0 + 9000]
    assert [f["capture_time_ms"] for f in manifest["frames"]] == list(range(T0 + 1000, T0 + 9001, 100))
    assert manifest["frames"][0] == {"name": "frames/0000000110.jpg", "sequence": 110, "capture_time_ms": T0 + 1000, "width": 320, "height": 240}
    assert store.read(STORE, "al-1", "frames/0000000110.jpg") == GREY
    assert [e["event_id"] for e in manifest["pos_events"]] == ["ev-1"] and manifest["pos_events"][0]["type"] == "POS_EVENT_TYPE_REFUND"
    snap = manifest["snapshot"]
    assert snap["sequence"] == 150 and snap["capture_time_ms"] == T0 + 5000
    assert snap["detections"]["persons"] == [{"box": [0.1, 0.2, 0.4, 0.9], "track_id": "7", "score": 0.9}]
    assert snap["detections"]["objects"] == [{"label": "handbag", "box": [0.5, 0.6, 0.7, 0.8], "score": 0.5}]
    assert [z["kind"] for z in snap["detections"]["zones"]] == ["counter_customer", "staff_only", "aisle"]
    image = cv2.imdecode(np.frombuffer(store.read(STORE, "al-1", "snapshot.jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 640
    # The person's box (green) is drawn on a grey frame: its left edge at x = 0.1 of the width.
    h, w = image.shape[:2]
    edge = image[int(0.5 * h), int(0.1 * (w - 1)) - 1: int(0.1 * (w - 1)) + 2].astype(int)
    assert (edge[:, 1] - edge[:, 2] > 60).any()
    assert manifest["clip"] == {"name": "clip.avi", "frames": 81, "fps": 10.0}
    clip_path = Path(store.root) / STORE / "al-1" / "clip.avi"
    capture = cv2.VideoCapture(str(clip_path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 81


def test_pending_alert_finishes_when_the_camera_passes_the_window(recorder, store, clock):
    feed(recorder, 0, T0, T0 + 6000)
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    pending = store.manifest(STORE, "al-1")
    assert pending["status"] == "pending" and "al-1" in recorder.pending
    # The snapshot (the refund's moment, with its detections) is written already, for the push notification.
    assert pending["snapshot"]["capture_time_ms"] == T0 + 5000 and pending["snapshot"]["detections"]["persons"][0]["track_id"] == "7"
    assert store.read(STORE, "al-1", "snapshot.jpg")[:2] == b"\xff\xd8" and pending["frames"] == [] and pending["clip"] is None
    # Frames keep flowing meanwhile; a replay of the alert while it waits changes nothing.
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    feed(recorder, 61, T0 + 6100, T0 + 9000)
    assert recorder.finish_due(clock.ms) == 1
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 81 and not recorder.pending


def test_pending_waits_for_the_snapshot_detections(recorder, store, clock):
    feed(recorder, 0, T0, T0 + 4000)
    feed(recorder, 41, T0 + 4100, T0 + 10_000, analyses=False)  # inference behind
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    assert recorder.pending["al-1"].awaiting == ("detections", T0 + 4000)
    assert store.manifest(STORE, "al-1")["snapshot"] is None  # not without its detections
    recorder.take(topics.DETECTIONS, analysis(50, T0 + 5000).SerializeToString(), clock.ms)
    assert recorder.finish_due(clock.ms) == 1
    assert store.manifest(STORE, "al-1")["status"] == "complete"


def test_pending_becomes_partial_after_max_wait_without_progress(recorder, store, clock):
    feed(recorder, 0, T0, T0 + 6000)
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    clock.ms += 15_000
    feed(recorder, 61, T0 + 6100, T0 + 7000)  # progress: the wait starts again
    recorder.finish_due(clock.ms)
    clock.ms += 15_000
    recorder.tick()
    assert "al-1" in recorder.pending
    clock.ms += 6_000
    recorder.tick()
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "partial" and not recorder.pending
    assert [m for m in manifest["missing"] if m.startswith(f"{CAM} sent nothing after")], manifest["missing"]
    assert manifest["frames"][-1]["capture_time_ms"] == T0 + 7000 and manifest["clip"]["frames"] == 61


def test_silent_camera_gives_partial_evidence_with_the_reason(recorder, store, clock):
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    clock.ms += 21_000
    recorder.tick()
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "partial" and manifest["frames"] == [] and manifest["snapshot"] is None and manifest["clip"] is None
    assert any("camera silent" in m for m in manifest["missing"])
    assert [e["event_id"] for e in manifest["pos_events"]] == ["ev-1"]


def test_window_older_than_the_buffer_is_named(recorder, store, clock):
    feed(recorder, 0, T0 + 5000, T0 + 12_000)  # the recorder started after the window began
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "partial"
    assert any("not in the recorder's buffer" in m for m in manifest["missing"])
    assert manifest["frames"][0]["capture_time_ms"] == T0 + 5000


def test_frame_refs_choose_the_snapshot_and_the_window(recorder, store, clock):
    feed(recorder, 0, T0, T0 + 12_000)
    alert = Alert(alert_id="al-c", rule="concealment", store_id=STORE, camera_id=CAM, event_time_ms=T0 + 7000, raised_time_ms=T0 + 7100, evidence=[
        EvidenceRef(kind="frames", ref="30-70", camera_id=CAM, time_ms=T0 + 3000),
        EvidenceRef(kind="frame", ref="62", camera_id=CAM, time_ms=T0 + 6200)])
    recorder.take(topics.ALERTS, alert.SerializeToString(), clock.ms)
    manifest = store.manifest(STORE, "al-c")
    assert manifest["status"] == "complete" and manifest["window_ms"] == [T0 + 2000, T0 + 8000]
    assert manifest["snapshot"]["sequence"] == 62


def test_alert_without_camera_keeps_the_pos_events(recorder, store, clock):
    recorder.take(topics.POS, refund("ev-a", T0).SerializeToString(), clock.ms)
    recorder.take(topics.POS, refund("ev-b", T0 + 10, txn="tx-2").SerializeToString(), clock.ms)
    alert = Alert(alert_id="al-r", rule="return_abuse", store_id=STORE, event_time_ms=T0 + 10, raised_time_ms=T0 + 20, evidence=[
        EvidenceRef(kind="pos_event", ref="ev-a", time_ms=T0), EvidenceRef(kind="pos_event", ref="ev-b", time_ms=T0 + 10)])
    recorder.take(topics.ALERTS, alert.SerializeToString(), clock.ms)
    manifest = store.manifest(STORE, "al-r")
    assert manifest["status"] == "complete" and manifest["camera_id"] == "" and manifest["frames"] == []
    assert [e["event_id"] for e in manifest["pos_events"]] == ["ev-a", "ev-b"]


def test_pos_event_older_than_kept_is_not_waited_for(recorder, store, clock):
    recorder.take(topics.POS, refund("ev-now", T0 + 4_000_000).SerializeToString(), clock.ms + 4_000_000)
    alert = Alert(alert_id="al-n", rule="no_sale_rate", store_id=STORE, event_time_ms=T0 + 4_000_000, raised_time_ms=T0 + 4_000_000, evidence=[
        EvidenceRef(kind="pos_event", ref="ev-gone", time_ms=T0), EvidenceRef(kind="pos_event", ref="ev-now", time_ms=T0 + 4_000_000)])
    recorder.take(topics.ALERTS, alert.SerializeToString(), clock.ms)
    manifest = store.manifest(STORE, "al-n")
    assert manifest["status"] == "partial" and [e["event_id"] for e in manifest["pos_events"]] == ["ev-now"]
    assert manifest["missing"] == ["POS event ev-gone at 2025-10-09T08:53:20.000Z: older than the recorder keeps 3600 s of POS events"]


def test_replayed_alert_is_skipped(recorder, store, clock):
    feed(recorder, 100, T0, T0 + 12_000)
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    first = store.manifest(STORE, "al-1")
    clock.ms += 5000
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    assert store.manifest(STORE, "al-1") == first


def test_pending_of_an_earlier_run_is_closed_or_recorded_again(store, clock):
    config = load_store_config(SAMPLE)
    earlier = Recorder(config, store, RecorderOptions(before_ms=1000, after_ms=1000), clock=clock)
    feed(earlier, 0, T0, T0 + 6000)
    earlier.take(topics.ALERTS, refund_alert("al-1").SerializeToString(), clock.ms)
    earlier.take(topics.ALERTS, refund_alert("al-2").SerializeToString(), clock.ms)
    assert store.manifest(STORE, "al-1")["status"] == "pending"
    clock.ms += 1000
    later = Recorder(config, store, RecorderOptions(before_ms=1000, after_ms=1000), clock=clock)  # the first one crashed
    feed(later, 0, T0, T0 + 12_000)
    later.take(topics.POS, refund().SerializeToString(), clock.ms)
    later.take(topics.ALERTS, refund_alert("al-2").SerializeToString(), clock.ms)  # replayed: recorded again from the new buffer
    assert later.sweep() == 0
    closed = store.manifest(STORE, "al-1")
    assert closed["status"] == "partial" and "the recorder stopped before" in closed["missing"][-1]
    assert store.manifest(STORE, "al-2")["status"] == "complete"


def test_sweep_expires_by_store_retention(store, clock):
    config = load_store_config(SAMPLE).model_copy(update={"evidence_retention_days": 1.0})
    recorder = Recorder(config, store, clock=clock)
    store.write_manifest({"alert_id": "al-old", "store_id": STORE, "status": "complete", "raised_time_ms": clock.ms - 2 * 86_400_000})
    store.write_manifest({"alert_id": "al-new", "store_id": STORE, "status": "complete", "raised_time_ms": clock.ms - 3_600_000})
    assert recorder.sweep() == 1 and store.alert_ids(STORE) == ["al-new"]


def test_poison_is_judged_with_its_reason_and_the_rest_is_kept(recorder, store, clock):
    def msg(topic: str, value: bytes | None) -> SimpleNamespace:
        return SimpleNamespace(topic=lambda: topic, value=lambda: value)

    unknown = frame(1, T0)
    unknown.camera_id = "cam-nowhere"
    batch = [msg(topics.FRAMES, b"\x00garbage"), msg(topics.FRAMES, frame(1, T0, data=b"not a jpeg").SerializeToString()),
             msg(topics.FRAMES, unknown.SerializeToString()), msg(topics.FRAMES, frame(2, T0 + 10 * 86_400_000).SerializeToString()),
             msg(topics.ALERTS, Alert(alert_id="../x", rule="r", store_id=STORE).SerializeToString()), msg(topics.POS, None),
             msg(topics.FRAMES, frame(3, T0).SerializeToString())]
    outcome = recorder.handle(batch)
    errors = [poison.reason for poison in outcome.poison]
    assert len(errors) == 6 and not outcome.outputs
    assert "not a valid protobuf" in errors[0] and "not a JPEG" in errors[1] and "not in the store config" in errors[2]
    assert "ahead of this host's clock" in errors[3] and "path-safe" in errors[4] and "tombstone" in errors[5]
    assert list(recorder.cameras[CAM].by_sequence) == [3]


def test_camera_status_is_written_at_most_once_a_second(recorder, clock):
    feed(recorder, 0, T0, T0 + 2000)
    [status] = recorder.status_updates()
    assert status["camera_id"] == CAM and status["last_frame_ms"] == T0 + 2000 and status["last_seen_ms"] == clock.ms and not status["heartbeat"]
    recorder.take(topics.FRAMES, frame(21, T0 + 2100, heartbeat=True).SerializeToString(), clock.ms)
    assert recorder.status_updates() == []
    clock.ms += 1000
    [status] = recorder.status_updates()
    assert status["heartbeat"] and status["last_frame_ms"] == T0 + 2100
    assert recorder.status_updates() == []


def test_store_failure_retries_the_batch_and_loses_nothing(recorder, store, clock, monkeypatch):
    def msg(topic: str, value: bytes) -> SimpleNamespace:
        return SimpleNamespace(topic=lambda: topic, value=lambda: value)

    batch = [msg(topics.FRAMES, frame(i, T0 + i * 100).SerializeToString()) for i in range(121)]
    batch += [msg(topics.POS, refund().SerializeToString()), msg(topics.ALERTS, refund_alert().SerializeToString())]

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.fs, "pipe_file", disk_full)
    monkeypatch.setattr(store.fs, "pipe", disk_full)
    with pytest.raises(RetryableError, match="No space left"):
        recorder.handle(batch)
    monkeypatch.undo()
    assert recorder.handle(batch) == Outcome()  # the same batch again, as the consume loop retries it
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 81
    assert len(recorder.cameras[CAM].frames) == 121


def test_pending_alerts_are_written_at_stop(recorder, store, clock):
    feed(recorder, 0, T0, T0 + 6000)
    recorder.take(topics.POS, refund().SerializeToString(), clock.ms)
    recorder.take(topics.ALERTS, refund_alert().SerializeToString(), clock.ms)
    recorder.finish_all("the recorder was stopping")
    manifest = store.manifest(STORE, "al-1")
    assert manifest["status"] == "partial" and manifest["missing"][0] == "the recorder was stopping" and len(manifest["frames"]) == 51


def test_an_alert_that_followed_a_person_across_cameras_keeps_each_cameras_frames_and_clip(store, clock):
    """Checkout bypass: the shelf seen on one camera, the exit on the alert's own camera."""
    config = load_store_config(SAMPLE)
    raw = config.model_dump(mode="json", exclude={"base_dir"})
    shelf = {**raw["stores"][0]["cameras"][0], "id": "cam-shelf", "lines": []}
    raw["stores"][0]["cameras"].append(shelf)
    recorder = Recorder(type(config).model_validate({**raw, "base_dir": config.base_dir}), store,
                        RecorderOptions(buffer_ms=30_000, before_ms=1000, after_ms=1000, max_wait_ms=20_000), clock=clock)
    feed(recorder, 0, T0, T0 + 12_000)
    for seq, t in enumerate(range(T0, T0 + 12_001, 200)):
        recorder.take(topics.FRAMES, Frame(store_id=STORE, camera_id="cam-shelf", capture_time_ms=t, sequence=seq, jpeg=GREY, width=320,
                                           height=240).SerializeToString(), clock.ms)
    alert = Alert(alert_id="al-x", rule="checkout_bypass", store_id=STORE, camera_id=CAM, event_time_ms=T0 + 9000, raised_time_ms=T0 + 9100,
                  evidence=[EvidenceRef(kind="frames", ref="5-20", camera_id="cam-shelf", time_ms=T0 + 1000),
                            EvidenceRef(kind="frame", ref="90", camera_id=CAM, time_ms=T0 + 9000)])
    recorder.take(topics.ALERTS, alert.SerializeToString(), clock.ms)
    manifest = store.manifest(STORE, "al-x")
    assert manifest["status"] == "complete", manifest["missing"]
    assert manifest["camera_id"] == CAM and manifest["snapshot"]["sequence"] == 90 and manifest["window_ms"] == [T0 + 8000, T0 + 10_000]
    [shelf_part] = manifest["other_cameras"]
    assert shelf_part["camera_id"] == "cam-shelf" and shelf_part["window_ms"] == [T0, T0 + 5000]
    assert [f["sequence"] for f in shelf_part["frames"]] == list(range(0, 26)) and shelf_part["clip"]["name"] == "cameras/cam-shelf/clip.avi"
    folder = Path(store.url) / STORE / "al-x"
    assert all((folder / name).exists() for name in manifest_files(manifest))
    assert "cameras/cam-shelf/frames/0000000005.jpg" in manifest_files(manifest)
