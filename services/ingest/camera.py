"""One camera: read with OpenCV, sample to the target fps, process, queue JPEG Frames for Kafka.

Each camera runs in its own thread and never waits on the network to send, so one slow, broken or
reconnecting camera never holds up another (OpenCV releases the GIL while it decodes, resizes and
encodes). Live sources reconnect with exponential backoff and jitter; files end or loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from services.ingest.frames import FrameProcessor, FrameTooLarge, Heartbeat
from services.ingest.sendqueue import Outgoing, SendQueue
from services.ingest.sources import SourceError, open_capture, redact, source_kind
from services.shared.backoff import Backoff
from services.shared.boundedqueue import DropOldestQueue
from services.shared.contracts.frame_pb2 import Frame
from services.shared.serde import encode
from services.shared.storeconfig import Camera

log = logging.getLogger(__name__)

Pace = Literal["realtime", "fast"]
CameraState = Literal["starting", "connected", "reconnecting", "finished", "failed", "stopped"]
CAMERA_STATES: tuple[CameraState, ...] = ("starting", "connected", "reconnecting", "finished", "failed", "stopped")
# A live source silent for longer than this many frame intervals (and at least MIN_GAP_S) is a gap.
GAP_FRAME_INTERVALS = 3
MIN_GAP_S = 0.25
# Consecutive frames that fail to decode before the stream is treated as broken and reopened.
MAX_BAD_FRAMES = 25


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._first: float | None = None
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._first = now if self._first is None else self._first

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            if self._first is None:
                return 0.0
            # Over the window, or over the time since the first event while that is shorter.
            return len(self._times) / max(min(self.window_s, now - self._first), 1.0)


# Sampled frames from a camera's reader thread to its processing thread (two threads per camera
# let decoding (FFmpeg) and resize/motion/JPEG run on two cores at once): two at most.
Sampled = tuple[np.ndarray, int, int]
HANDOFF_FRAMES = 2


@dataclass
class CameraStats:
    """What an operator needs to know about one camera; kept across reconnects and config changes.

    The reader, processing and sender threads write it and the HTTP thread reads it: every change
    goes through a method that holds the lock, so no count is lost and a snapshot is consistent.
    """

    store_id: str
    source: str
    state: CameraState = "starting"
    last_error: str = ""
    connected_since_ms: int = 0
    reconnects: int = 0
    # Frames decoded from the source, kept at the target fps, held back by the motion gate, queued.
    # A sampled frame is either gated (nothing sent) or published: its image, or a heartbeat in its place.
    frames_read: int = 0
    frames_sampled: int = 0
    frames_gated: int = 0
    keyframes: int = 0
    heartbeats: int = 0
    frames_published: int = 0
    bytes_published: int = 0
    dropped: Counter = field(default_factory=Counter)
    gaps: int = 0
    gap_seconds: float = 0.0
    faces_blurred: int = 0
    # Wall time at which the last frame was read from the source (0: never).
    last_frame_wall_ms: int = 0
    last_read_monotonic: float = 0.0
    next_sequence: int = 0
    sampled_rate: RateMeter = field(default_factory=RateMeter)
    sent_rate: RateMeter = field(default_factory=RateMeter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set_state(self, state: CameraState, error: str | None = None, reconnect: bool = False) -> None:
        with self._lock:
            self.state = state
            if error is not None:
                self.last_error = error
            if state == "connected":
                self.connected_since_ms = int(time.time() * 1000)
            self.reconnects += reconnect

    def end(self, finished: bool, stopped: bool) -> None:
        """The camera's thread is over: a file read to its end, or stopped (a failure stays a failure)."""
        with self._lock:
            if self.state == "connected":
                self.state = "finished" if finished else "stopped"
            elif stopped and self.state != "failed":
                self.state = "stopped"

    def frame_read(self, now: float, wall_ms: int, gap_s: float | None) -> None:
        """One frame from the source; a silence over `gap_s` before it (live sources) is a gap."""
        with self._lock:
            self.frames_read += 1
            self.last_frame_wall_ms = wall_ms
            # Since the last frame of any connection of this camera, so an outage counts as a gap too.
            since_last = now - (self.last_read_monotonic or now)
            if gap_s is not None and since_last > gap_s:
                self.gaps += 1
                self.gap_seconds += since_last
            self.last_read_monotonic = now

    def frame_sampled(self) -> None:
        with self._lock:
            self.frames_sampled += 1
        self.sampled_rate.tick()

    def frame_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def frame_gated(self) -> None:
        with self._lock:
            self.frames_gated += 1

    def frame_queued(self, heartbeat: bool, keyframe: bool = False, faces_blurred: int = 0) -> int:
        """A frame (or a heartbeat in its place) handed to the send queue; returns its sequence number."""
        with self._lock:
            sequence = self.next_sequence
            self.next_sequence += 1
            self.heartbeats += heartbeat
            self.keyframes += keyframe
            self.faces_blurred += faces_blurred
        if not heartbeat:
            self.sent_rate.tick()
        return sequence

    def frame_done(self, size: int, error: str | None) -> None:
        """Delivery outcome of one queued frame (called from the sender thread)."""
        with self._lock:
            if error is None:
                self.frames_published += 1
                self.bytes_published += size
            else:
                self.dropped[error.split(":", 1)[0]] += 1

    def snapshot(self, queue_depth: int) -> dict:
        now_ms = time.time() * 1000
        with self._lock:
            return {
                "store_id": self.store_id,
                "source": redact(self.source),
                "state": self.state,
                "last_error": self.last_error,
                "fps": round(self.sampled_rate.rate(), 2),
                "sent_fps": round(self.sent_rate.rate(), 2),
                "last_frame_age_s": round((now_ms - self.last_frame_wall_ms) / 1000, 2) if self.last_frame_wall_ms else None,
                "connected_since_ms": self.connected_since_ms,
                "reconnects": self.reconnects,
                "frames": self.frames_sampled,
                "frames_read": self.frames_read,
                "frames_gated": self.frames_gated,
                "keyframes": self.keyframes,
                "heartbeats": self.heartbeats,
                "frames_published": self.frames_published,
                "bytes_published": self.bytes_published,
                "dropped": dict(self.dropped),
                "send_queue": queue_depth,
                "gaps": self.gaps,
                "gap_seconds": round(self.gap_seconds, 2),
                "faces_blurred": self.faces_blurred,
                "next_sequence": self.next_sequence,
            }


