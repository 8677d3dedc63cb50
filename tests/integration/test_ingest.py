"""Ingest over Apache Kafka, with real camera sources on loopback: a video file, GStreamer's RTSP
server and an HTTP MJPEG server. Sources are killed and restarted; the store config is edited live."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml

from devplatform.launcher import Platform, free_port
from services.shared import topics
from services.shared.contracts.frame_pb2 import Frame
from tests.conftest import consume_all, platform_part, wait_for

pytestmark = pytest.mark.integration

FAST_RECONNECT = {"SW_INGEST_RECONNECT_MIN_S": "0.5", "SW_INGEST_RECONNECT_MAX_S": "2", "SW_INGEST_CONFIG_POLL_S": "0.5"}


def _camera(camera_id: str, source: str, **fields) -> dict:
    return {"id": camera_id, "source": source, "fps": 10, "width": 320, "height": 240, **fields}


def _write_config(path: Path, cameras: list[dict]) -> Path:
    raw = {"chain": "test-chain", "stores": [{"id": "store-t", "timezone": "Europe/London", "cameras": cameras}]}
    path.write_text(yaml.safe_dump(raw))
    return path


def _cameras(ingest) -> dict:
    return httpx.get(ingest.http + "/cameras").json()["cameras"]


def _frames(broker: str) -> dict[str, list[Frame]]:
    by_camera: dict[str, list[Frame]] = defaultdict(list)
    for message in consume_all(broker, topics.FRAMES, timeout=30, idle=2):
        frame = Frame.FromString(message.value())
        assert message.key().decode() == frame.camera_id
        by_camera[frame.camera_id].append(frame)
    return by_camera


def _fps_between(frames: list[Frame], start_ms: float, end_ms: float) -> float:
    return sum(start_ms <= f.capture_time_ms < end_ms for f in frames) / ((end_ms - start_ms) / 1000)


def test_file_camera_publishes_every_sampled_frame_in_order(broker, start_service, sample_assets, tmp_path):
    raw = yaml.safe_load(sample_assets["store_config"].read_text())
    raw["stores"][0]["cameras"][0]["motion"] = {"enabled": False}
    config = tmp_path / "store.yaml"
    config.write_text(yaml.safe_dump(raw))
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_INGEST_PACE": "fast", "SW_STORE_CONFIG": str(config)})
    messages = consume_all(broker, topics.FRAMES, expect=320, timeout=60)
    frames = [Frame.FromString(m.value()) for m in messages]
    assert [f.sequence for f in frames] == list(range(320))
    assert all(m.key() == b"cam-counter-1" for m in messages)
    steps = np.diff([f.capture_time_ms for f in frames])
    assert steps.min() >= 99 and steps.max() <= 101  # the file's own 10 fps clock
    image = cv2.imdecode(np.frombuffer(frames[80].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (240, 320, 3) and (frames[80].width, frames[80].height) == (320, 240)
    assert frames[0].motion_score == 1.0 and 0 <= frames[200].motion_score < 0.2
    status = wait_for(lambda: (c := _cameras(ingest))["cam-counter-1"]["state"] == "finished" and c, 20, "finished")
    assert status["cam-counter-1"]["frames"] == 320 and status["cam-counter-1"]["dropped"] == {}


def test_motion_gate_sends_motion_and_keyframes_only(broker, start_service):
    """The sample store's default: frames with motion, plus one every 2 s of a static scene."""
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_INGEST_PACE": "fast"})
    def played():
        c = _cameras(ingest)["cam-counter-1"]
        return c["state"] == "finished" and c["frames_published"] + c["frames_gated"] == c["frames"] and c

    camera = wait_for(played, 60, "clip played and delivered")
    frames = [Frame.FromString(m.value()) for m in consume_all(broker, topics.FRAMES, expect=camera["frames_published"], timeout=30)]
    assert camera["frames"] == 320 and camera["frames_gated"] > 100, camera
    assert len(frames) == camera["frames_published"] == 320 - camera["frames_gated"]
    # Sequence numbers count sent frames, so a gap would mean a loss; none here.
    assert [f.sequence for f in frames] == list(range(len(frames)))
    # A static stretch still sends a keyframe at least every 2 s (the correlator's coverage needs it),
    # and between them a heartbeat (no image) every 0.5 s, so event time moves on downstream.
    images = [f for f in frames if not f.heartbeat]
    assert np.diff([f.capture_time_ms for f in images]).max() <= 2000 and np.diff([f.capture_time_ms for f in frames]).max() <= 500
    assert max(f.motion_score for f in frames[1:]) > 0.003 and camera["keyframes"] >= 2
    assert camera["heartbeats"] == len(frames) - len(images) > 0 and not any(f.jpeg for f in frames if f.heartbeat)
    metrics = httpx.get(ingest.http + "/metrics").text
    assert 'sw_ingest_frames_gated_total{camera="cam-counter-1"}' in metrics
    assert 'sw_ingest_camera_state{camera="cam-counter-1",state="finished"} 1.0' in metrics


