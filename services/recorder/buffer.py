"""The recorder's rolling buffers: recent frames and analyses per camera, recent POS events per store.

Bounded by event time (a camera's own clock, a store's POS clock) rather than wall clock, so a
recorder catching up on a backlog keeps the same seconds of footage as one running live; and by
bytes and counts, so memory stays bounded whatever the cameras send.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.contracts.pos_event_pb2 import PosEvent

FPS_SPAN_MS = 10_000


@dataclass(frozen=True)
class BufferedFrame:
    sequence: int
    capture_time_ms: int
    jpeg: bytes
    width: int
    height: int


@dataclass
class CameraBuffer:
    """The last `buffer_ms` of one camera's frames (JPEG as received) and their analyses."""

    store_id: str
    camera_id: str
    buffer_ms: int
    max_bytes: int
    # Analyses kept at most (a camera sends at most 60 frames/s; heartbeats have no analysis kept).
    max_analyses: int = 0
    frames: deque[BufferedFrame] = field(default_factory=deque)
    by_sequence: dict[int, BufferedFrame] = field(default_factory=dict)
    analyses: OrderedDict[int, FrameAnalysis] = field(default_factory=OrderedDict)
    bytes: int = 0
    # Capture time of the newest frame or heartbeat: how far the camera has got (0: nothing yet).
    clock_ms: int = 0
    # Capture time of the newest analysis (heartbeat answers too).
    analysis_clock_ms: int = 0
    # Every frame sent from this capture time on is in the buffer: the first message seen, moved on
    # by each eviction. Earlier footage is gone (or was sent before the recorder started).
    complete_since_ms: int = 0
    heartbeat: bool = False
    last_seen_ms: int = 0
    evicted: int = 0
    # The newest analysis's zones (camera status): who and what is in each zone now.
    zones: dict[str, dict] = field(default_factory=dict)
    _recent: deque[int] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not self.max_analyses:
            self.max_analyses = max(100, int(self.buffer_ms / 1000 * 60))

    def add_frame(self, frame: Frame, seen_ms: int) -> None:
        """A frame (JPEG kept) or a heartbeat (the clock moves on); a replayed frame is kept once."""
        t = frame.capture_time_ms
        self.last_seen_ms = seen_ms
        if not self.complete_since_ms:
            self.complete_since_ms = t
        if t >= self.clock_ms:
            self.heartbeat = frame.heartbeat
        self.clock_ms = max(self.clock_ms, t)
        if frame.heartbeat:
            self._evict()
            return
        known = self.by_sequence.get(frame.sequence)
        if known is not None and known.capture_time_ms == t:
            return
        if t < self.clock_ms - self.buffer_ms:
            return  # late, and older than anything kept
        kept = BufferedFrame(frame.sequence, t, bytes(frame.jpeg), frame.width, frame.height)
        self.frames.append(kept)
        self.by_sequence[frame.sequence] = kept
        self.bytes += len(kept.jpeg)
        self._recent.append(t)
        self._evict()

    def add_analysis(self, analysis: FrameAnalysis) -> None:
        if not analysis.heartbeat and analysis.capture_time_ms >= self.analysis_clock_ms:
            self.zones = {z.zone_id: {"kind": z.kind, "persons": z.person_count if z.person_count else int(z.person_present),
                                      "objects": z.object_count, "at_ms": analysis.capture_time_ms} for z in analysis.zones}
        elif analysis.heartbeat and analysis.capture_time_ms >= self.analysis_clock_ms:
            # The scene is unchanged: what the zones held still holds, as of now.
            self.zones = {zone_id: {**zone, "at_ms": analysis.capture_time_ms} for zone_id, zone in self.zones.items()}
        self.analysis_clock_ms = max(self.analysis_clock_ms, analysis.capture_time_ms)
        if not analysis.heartbeat:
            self.analyses[analysis.frame_sequence] = analysis
            self.analyses.move_to_end(analysis.frame_sequence)
        cutoff = self.analysis_clock_ms - self.buffer_ms
        while self.analyses:
            oldest = next(iter(self.analyses.values()))
            if oldest.capture_time_ms >= cutoff and len(self.analyses) <= self.max_analyses:
                break
            self.analyses.popitem(last=False)

    def _evict(self) -> None:
        cutoff = self.clock_ms - self.buffer_ms
        while self.frames and (self.frames[0].capture_time_ms < cutoff or self.bytes > self.max_bytes):
            old = self.frames.popleft()
            self.bytes -= len(old.jpeg)
            self.evicted += 1
            if self.by_sequence.get(old.sequence) is old:
                del self.by_sequence[old.sequence]
            self.complete_since_ms = max(self.complete_since_ms, old.capture_time_ms + 1)
        while self._recent and self._recent[0] <= self.clock_ms - FPS_SPAN_MS:
            self._recent.popleft()

    def fps(self) -> float:
        """Frames with an image per second over the last ~10 s of the camera's clock."""
        self._evict()
        span = min(FPS_SPAN_MS, self.clock_ms - self.complete_since_ms) / 1000
        if not self._recent or span <= 0:
            return 0.0
        return round(len(self._recent) / max(span, 1.0), 2)

    def between(self, start_ms: int, end_ms: int) -> list[BufferedFrame]:
        """Buffered frames captured in [start_ms, end_ms], in capture order."""
        return sorted((f for f in self.frames if start_ms <= f.capture_time_ms <= end_ms), key=lambda f: (f.capture_time_ms, f.sequence))

    def time_of(self, sequence: int) -> int | None:
        """Capture time of a frame by sequence number, from the frames or their analyses."""
        frame = self.by_sequence.get(sequence)
        if frame is not None:
            return frame.capture_time_ms
        analysis = self.analyses.get(sequence)
        return analysis.capture_time_ms if analysis is not None else None

    def analysis_for(self, frame: BufferedFrame) -> FrameAnalysis | None:
        analysis = self.analyses.get(frame.sequence)
        if analysis is not None and analysis.capture_time_ms == frame.capture_time_ms:
            return analysis
        return None

    def status(self) -> dict:
        return {"store_id": self.store_id, "camera_id": self.camera_id, "last_frame_ms": self.clock_ms,
                "last_seen_ms": self.last_seen_ms, "fps": self.fps(), "heartbeat": self.heartbeat, "zones": self.zones}