@dataclass(frozen=True)
class IngestOptions:
    """How this process reads and sends every camera (from the SW_INGEST_* settings)."""

    pace: Pace = "realtime"
    loop_files: bool = False
    # Only these camera ids; empty: every camera of the store config.
    cameras: frozenset[str] = frozenset()
    send_queue_frames: int = 30
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    min_reconnect_backoff_s: float = 1.0
    max_reconnect_backoff_s: float = 30.0
    drain_s: float = 5.0


@dataclass
class CameraWorker:
    store_id: str
    camera: Camera
    source: str
    queue: SendQueue
    stats: CameraStats
    options: IngestOptions = IngestOptions()
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def is_file(self) -> bool:
        return source_kind(self.source) == "file"

    def run(self) -> None:
        try:
            processor = FrameProcessor(self.camera)
        except (RuntimeError, cv2.error) as exc:  # e.g. blur_faces with an OpenCV build lacking the cascade
            self._fail(f"camera {self.camera.id}: {exc}")
            return
        handoff: DropOldestQueue[Sampled] = DropOldestQueue(HANDOFF_FRAMES)
        processing = threading.Thread(target=self._process, args=(processor, handoff), name=f"process-{self.camera.id}", daemon=True)
        processing.start()
        try:
            self._read(handoff)
        finally:
            handoff.close()
            processing.join()
        self.stats.end(finished=self.is_file and not self.stop.is_set(), stopped=self.stop.is_set())

    def _process(self, processor: FrameProcessor, handoff: DropOldestQueue[Sampled]) -> None:
        while (item := handoff.get()) is not None:
            try:
                self._publish(processor, *item)
            except Exception:  # one bad frame must not end the camera
                self.stats.frame_dropped("processing_error")
                log.exception("frame processing failed", extra={"camera": self.camera.id})

    def _read(self, handoff: DropOldestQueue[Sampled]) -> None:
        """Open, read, reconnect; ends when stopped, on a permanent failure, or at the end of a file."""
        # With jitter, so cameras that dropped together do not retry in step.
        backoff = Backoff(self.options.min_reconnect_backoff_s, self.options.max_reconnect_backoff_s, jitter=True)
        while not self.stop.is_set():
            try:
                cap = open_capture(self.camera.id, self.source, self.options.open_timeout_s, self.options.read_timeout_s)
            except SourceError as exc:
                if exc.permanent:
                    self._fail(str(exc))
                    return
                self._wait_before_reconnect(str(exc), backoff)
                continue
            except Exception as exc:  # never let a surprise end the camera thread; no text that may hold a password
                log.exception("opening the source failed unexpectedly", extra={"camera": self.camera.id})
                error = f"camera {self.camera.id}: cannot open source {redact(self.source)}: {type(exc).__name__}"
                self._wait_before_reconnect(error, backoff)
                continue
            if self.stop.is_set():  # stopped while the open was under way
                cap.release()
                break
            self.stats.set_state("connected")
            log.info("camera connected", extra={"camera": self.camera.id, "source": redact(self.source)})
            started = time.monotonic()
            try:
                error = self._stream(cap, handoff)
            except Exception as exc:  # a broken stream or frame must not end the camera thread
                error = f"camera {self.camera.id}: stream failed ({type(exc).__name__}: {exc})"
                log.exception("camera stream failed", extra={"camera": self.camera.id})
            finally:
                cap.release()
            if self.stop.is_set():
                break
            if self.is_file and not self.options.loop_files:
                if error:
                    self._fail(error)
                else:
                    log.info("file source ended", extra={"camera": self.camera.id, "frames": self.stats.frames_sampled})
                return
            if self.is_file and not error:
                continue  # loop the file
            # A stream that keeps dying right after it opens must not reconnect in a tight loop.
            if time.monotonic() - started > 30:
                backoff.reset()
            self._wait_before_reconnect(error or f"camera {self.camera.id}: stream ended", backoff)

    def _fail(self, error: str) -> None:
        self.stats.set_state("failed", error)
        log.error("camera failed", extra={"camera": self.camera.id, "error": error})

    def _wait_before_reconnect(self, error: str, backoff: Backoff) -> None:
        self.stats.set_state("reconnecting", error, reconnect=True)
        delay = backoff.next_delay()
        log.warning("camera unreachable, retrying", extra={"camera": self.camera.id, "error": error, "retry_in_s": round(delay, 2)})
        self.stop.wait(delay)

    def _stream(self, cap: cv2.VideoCapture, handoff: DropOldestQueue[Sampled]) -> str:
        """Read until the source ends or breaks; returns an error message, or "" for a clean end of file."""
        native_fps = cap.get(cv2.CAP_PROP_FPS)
        native_fps = native_fps if 0 < native_fps <= 240 else self.camera.fps
        step_ms = 1000.0 / self.camera.fps
        tolerance_ms = 500.0 / native_fps
        gap_s = max(MIN_GAP_S, GAP_FRAME_INTERVALS / native_fps)
        anchor_ms = time.time() * 1000.0
        anchor_monotonic_ms = time.monotonic() * 1000.0
        next_due_ms: float | None = None
        index = 0
        bad_frames = 0
        while not self.stop.is_set():
            if not cap.grab():
                if self.is_file:
                    return "" if index else f"camera {self.camera.id}: {self.source} has no readable frame (corrupt or truncated)"
                return f"camera {self.camera.id}: stream from {redact(self.source)} stopped sending (no frame within {self.options.read_timeout_s:.0f}s, or the connection closed)"
            now, wall_ms = time.monotonic(), int(time.time() * 1000)
            self.stats.frame_read(now, wall_ms, None if self.is_file else gap_s)
            # Files carry their own clock. Live sources are sampled on the monotonic clock (a clock
            # step must not stop sampling) and stamped with the wall clock when read.
            offset_ms = index * 1000.0 / native_fps if self.is_file else now * 1000.0 - anchor_monotonic_ms
            capture_ms = int(anchor_ms + offset_ms) if self.is_file else wall_ms
            index += 1
            if next_due_ms is None:
                next_due_ms = offset_ms
            # Half a source frame of slack, so a live source's jitter at the target rate drops nothing.
            if offset_ms < next_due_ms - tolerance_ms:
                continue  # sampled away: grab() only, never converted
            next_due_ms += step_ms
            if next_due_ms < offset_ms - step_ms:
                next_due_ms = offset_ms + step_ms  # after a stall, start the clock again rather than burst
            ok, image = cap.retrieve()
            if not ok or image is None:
                bad_frames += 1
                self.stats.frame_dropped("undecodable")
                if bad_frames >= MAX_BAD_FRAMES:
                    return f"camera {self.camera.id}: {bad_frames} frames in a row could not be decoded"
                continue
            bad_frames = 0
            if self.is_file and self.options.pace == "realtime":
                delay = (anchor_ms + offset_ms) / 1000.0 - time.time()
                if delay > 0 and self.stop.wait(delay):
                    return ""
            self.stats.frame_sampled()
            # A live camera never waits for processing: if it falls behind, the oldest frame goes.
            if handoff.put((image, capture_ms, int(anchor_monotonic_ms + offset_ms)), wait_unless=self.stop if self.is_file else None) is not None:
                self.stats.frame_dropped("processing_behind")
        return ""

    def _publish(self, processor: FrameProcessor, image: np.ndarray, capture_ms: int, clock_ms: int) -> None:
        stats = self.stats
        try:
            encoded = processor.process(image, clock_ms)
        except FrameTooLarge as exc:
            stats.frame_dropped("too_large")
            log.warning("frame too large, dropped", extra={"camera": self.camera.id, "error": str(exc)})
            return
        if encoded is None:
            stats.frame_gated()
            return
        frame = Frame(store_id=self.store_id, camera_id=self.camera.id, capture_time_ms=capture_ms, motion_score=encoded.motion_score)
        if isinstance(encoded, Heartbeat):
            # Takes a sequence number like any frame, so a gap downstream still means a loss.
            frame.heartbeat = True
            frame.sequence = stats.frame_queued(heartbeat=True)
        else:
            frame.jpeg, frame.width, frame.height = encoded.jpeg, encoded.width, encoded.height
            frame.sequence = stats.frame_queued(heartbeat=False, keyframe=encoded.keyframe, faces_blurred=encoded.faces_blurred)
        size = len(frame.jpeg)
        outgoing = Outgoing(self.camera.id, frame.sequence, encode(frame), lambda error: stats.frame_done(size, error))
        self.queue.put(outgoing, wait_unless=self.stop if self.is_file else None)
