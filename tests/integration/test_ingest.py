"""Ingest over the dev broker: a video file becomes ordered, timestamped JPEG Frames."""

import httpx
import numpy as np
import pytest
import yaml
import cv2

from services.shared import topics
from services.shared.contracts.frame_pb2 import Frame
from tests.conftest import consume_all, wait_for

pytestmark = pytest.mark.integration


def test_file_camera_publishes_every_sampled_frame_in_order(broker, start_service):
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_INGEST_PACE": "fast"})
    messages = consume_all(broker, topics.FRAMES, expect=320, timeout=60)
    frames = [Frame.FromString(m.value()) for m in messages]
    assert [f.sequence for f in frames] == list(range(320))
    assert all(m.key() == b"cam-counter-1" for m in messages)
    steps = np.diff([f.capture_time_ms for f in frames])
    assert steps.min() >= 99 and steps.max() <= 101  # the file's own 10 fps clock
    image = cv2.imdecode(np.frombuffer(frames[80].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3) and (frames[80].width, frames[80].height) == (320, 240)
    assert frames[0].motion_score == 1.0 and 0 <= frames[200].motion_score < 0.2
    status = wait_for(lambda: (s := httpx.get(ingest.http + "/readyz").json())["cameras"]["cam-counter-1"]["state"] == "finished" and s, 20, "finished")
    assert status["cameras"]["cam-counter-1"]["frames"] == 320


def test_missing_file_is_a_clear_per_camera_error(broker, start_service, sample_assets, tmp_path):
    raw = yaml.safe_load(sample_assets["store_config"].read_text())
    broken = {**raw["stores"][0]["cameras"][0], "id": "cam-missing", "source": f"file:{tmp_path}/nope.mp4", "zones": []}
    raw["stores"][0]["cameras"].append(broken)
    config = tmp_path / "store.yaml"
    config.write_text(yaml.safe_dump(raw))
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_INGEST_PACE": "fast", "SW_STORE_CONFIG": str(config)})
    cameras = wait_for(lambda: (c := httpx.get(ingest.http + "/readyz").json()["cameras"])["cam-missing"]["state"] == "failed" and c, 20, "failed camera")
    assert "cam-missing: cannot open source" in cameras["cam-missing"]["last_error"]
    # The good camera is not held up by the broken one.
    assert len(consume_all(broker, topics.FRAMES, expect=320, timeout=60)) == 320
