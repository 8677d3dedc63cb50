"""One camera: read with OpenCV, sample to the target fps, resize, score motion, publish JPEG Frames.

Each camera runs in its own thread, so one slow or broken camera never holds up another.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter, Gauge

from services.shared import topics
from services.shared.contracts.frame_pb2 import Frame
from services.shared.serde import encode
from services.shared.storeconfig import Camera

log = logging.getLogger(__name__)

FRAMES_PUBLISHED = Counter("sw_ingest_frames_published_total", "Frames sent to Kafka", ["camera"])
FRAMES_FAILED = Counter("sw_ingest_frames_failed_total", "Frames the broker did not acknowledge", ["camera"])
CAMERA_UP = Gauge("sw_ingest_camera_connected", "1 while the camera source is open", ["camera"])

Pace = Literal["realtime", "fast"]
# A pixel counts as moving when it changes by more than this between sampled frames (0..255).
MOTION_PIXEL_DELTA = 25


def motion_score(previous: np.ndarray | None, current: np.ndarray) -> float:
    """Fraction of pixels that changed noticeably since the previous sampled frame."""
    if previous is None:
        return 1.0
    diff = cv2.absdiff(previous, current)
    return float(np.count_nonzero(diff > MOTION_PIXEL_DELTA)) / diff.size


@dataclass
class CameraStatus:
    state: Literal["starting", "connected", "reconnecting", "finished", "failed"] = "starting"
    frames: int = 0
    last_error: str = ""
    last_frame_wall_ms: int = 0


@dataclass
class CameraWorker:
    store_id: str
    camera: Camera
    source: str
    producer: Producer
    stop: threading.Event
    pace: Pace = "realtime"
    loop_file: bool = False
    topic: str = topics.FRAMES
    max_reconnect_backoff_s: float = 30.0
    status: CameraStatus = field(default_factory=CameraStatus)
    sequence: int = 0

    @property
    def is_file(self) -> bool:
        return not self.source.startswith(("rtsp://", "http://", "https://", "device:"))

    def _open(self) -> cv2.VideoCapture:
        target: str | int = int(self.source.split(":", 1)[1]) if self.source.startswith("device:") else self.source
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise ConnectionError(f"camera {self.camera.id}: cannot open source {self.source}")
        return cap

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                cap = self._open()
            except ConnectionError as exc:
                self.status.last_error = str(exc)
                if self.is_file:
                    self.status.state = "failed"
                    log.error("camera failed", extra={"camera": self.camera.id, "error": str(exc)})
                    return
                backoff = self._wait_before_reconnect(str(exc), backoff)
                continue
            self.status.state = "connected"
            CAMERA_UP.labels(self.camera.id).set(1)
            started = time.monotonic()
            try:
                self._stream(cap)
                error = ""
            except Exception as exc:  # a broken stream or frame must not end the camera thread
                error = f"camera {self.camera.id}: stream failed ({type(exc).__name__}: {exc})"
                log.exception("camera stream failed", extra={"camera": self.camera.id})
            finally:
                cap.release()
                CAMERA_UP.labels(self.camera.id).set(0)
            if self.is_file and not self.loop_file:
                self.status.state = "failed" if error else "finished"
                self.status.last_error = error
                log.info("file source ended", extra={"camera": self.camera.id, "frames": self.status.frames, "error": error})
                return
            if not self.is_file and not self.stop.is_set():
                # A stream that keeps dying right after it opens must not reconnect in a tight loop.
                backoff = 1.0 if time.monotonic() - started > 30 else backoff
                backoff = self._wait_before_reconnect(error or f"camera {self.camera.id}: stream ended", backoff)
        self.producer.flush(10)

    def _wait_before_reconnect(self, error: str, backoff: float) -> float:
        """Exponential backoff with jitter, so cameras that dropped together do not retry in step."""
        self.status.state = "reconnecting"
        self.status.last_error = error
        delay = backoff * random.uniform(0.8, 1.2)
        log.warning("camera unreachable, retrying", extra={"camera": self.camera.id, "error": error, "retry_in_s": round(delay, 2)})
        self.stop.wait(delay)
        return min(backoff * 2, self.max_reconnect_backoff_s)

    def _stream(self, cap: cv2.VideoCapture) -> None:
        native_fps = cap.get(cv2.CAP_PROP_FPS) or self.camera.fps
        step_ms = 1000.0 / self.camera.fps
        anchor_ms = time.time() * 1000.0
        next_due_ms = 0.0
        previous_gray = None
        index = 0
        while not self.stop.is_set():
            ok, image = cap.read()
            if not ok:
                return
            # Files carry their own clock; live sources are stamped when read.
            offset_ms = index * 1000.0 / native_fps if self.is_file else time.time() * 1000.0 - anchor_ms
            index += 1
            if offset_ms + 1e-6 < next_due_ms:
                continue
            next_due_ms += step_ms
            if self.is_file and self.pace == "realtime":
                delay = (anchor_ms + offset_ms) / 1000.0 - time.time()
                if delay > 0 and self.stop.wait(delay):
                    return
            previous_gray = self._publish(image, int(anchor_ms + offset_ms), previous_gray)

    def _publish(self, image: np.ndarray, capture_ms: int, previous_gray: np.ndarray | None) -> np.ndarray:
        """Encode and send one frame; returns its small grey copy for the next motion score."""
        if image.shape[1] != self.camera.width or image.shape[0] != self.camera.height:
            image = cv2.resize(image, (self.camera.width, self.camera.height), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(cv2.resize(image, (80, 60), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.camera.jpeg_quality])
        if not ok:
            log.warning("JPEG encode failed", extra={"camera": self.camera.id})
            return gray
        frame = Frame(
            store_id=self.store_id,
            camera_id=self.camera.id,
            capture_time_ms=capture_ms,
            sequence=self.sequence,
            jpeg=jpeg.tobytes(),
            width=image.shape[1],
            height=image.shape[0],
            motion_score=motion_score(previous_gray, gray),
        )
        self.sequence += 1
        camera_id = self.camera.id

        def on_delivery(err, _msg) -> None:
            (FRAMES_FAILED if err else FRAMES_PUBLISHED).labels(camera_id).inc()

        while True:
            try:
                self.producer.produce(self.topic, key=camera_id, value=encode(frame), on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:  # e.g. a frame over message.max.bytes: count it, keep streaming
                FRAMES_FAILED.labels(camera_id).inc()
                log.warning("frame not sent", extra={"camera": camera_id, "sequence": frame.sequence, "error": str(exc)})
                break
        self.producer.poll(0)
        self.status.frames += 1
        self.status.last_frame_wall_ms = int(time.time() * 1000)
        return gray