@dataclass
class StorePos:
    """One store's recent POS events, by event id (arrival order) and by transaction id."""

    retention_ms: int
    max_events: int
    events: OrderedDict[str, PosEvent] = field(default_factory=OrderedDict)
    by_transaction: dict[str, list[str]] = field(default_factory=dict)
    # Newest event time seen: the store's POS clock.
    clock_ms: int = 0

    def add(self, event: PosEvent) -> None:
        self.clock_ms = max(self.clock_ms, event.event_time_ms)
        if event.event_id in self.events:
            self.events[event.event_id] = event
        elif event.event_time_ms >= self.clock_ms - self.retention_ms:
            self.events[event.event_id] = event
            if event.transaction_id:
                self.by_transaction.setdefault(event.transaction_id, []).append(event.event_id)
        cutoff = self.clock_ms - self.retention_ms
        # Arrival order is nearly event-time order; the count bound catches what the time bound misses.
        while self.events:
            oldest = next(iter(self.events.values()))
            if oldest.event_time_ms >= cutoff and len(self.events) <= self.max_events:
                break
            self._drop(oldest)

    def _drop(self, event: PosEvent) -> None:
        del self.events[event.event_id]
        ids = self.by_transaction.get(event.transaction_id)
        if ids is not None:
            ids[:] = [i for i in ids if i != event.event_id]
            if not ids:
                del self.by_transaction[event.transaction_id]

    def kept_since_ms(self) -> int:
        """Events from this time on would still be here, had they arrived."""
        return self.clock_ms - self.retention_ms

    def transaction(self, transaction_id: str) -> list[PosEvent]:
        return [self.events[i] for i in self.by_transaction.get(transaction_id, []) if i in self.events]