def test_each_bad_source_gets_a_clear_error_and_the_good_one_streams(broker, start_service, camera_servers, tmp_path):
    mjpeg_port, rtsp_port, closed_port = free_port(), free_port(), free_port()
    camera_servers.mjpeg(mjpeg_port)
    camera_servers.rtsp(rtsp_port)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    config = _write_config(tmp_path / "store.yaml", [
        _camera("cam-good", f"http://127.0.0.1:{mjpeg_port}/video", motion={"enabled": False}),
        _camera("cam-corrupt", f"file:{corrupt}"),
        _camera("cam-missing-file", f"file:{tmp_path}/nope.mp4"),
        _camera("cam-no-device", "device:7"),
        _camera("cam-wrong-port", f"rtsp://127.0.0.1:{closed_port}/cam"),
        _camera("cam-wrong-path", f"rtsp://admin:secret@127.0.0.1:{rtsp_port}/nope"),
        _camera("cam-wrong-http", f"http://127.0.0.1:{mjpeg_port}/snapshot"),
    ])
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_STORE_CONFIG": str(config), **FAST_RECONNECT})
    expected = {
        "cam-corrupt": ("failed", "not a video OpenCV can decode"),
        "cam-missing-file": ("failed", "no such file"),
        "cam-no-device": ("reconnecting", "no such device /dev/video7"),
        "cam-wrong-port": ("reconnecting", f"connection refused by 127.0.0.1:{closed_port}"),
        "cam-wrong-path": ("reconnecting", "RTSP 404 Not Found: the server has no stream at this path"),
        "cam-wrong-http": ("reconnecting", "HTTP 404"),
    }

    def settled():
        cameras = _cameras(ingest)
        return all(cameras[c]["state"] == state and why in cameras[c]["last_error"] for c, (state, why) in expected.items()) and cameras

    cameras = wait_for(settled, 30, "a clear error for every bad camera", ingest)
    for camera_id in expected:
        assert cameras[camera_id]["last_error"].startswith(f"camera {camera_id}: cannot open source ")
    # The password in a source URL never shows, not in errors, not in the status.
    assert "secret" not in str(cameras) and "admin:***@" in cameras["cam-wrong-path"]["source"]
    assert "secret" not in ingest.log_text()
    good = wait_for(lambda: (c := _cameras(ingest)["cam-good"])["frames_published"] >= 30 and c, 20, "good camera frames")
    assert good["state"] == "connected" and good["fps"] >= 8


def test_live_cameras_reconnect_and_the_others_never_pause(broker, start_service, camera_servers, sample_assets, tmp_path):
    rtsp_port, mjpeg_port = free_port(), free_port()
    rtsp = camera_servers.rtsp(rtsp_port)
    mjpeg = camera_servers.mjpeg(mjpeg_port)
    no_gate = {"motion": {"enabled": False}}
    config = _write_config(tmp_path / "store.yaml", [
        _camera("cam-rtsp", f"rtsp://127.0.0.1:{rtsp_port}/cam", **no_gate),
        _camera("cam-mjpeg", f"http://127.0.0.1:{mjpeg_port}/video", **no_gate),
        _camera("cam-file", f"file:{sample_assets['clip']}", **no_gate),
    ])
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_STORE_CONFIG": str(config), "SW_INGEST_LOOP_FILES": "true",
                                      "SW_INGEST_READ_TIMEOUT_S": "2", **FAST_RECONNECT})
    wait_for(lambda: all(c["state"] == "connected" and c["frames"] > 10 for c in _cameras(ingest).values()), 30, "all cameras streaming", ingest)

    outages = {}
    for camera_id, server, restart in (("cam-rtsp", rtsp, lambda: camera_servers.rtsp(rtsp_port)),
                                       ("cam-mjpeg", mjpeg, lambda: camera_servers.mjpeg(mjpeg_port))):
        down_ms = time.time() * 1000
        server.popen.kill()  # the camera's process dies, no goodbye
        server.popen.wait()
        lost = wait_for(lambda: (c := _cameras(ingest)[camera_id])["state"] == "reconnecting" and c, 15, f"{camera_id} noticed the drop", ingest)
        assert lost["last_error"].startswith(f"camera {camera_id}: ")
        time.sleep(3)  # stays down a while, retried with backoff
        restart()
        back = wait_for(lambda: (c := _cameras(ingest)[camera_id])["state"] == "connected" and c, 20, f"{camera_id} reconnected", ingest)
        up_ms = time.time() * 1000
        outages[camera_id] = (down_ms, up_ms)
        assert back["reconnects"] >= 1
        wait_for(lambda: _cameras(ingest)[camera_id]["frames"] > back["frames"] + 10, 10, f"{camera_id} streaming again", ingest)

    frames = _frames(broker)
    for camera_id, (down_ms, up_ms) in outages.items():
        # While one camera was down, every other kept its 10 fps.
        for other in ("cam-rtsp", "cam-mjpeg", "cam-file"):
            if other != camera_id:
                fps = _fps_between(frames[other], down_ms, up_ms)
                assert fps >= 8, f"{other} ran at {fps:.1f} fps while {camera_id} was down"
        resumed = [f for f in frames[camera_id] if f.capture_time_ms > up_ms]
        assert len(resumed) >= 10, f"{camera_id} did not resume"
    for camera_id, camera_frames in frames.items():
        # One stream per camera across reconnects: sequence numbers go on, nothing lost in ingest.
        assert [f.sequence for f in camera_frames] == list(range(len(camera_frames))), camera_id
    status = _cameras(ingest)
    assert status["cam-rtsp"]["gaps"] >= 1 and status["cam-file"]["dropped"] == {}


