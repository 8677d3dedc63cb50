"""The recorder over Apache Kafka and a real Redis, and the evidence store on an S3 server (moto)."""

from __future__ import annotations

import io
import time
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import yaml

from devplatform.launcher import ROOT, free_port
from services.shared import topics
from services.shared.cameras import camera_statuses
from services.shared.contracts.alert_pb2 import Alert, EvidenceRef
from services.shared.contracts.frame_analysis_pb2 import BoundingBox, FrameAnalysis, PersonObservation
from services.shared.contracts.frame_pb2 import Frame
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.evidence import STORE_ERRORS, EvidenceNotFound, EvidenceStore
from services.shared.kafka import make_producer
from services.shared.storeconfig import load_store_config
from services.shared.traffic import store_traffic
from tests.conftest import consume_all, wait_for

pytestmark = pytest.mark.integration

STORE = "store-001"
CAM = "cam-counter-1"


def _jpeg(i: int) -> bytes:
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, :, 0] = np.linspace(0, 255, 320, dtype=np.uint8)
    cv2.circle(image, (20 + i * 2, 120), 15, (255, 255, 255), -1)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def _refund(event_id: str, t: int) -> bytes:
    return PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_REFUND, store_id=STORE, register_id="reg-1", transaction_id="tx-9",
                    employee_id="emp-1", event_time_ms=t, currency="GBP", total_minor=2500).SerializeToString()


def _manifest(evidence: Path, alert_id: str, status: str | None = None):
    def check():
        path = evidence / STORE / alert_id / "manifest.json"
        manifest = EvidenceStore(str(evidence)).manifest(STORE, alert_id) if path.exists() else None
        return manifest if manifest and (status is None or manifest["status"] == status) else None
    return check


