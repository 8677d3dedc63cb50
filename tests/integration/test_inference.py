"""Inference over Apache Kafka and the model server: presence per zone from real pixels."""

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from devplatform.launcher import Platform, free_port
from modeling.evaluate_detector import LABELS
from modeling.presence import read_frames
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.kafka import make_producer
from tests.conftest import consume_all, platform_part

pytestmark = pytest.mark.integration

# Beside the project where the workplace keeps it; the test skips without it.
UCSD_PED2 = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ucsd-ped2"


def _giant_header_jpeg() -> bytes:
    """A real JPEG whose header claims 40000x40000 pixels: OpenCV's decoder raises on it."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (40000).to_bytes(2, "big") * 2
    return bytes(data)


def _publish_clip(broker, clip, seconds, corrupt_at=(), giant_at=()):
    producer = make_producer(broker)
    frames = read_frames(clip)
    t0 = 1_800_000_000_000
    for seq, index in enumerate(seconds):
        _, jpeg = cv2.imencode(".jpg", frames[index])
        payload = b"\xff\xd8 not really a jpeg" if seq in corrupt_at else _giant_header_jpeg() if seq in giant_at else jpeg.tobytes()
        frame = Frame(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=t0 + index * 100, sequence=seq,
                      jpeg=payload, width=320, height=240)
        producer.produce(topics.FRAMES, key="cam-counter-1", value=frame.SerializeToString())
    producer.flush(10)


def _customer_zone(analysis: FrameAnalysis):
    return next(z for z in analysis.zones if z.zone_id == "counter-1-customer")


def test_frames_become_zone_presence_and_corrupt_frames_go_to_dlq(broker, model_server, start_service, sample_assets):
    start_service("inference", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_MODEL_SERVER": model_server})
    # 2 s and 2.5 s empty counter, 6 s and 8 s customer, 10 s corrupt, then (after 14 s of silence) 24, 25 and 30 s empty, 31 s corrupt.
    indexes = [20, 25, 60, 80, 100, 240, 250, 300, 310]
    _publish_clip(broker, sample_assets["clip"], indexes, corrupt_at={4}, giant_at={8})
    results = [FrameAnalysis.FromString(m.value()) for m in consume_all(broker, topics.DETECTIONS, expect=7, timeout=60)]
    by_seq = {a.frame_sequence: a for a in results}
    assert sorted(by_seq) == [0, 1, 2, 3, 5, 6, 7]
    # The detector's tracks decide presence; a track is reported from its second sighting.
    assert [_customer_zone(by_seq[s]).person_present for s in (1, 3, 6, 7)] == [False, True, False, False]
    staff = next(z for z in by_seq[6].zones if z.zone_id == "counter-1-staff")
    assert staff.person_present and staff.person_count == 1  # the cashier never leaves

    def cashier(seq: int) -> int:
        return next(p.track_id for p in by_seq[seq].persons if "counter-1-staff" in [v.zone_id for v in p.zones])

    assert cashier(1) == cashier(2) == cashier(3)  # one track while frames keep coming
    assert cashier(6) > cashier(3)  # after the silence the tracker starts afresh, with a new id
    assert by_seq[3].models[0].name == "detector" and by_seq[3].models[0].version >= 1
    # The anomaly model scores every frame and every zone (its worst cell), from the camera's history.
    assert [m.name for m in by_seq[3].models] == ["detector", "pose", "anomaly"]
    # Keypoints for every person tall enough, in frame coordinates: the customer's head is above her hips and ankles.
    [customer] = [p for p in by_seq[3].persons if "counter-1-customer" in [v.zone_id for v in p.zones]]
    points = {k.name: k for k in customer.keypoints}
    assert len(points) == 17 and customer.box.ymin <= points["nose"].y < points["left_hip"].y < points["left_ankle"].y <= customer.box.ymax + 0.05
    for analysis in by_seq.values():
        assert analysis.anomaly_score > 0
        assert max(z.anomaly_score for z in analysis.zones) <= analysis.anomaly_score + 1e-6
        assert all(z.anomaly_score > 0 for z in analysis.zones)
    dead = consume_all(broker, topics.dlq(topics.FRAMES), expect=2, timeout=10)
    errors = sorted(dict(m.headers())["sw-error"] for m in dead)
    assert len(errors) == 2 and b"cannot be decoded" in errors[0] and b"rejected by the decoder" in errors[1]


def test_model_server_down_loses_no_frame(broker, models_dir, start_service, sample_assets, tmp_path):
    port = free_port()
    inference = start_service("inference", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_MODEL_SERVER": f"127.0.0.1:{port}", "SW_MODEL_TIMEOUT_S": "2"})
    _publish_clip(broker, sample_assets["clip"], list(range(0, 300, 10)))
    time.sleep(4)
    assert consume_all(broker, topics.DETECTIONS, timeout=2, idle=1) == []
    assert "dependency failed, retrying batch" in inference.log_text()
    with platform_part(tmp_path / "ms", Platform.start_model_server, models_dir=models_dir, model_server_port=port):
        results = consume_all(broker, topics.DETECTIONS, expect=30, timeout=60)
        assert sorted(FrameAnalysis.FromString(m.value()).frame_sequence for m in results) == list(range(30))


def test_person_boxes_from_the_detector_reach_frame_analysis(broker, model_server, start_service, sample_assets, tmp_path):
    """A camera with a detector stage gets the people it finds as tracked persons, boxes normalised to the frame, placed in zones."""
    ped2 = UCSD_PED2 / "testing" / "frames" / "06" / "120.jpg"
    if not ped2.exists():
        pytest.skip(f"UCSD Ped2 is not at {UCSD_PED2}")
    raw = yaml.safe_load(sample_assets["store_config"].read_text())
    camera = raw["stores"][0]["cameras"][0]
    # Ped2's people are 25-45 px tall: tiles at the detector's size make them large enough.
    camera["stages"] = [{"kind": "detector", "model": "detector", "min_score": 0.4, "tiles": {"rows": 2, "cols": 2}}]
    camera["zones"].append({"id": "whole-view", "kind": "aisle", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]})
    config = tmp_path / "store.yaml"
    config.write_text(yaml.safe_dump(raw))
    start_service("inference", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_MODEL_SERVER": model_server, "SW_STORE_CONFIG": str(config)})
    image = cv2.imread(str(ped2))
    assert image is not None, f"{ped2} does not decode"
    producer = make_producer(broker)
    for seq in range(2):  # a track is reported once it was seen twice
        frame = Frame(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=1_800_000_000_000 + 100 * seq, sequence=seq,
                      jpeg=cv2.imencode(".jpg", image)[1].tobytes(), width=image.shape[1], height=image.shape[0])
        producer.produce(topics.FRAMES, key="cam-counter-1", value=frame.SerializeToString())
    producer.flush(10)
    messages = consume_all(broker, topics.DETECTIONS, expect=2, timeout=60)
    first, analysis = sorted((FrameAnalysis.FromString(m.value()) for m in messages), key=lambda a: a.frame_sequence)
    assert [m.name for m in analysis.models] == ["detector"]
    assert not first.persons and analysis.persons and all(p.score >= 0.4 and p.detected and p.track_id >= 1 for p in analysis.persons)
    whole = next(z for z in analysis.zones if z.zone_id == "whole-view")
    assert whole.person_present and whole.person_count == len(analysis.persons) and sorted(whole.track_ids) == sorted(p.track_id for p in analysis.persons)
    assert whole.max_dwell_ms == 100  # entered with the first frame, 100 ms earlier
    labelled = next(e for e in json.loads(LABELS.read_text())["frames"] if e.get("path") == "testing/frames/06/120.jpg")["persons"]
    height, width = image.shape[:2]

    def on_a_person(box) -> bool:
        cx, cy = (box.xmin + box.xmax) / 2 * width, (box.ymin + box.ymax) / 2 * height
        return any(x0 <= cx <= x1 and y0 <= cy <= y1 for x0, y0, x1, y1 in labelled)

    assert any(on_a_person(p.box) for p in analysis.persons)  # at least one box sits on a hand-labelled person