def test_cameras_are_added_changed_and_removed_by_editing_the_config(broker, start_service, camera_servers, tmp_path):
    mjpeg_port = free_port()
    camera_servers.mjpeg(mjpeg_port)
    source = f"http://127.0.0.1:{mjpeg_port}/video"
    config = _write_config(tmp_path / "store.yaml", [_camera("cam-a", source, motion={"enabled": False})])
    ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_STORE_CONFIG": str(config), **FAST_RECONNECT})
    wait_for(lambda: _cameras(ingest)["cam-a"]["frames"] > 5, 20, "cam-a streaming", ingest)
    pid = ingest.popen.pid

    _write_config(config, [_camera("cam-a", source, motion={"enabled": False}), _camera("cam-b", source, motion={"enabled": False})])
    wait_for(lambda: _cameras(ingest).get("cam-b", {}).get("frames", 0) > 5, 20, "cam-b added", ingest)

    changed_ms = time.time() * 1000
    _write_config(config, [_camera("cam-a", source, motion={"enabled": False}), _camera("cam-b", source, width=160, height=120, motion={"enabled": False})])
    time.sleep(3)
    _write_config(config, [_camera("cam-b", source, width=160, height=120, motion={"enabled": False})])
    wait_for(lambda: "cam-a" not in _cameras(ingest), 20, "cam-a removed", ingest)
    removed_ms = time.time() * 1000

    broken = config.read_text().replace("fps: 10", "fps: -1")
    config.write_text(broken)
    error = wait_for(lambda: httpx.get(ingest.http + "/cameras").json()["config_error"], 10, "the bad edit reported", ingest)
    assert "stores.0.cameras.0.fps" in error
    time.sleep(2)
    assert _cameras(ingest)["cam-b"]["state"] == "connected"  # the running config stays in force
    assert ingest.popen.pid == pid and ingest.popen.poll() is None

    frames = _frames(broker)
    b = frames["cam-b"]
    assert {(f.width, f.height) for f in b if f.capture_time_ms > changed_ms + 2500} == {(160, 120)}
    assert [f.sequence for f in b] == list(range(len(b)))  # the change did not restart its numbering
    assert not [f for f in frames["cam-a"] if f.capture_time_ms > removed_ms + 500]


def test_broker_outage_drops_oldest_frames_and_capture_keeps_its_pace(start_service, camera_servers, tmp_path):
    mjpeg_port = free_port()
    camera_servers.mjpeg(mjpeg_port)
    config = _write_config(tmp_path / "store.yaml", [_camera("cam-a", f"http://127.0.0.1:{mjpeg_port}/video", motion={"enabled": False})])
    with platform_part(tmp_path / "kafka", Platform.start_broker) as platform:
        ingest = start_service("ingest", {"SW_KAFKA_BOOTSTRAP_SERVERS": platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"], "SW_STORE_CONFIG": str(config),
                                          "SW_INGEST_SEND_QUEUE_FRAMES": "5", "SW_INGEST_DRAIN_S": "1"})
        wait_for(lambda: _cameras(ingest)["cam-a"]["frames_published"] >= 5, 30, "frames acknowledged by the broker", ingest)
        platform.kill_component("broker")
        before = _cameras(ingest)["cam-a"]
        camera = wait_for(lambda: (c := _cameras(ingest)["cam-a"])["frames"] >= before["frames"] + 50 and c, 30, "50 frames captured in the outage", ingest)
    # 5 frames handed to the producer, 5 queued; every older one dropped and counted, none blocking.
    assert camera["state"] == "connected" and camera["fps"] >= 8, (before, camera)
    assert camera["send_queue"] == 10 and camera["frames_published"] <= before["frames_published"] + 5, (before, camera)
    dropped = camera["dropped"]["queue_full"] - before["dropped"].get("queue_full", 0)
    assert dropped >= camera["frames"] - before["frames"] - 10, (before, camera)
    assert 'sw_ingest_frames_dropped_total{camera="cam-a",reason="queue_full"}' in httpx.get(ingest.http + "/metrics").text