def _metrics(proc) -> str:
    with urllib.request.urlopen(proc.http + "/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_alert_evidence_camera_status_and_poison_skipped(broker, redis_url, start_service, tmp_path):
    evidence = tmp_path / "evidence"
    recorder = start_service("recorder", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_EVIDENCE_URL": str(evidence),
                                          "SW_RECORDER_BEFORE_S": "1", "SW_RECORDER_AFTER_S": "1"})
    producer = make_producer(broker)
    producer.produce(topics.FRAMES, key=CAM, value=b"\x00 not a frame")
    now = int(time.time() * 1000)
    start = now - 10_000
    # The analyses go first and are read before any frame: a recorder that has read frames but no
    # analysis yet takes the camera for one without inference and draws the snapshot bare (a real
    # broker may hand one topic over before the other).
    for i in range(101):
        analysis = FrameAnalysis(store_id=STORE, camera_id=CAM, capture_time_ms=start + i * 100, frame_sequence=i, persons=[
            PersonObservation(track_id=4, score=0.8, box=BoundingBox(ymin=0.3, xmin=0.2, ymax=0.9, xmax=0.5), detected=True)])
        if i in (50, 60):  # two people crossing the sample camera's counting line, the first analysis delivered twice
            analysis.line_crossings.add(line_id="aisle-east", track_id=4 + i, direction="out" if i == 50 else "in", line_kind="count")
        for _ in range(2 if i == 50 else 1):
            producer.produce(topics.DETECTIONS, key=CAM, value=analysis.SerializeToString())
    producer.flush(10)
    wait_for(lambda: 'sw_messages_processed_total{service="recorder",topic="sw.detections.v1"} 102.0' in _metrics(recorder), 60,
             "the analyses read", recorder)
    for i in range(101):
        producer.produce(topics.FRAMES, key=CAM, value=Frame(store_id=STORE, camera_id=CAM, capture_time_ms=start + i * 100, sequence=i,
                                                             jpeg=_jpeg(i), width=320, height=240).SerializeToString())
        producer.poll(0)
    producer.produce(topics.POS, key=f"{STORE}:reg-1", value=_refund("ev-77", now - 5000))
    alert = Alert(alert_id="al-rec-1", rule="refund_without_customer", store_id=STORE, camera_id=CAM, register_id="reg-1",
                  event_time_ms=now - 5000, raised_time_ms=now, evidence=[
                      EvidenceRef(kind="pos_event", ref="ev-77", time_ms=now - 5000),
                      EvidenceRef(kind="camera_window", ref=f"{now - 7000}-{now - 3000}", camera_id=CAM, time_ms=now - 5000)])
    producer.produce(topics.ALERTS, key=STORE, value=alert.SerializeToString())
    producer.flush(10)

    manifest = wait_for(_manifest(evidence, "al-rec-1", "complete"), 60, "complete evidence", recorder)
    assert manifest["window_ms"] == [now - 8000, now - 2000] and manifest["missing"] == []
    folder = evidence / STORE / "al-rec-1"
    assert len(manifest["frames"]) == 61 and all((folder / f["name"]).exists() for f in manifest["frames"])
    assert [e["event_id"] for e in manifest["pos_events"]] == ["ev-77"]
    assert manifest["snapshot"]["detections"]["persons"][0]["box"] == [0.2, 0.3, 0.5, 0.9]
    assert cv2.imread(str(folder / "snapshot.jpg")) is not None
    capture = cv2.VideoCapture(str(folder / "clip.avi"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == manifest["clip"]["frames"] == 61

    client = redis.Redis.from_url(redis_url)
    # The status follows the newest frame read so far: wait for the last one (a real broker hands the
    # frames over in several fetches, so an earlier status may be there first).
    status = wait_for(lambda: (s := camera_statuses(client).get(CAM)) and s["last_frame_ms"] == start + 10_000 and s, 10, "camera status in Redis", recorder)
    assert status["store_id"] == STORE and status["fps"] > 5 and not status["heartbeat"]
    # The line crossings, each counted once, for the dashboard's store page.
    # Counted over the last 24 hours (the store's opening time could fall between the crossings and now).
    store = load_store_config(ROOT / "config" / "sample-store.yaml").store(STORE).model_copy(update={"opening_hours": None})
    lines = wait_for(lambda: (t := store_traffic(client, store, now)) and t["lines"][0]["in"] == 1 and t["lines"], 10, "line counts in Redis", recorder)
    assert lines == [{"camera_id": CAM, "line_id": "aisle-east", "kind": "count", "in": 1, "out": 1}]

    # Inference keeps the bad frame in the DLQ; the recorder passes over it, counted.
    metrics = _metrics(recorder)
    assert 'sw_recorder_evidence_written_total{status="complete"} 1.0' in metrics
    assert 'sw_messages_skipped_total{service="recorder",topic="sw.frames.v1"} 1.0' in metrics
    assert consume_all(broker, topics.dlq(topics.FRAMES), timeout=3, idle=1) == []
    assert "not a valid protobuf" in recorder.log_text()


def test_retention_sweep_deletes_old_evidence_and_closes_stale_pending(broker, redis_url, start_service, sample_assets, tmp_path):
    raw = yaml.safe_load(Path(sample_assets["store_config"]).read_text())
    raw["stores"][0]["evidence_retention_days"] = 0.00005  # 4.3 s
    config = tmp_path / "store.yaml"
    config.write_text(yaml.safe_dump(raw))
    evidence = tmp_path / "evidence"
    store = EvidenceStore(str(evidence))
    now = int(time.time() * 1000)
    store.write_manifest({"alert_id": "al-old", "store_id": STORE, "status": "complete", "raised_time_ms": now - 86_400_000})
    # Left "pending" by a recorder that stopped before the alert's window passed. Raised 5 minutes
    # ahead, so that it outlives the 4.3 s retention however long the recorder takes to start, and
    # the test sees it closed before the sweep deletes it.
    store.write_manifest({"alert_id": "al-stale", "store_id": STORE, "status": "pending", "raised_time_ms": now + 300_000, "written_ms": now - 1000,
                          "missing": [], "frames": []})
    recorder = start_service("recorder", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_EVIDENCE_URL": str(evidence),
                                          "SW_STORE_CONFIG": str(config), "SW_RECORDER_RETENTION_SWEEP_S": "0.5"})
    wait_for(lambda: "al-old" not in store.alert_ids(STORE), 15, "old evidence deleted", recorder)
    stale = wait_for(_manifest(evidence, "al-stale", "partial"), 15, "stale pending closed", recorder)
    assert "the recorder stopped before" in stale["missing"][0]

    producer = make_producer(broker)
    producer.produce(topics.POS, key=f"{STORE}:reg-1", value=_refund("ev-1", now))
    alert = Alert(alert_id="al-nocam", rule="employee_own_card", store_id=STORE, register_id="reg-1", event_time_ms=now,
                  raised_time_ms=int(time.time() * 1000), evidence=[EvidenceRef(kind="pos_event", ref="ev-1", time_ms=now)])
    producer.produce(topics.ALERTS, key=STORE, value=alert.SerializeToString())
    producer.flush(10)
    manifest = wait_for(_manifest(evidence, "al-nocam"), 30, "evidence of an alert without camera", recorder)
    assert manifest["status"] == "complete" and manifest["frames"] == [] and [e["event_id"] for e in manifest["pos_events"]] == ["ev-1"]
    wait_for(lambda: "al-nocam" not in store.alert_ids(STORE), 30, "evidence past retention deleted", recorder)
    assert store.alert_ids(STORE) == ["al-stale"]  # raised 5 minutes ahead: within retention still


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            server.stop()

    try:
        yield stop, f"http://127.0.0.1:{port}"
    finally:
        stop()


def test_evidence_store_on_s3(s3_server):
    import boto3

    stop_server, endpoint = s3_server
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="sw-evidence")
    store = EvidenceStore("s3://sw-evidence/chain-1", {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"})
    now = int(time.time() * 1000)
    store.write_files(STORE, "al-s3", {"frames/0000000001.jpg": _jpeg(1), "snapshot.jpg": b"snap", "clip.avi": b"clip"})
    manifest = {"version": 1, "alert_id": "al-s3", "store_id": STORE, "status": "complete", "raised_time_ms": now,
                "frames": [{"name": "frames/0000000001.jpg"}], "snapshot": {"name": "snapshot.jpg"}, "clip": {"name": "clip.avi"}, "pos_events": []}
    store.write_manifest(manifest)
    store.write_manifest({"alert_id": "al-s3-old", "store_id": STORE, "status": "partial", "raised_time_ms": now - 86_400_000})
    assert store.manifest(STORE, "al-s3") == manifest and store.manifest(STORE, "al-none") is None
    assert store.alert_ids(STORE) == ["al-s3", "al-s3-old"]
    assert store.read(STORE, "al-s3", "frames/0000000001.jpg") == _jpeg(1)
    with pytest.raises(EvidenceNotFound):
        store.read(STORE, "al-s3", "frames/0000000002.jpg")
    with zipfile.ZipFile(io.BytesIO(store.package(STORE, "al-s3", {"alert.json": b"{}"}))) as zf:
        assert sorted(zf.namelist()) == ["alert.json", "clip.avi", "frames/0000000001.jpg", "manifest.json", "snapshot.jpg"]
    # Another process (the api) sees the same evidence.
    other = EvidenceStore("s3://sw-evidence/chain-1", {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing",
                                                       "skip_instance_cache": True})
    assert other.expire(STORE, now - 3_600_000) == 1
    assert store.alert_ids(STORE) == ["al-s3"]
    store.delete(STORE, "al-s3")
    assert store.alert_ids(STORE) == [] and store.manifest(STORE, "al-s3") is None
    # A store that is down raises what the recorder retries on.
    stop_server()
    with pytest.raises(STORE_ERRORS):
        store.write(STORE, "al-down", "snapshot.jpg", b"x")
