"""Ingest's send queue (bounded, drop-oldest, fair), source diagnosis, config reload and rates."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
import yaml
from confluent_kafka import Producer

from services.ingest.camera import RateMeter
from services.ingest.sendqueue import Outgoing, SendQueue
from services.ingest.sources import SourceError, diagnose, open_capture, redact
from services.shared.storeconfig import StoreConfigError, StoreConfigWatcher, load_store_config


class RecordingProducer:
    """Stands in for confluent_kafka.Producer's produce/poll contract: acknowledges on poll when `up`.

    Not a Producer subclass (that would need a broker config): `as_producer` hands it to the code under test.
    """

    def __init__(self) -> None:
        self.up = False
        self.pending: list = []
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic, key, value, on_delivery):
        self.pending.append((key, value, on_delivery))

    def poll(self, timeout=0):
        if not self.up:
            time.sleep(min(timeout, 0.01))
            return 0
        done, self.pending = self.pending, []
        for key, value, callback in done:
            self.sent.append((key, value))
            callback(None, None)
        return len(done)

    def flush(self, timeout=0):
        self.poll(timeout)
        return len(self.pending)

    def as_producer(self) -> Producer:
        return cast(Producer, self)


Outcomes = dict[tuple[str, int], str | None]


def _item(camera: str, seq: int, outcomes: Outcomes) -> Outgoing:
    return Outgoing(camera, seq, f"{camera}#{seq}".encode(), lambda error: outcomes.__setitem__((camera, seq), error))


def test_a_full_camera_queue_drops_its_oldest_frame_and_says_so():
    queue, outcomes = SendQueue(RecordingProducer().as_producer(), "t", max_frames=3), Outcomes()
    for seq in range(5):
        queue.put(_item("cam-a", seq, outcomes))
    assert outcomes == {("cam-a", 0): "queue_full", ("cam-a", 1): "queue_full"}
    assert queue.depth("cam-a") == 3


def test_broker_outage_bounds_frames_in_flight_and_recovery_sends_the_newest():
    producer, outcomes = RecordingProducer(), Outcomes()
    queue, stop = SendQueue(producer.as_producer(), "t", max_frames=2), threading.Event()
    sender = threading.Thread(target=queue.run, args=(stop,))
    sender.start()
    for seq in range(10):
        queue.put(_item("cam-a", seq, outcomes))
        time.sleep(0.02)
    time.sleep(0.1)
    # Broker down: two frames handed to the producer, two queued, the rest dropped oldest first.
    assert len(producer.pending) == 2 and queue.depth("cam-a") == 4
    assert sorted(seq for (_, seq), why in outcomes.items() if why == "queue_full") == [2, 3, 4, 5, 6, 7]
    producer.up = True
    time.sleep(0.2)
    stop.set()
    sender.join(5)
    producer.flush(1)
    assert [value for _, value in producer.sent] == [b"cam-a#0", b"cam-a#1", b"cam-a#8", b"cam-a#9"]
    assert queue.depth("cam-a") == 0


def test_cameras_take_turns_so_a_busy_one_cannot_starve_the_others():
    producer, outcomes = RecordingProducer(), Outcomes()
    producer.up = True
    queue = SendQueue(producer.as_producer(), "t", max_frames=100)
    for seq in range(6):
        queue.put(_item("cam-busy", seq, outcomes))
    queue.put(_item("cam-quiet", 0, outcomes))
    taken = queue._take()
    assert [item.camera_id for item in taken[:2]] == ["cam-busy", "cam-quiet"] and len(taken) == 7


def test_a_file_camera_waits_for_room_instead_of_dropping():
    producer, outcomes = RecordingProducer(), Outcomes()
    producer.up = True
    queue, stop = SendQueue(producer.as_producer(), "t", max_frames=2), threading.Event()
    sender = threading.Thread(target=queue.run, args=(stop,))
    sender.start()
    camera_stop = threading.Event()
    for seq in range(50):
        queue.put(_item("cam-file", seq, outcomes), wait_unless=camera_stop)
    stop.set()
    sender.join(5)
    producer.flush(1)  # as IngestService.stop does after the sender returns
    assert [value for _, value in producer.sent] == [f"cam-file#{i}".encode() for i in range(50)]
    assert set(outcomes.values()) == {None}


def test_redact_hides_passwords_in_source_urls():
    assert redact("rtsp://admin:s3cr3t@10.0.0.5:554/stream1") == "rtsp://admin:***@10.0.0.5:554/stream1"
    assert redact("http://10.0.0.5/video") == "http://10.0.0.5/video"
    assert redact("file:/videos/a.mp4") == "file:/videos/a.mp4"


def test_file_and_device_problems_are_named(tmp_path):
    assert diagnose(str(tmp_path / "nope.mp4")) == "no such file"
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert diagnose(str(tmp_path / "empty.mp4")) == "the file is empty"
    (tmp_path / "junk.mp4").write_bytes(b"\x00garbage" * 500)
    assert diagnose(str(tmp_path / "junk.mp4")).startswith("not a video OpenCV can decode (4000 bytes")
    with pytest.raises(SourceError, match=r"camera cam-x: cannot open source device:9: no such device /dev/video9") as err:
        open_capture("cam-x", "device:9", 1, 1)
    assert not err.value.permanent  # a camera can be plugged in later: keep retrying
    with pytest.raises(SourceError, match="no such file") as err:
        open_capture("cam-x", str(tmp_path / "nope.mp4"), 1, 1)
    assert err.value.permanent


def test_network_problems_are_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert diagnose(f"rtsp://127.0.0.1:{closed}/cam").startswith(f"connection refused by 127.0.0.1:{closed}")
    assert diagnose("rtsp://no-such-camera.invalid/stream") == "host name 'no-such-camera.invalid' does not resolve"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/page":
                body = b"<html>login</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert diagnose(f"http://127.0.0.1:{port}/missing").startswith("HTTP 404")
        assert "content type is text/html, not a video stream" in diagnose(f"http://127.0.0.1:{port}/page")
    finally:
        server.shutdown()
        server.server_close()


def test_config_watcher_reloads_edits_and_keeps_the_running_config_on_a_bad_one(tmp_path):
    raw: dict[str, Any] = {"chain": "c", "stores": [{"id": "s", "timezone": "UTC", "cameras": [{"id": "cam-a", "source": "device:0"}]}]}
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(raw))
    watcher = StoreConfigWatcher(path, load_store_config(path))
    assert watcher.poll(force=True) is None  # unchanged
    raw["stores"][0]["cameras"].append({"id": "cam-b", "source": "device:1", "privacy_masks": [[[0, 0], [0.2, 0], [0.2, 0.2]]]})
    path.write_text(yaml.safe_dump(raw))
    changed = watcher.poll(force=True)
    assert changed is not None, watcher.error
    assert [c.id for c in changed.stores[0].cameras] == ["cam-a", "cam-b"]
    raw["stores"][0]["cameras"][1]["privacy_masks"] = [[[0, 0], [1.5, 0], [0.2, 0.2]]]
    path.write_text(yaml.safe_dump(raw))
    assert watcher.poll(force=True) is None
    assert "stores.0.cameras.1.privacy_masks.0" in watcher.error and "outside the frame" in watcher.error
    assert [c.id for c in watcher.config.stores[0].cameras] == ["cam-a", "cam-b"]


def test_config_watcher_looks_at_the_file_only_when_due_or_forced(tmp_path):
    raw: dict[str, Any] = {"chain": "c", "stores": [{"id": "s", "timezone": "UTC", "cameras": [{"id": "cam-a", "source": "device:0"}]}]}
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(raw))
    watcher = StoreConfigWatcher(path, load_store_config(path), interval_s=60)
    raw["stores"][0]["cameras"][0]["fps"] = 5
    path.write_text(yaml.safe_dump(raw))
    assert watcher.poll() is None  # not due for a minute
    reloaded = watcher.poll(force=True)  # SIGHUP, or a camera inference does not know
    assert reloaded is not None and reloaded.stores[0].cameras[0].fps == 5


def test_rate_meter_counts_events_per_second_over_its_window():
    meter = RateMeter(window_s=5)
    for i in range(100):
        meter.tick(now=1000 + i * 0.1)  # 10 per second for 10 s
    assert meter.rate(now=1010) == pytest.approx(10, abs=0.3)
    assert meter.rate(now=1030) == 0.0  # a stalled source reads 0


def test_passwords_are_hidden_even_when_not_percent_encoded():
    assert redact("rtsp://admin:se/cret@10.0.0.5/s") == "rtsp://admin:***@10.0.0.5/s"
    assert redact("rtsp://admin:p@ss@10.0.0.5/s") == "rtsp://admin:***@10.0.0.5/s"
    assert redact("rtsp://:pw@10.0.0.5/s") == "rtsp://***@10.0.0.5/s"


def test_unparseable_urls_and_undecodable_edits_are_config_errors(tmp_path):
    raw: dict[str, Any] = {"chain": "c", "stores": [{"id": "s", "timezone": "UTC", "cameras": [{"id": "cam-a", "source": "rtsp://admin:se/cret@10.0.0.5/s"}]}]}
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StoreConfigError, match=r"stores\.0\.cameras\.0\.source.*percent-encoded") as err:
        load_store_config(path)
    assert "cret" not in str(err.value)
    raw["stores"][0]["cameras"][0]["source"] = "device:0"
    path.write_text(yaml.safe_dump(raw))
    watcher = StoreConfigWatcher(path, load_store_config(path))
    path.write_bytes(path.read_bytes().replace(b"chain: c", b"chain: caf\xe9"))  # saved as Latin-1
    assert watcher.poll(force=True) is None and "not UTF-8" in watcher.error
    path.write_text("1: 2\nchain: c\n")
    assert watcher.poll(force=True) is None and "keys must be names" in watcher.error


def test_config_changes_restart_only_what_ingest_uses_and_numbering_goes_on(tmp_path):
    from services.ingest.camera import IngestOptions
    from services.ingest.service import IngestService
    from services.shared.storeconfig import StoreConfig

    def config(*cameras):
        return StoreConfig(chain="c", stores=[{"id": "s", "timezone": "UTC", "cameras": list(cameras)}])

    zone = {"id": "z", "kind": "aisle", "polygon": [[0, 0], [1, 0], [1, 1]]}
    service = IngestService(RecordingProducer().as_producer(), IngestOptions(min_reconnect_backoff_s=5)).start(config({"id": "cam-a", "source": "device:9"}))
    try:
        assert service.apply(config({"id": "cam-a", "source": "device:9", "zones": [zone]})) == {"added": [], "changed": [], "removed": []}
        assert service.apply(config({"id": "cam-a", "source": "device:9", "fps": 5})) == {"added": [], "changed": ["cam-a"], "removed": []}
        service._stats["cam-a"].next_sequence = 42  # as if 42 frames had been sent
        service.apply(config({"id": "cam-b", "source": "device:8"}))
        assert "cam-a" not in service.cameras()
        service.apply(config({"id": "cam-a", "source": "device:9"}, {"id": "cam-b", "source": "device:8"}))
        assert service.cameras()["cam-a"]["next_sequence"] == 42
    finally:
        service.stop()
