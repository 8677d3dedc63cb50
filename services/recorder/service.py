"""Recorder: keeps the last seconds of every camera, and writes each alert's evidence to the store.

Frames (sw.frames.v1), their analyses (sw.detections.v1) and POS events (sw.pos.v1) fill rolling
buffers; an alert (sw.alerts.v1) takes the frames of its window (its evidence refs, widened by a few
seconds each side), a snapshot with the zones and detections drawn, an MJPEG clip and the POS events
it names, and writes them with a manifest (services/shared/evidence.py).

An alert usually arrives before its window has passed on the camera (the window extends
`after_ms` past the event). It is then kept pending, with a "pending" manifest written at once,
and finished when the camera's clock passes the window's end, or after `max_wait_ms` (wall clock)
in which what it waits for made no progress, with what exists ("partial", reasons in `missing`).
Pending alerts live in memory: the consume loop commits the alert's offset once the pending
manifest is written, so a recorder that stops meanwhile leaves a "pending" manifest that nobody
can complete (its buffer is gone). The sweep marks such manifests "partial" with a reason at
start and later; an alert replayed while its manifest is still pending is recorded again from
what the buffer holds then. "complete" and "partial" are final: a replayed alert is skipped.

Frames and alerts arrive on different topics and partitions, so one recorder must read every
camera and every alert: run one replica (a second one in the group would get some cameras and
other alerts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Message
from prometheus_client import Counter, Gauge

from services.recorder import render
from services.recorder.buffer import BufferedFrame, CameraBuffer, StorePos
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.contracts.pos_event_pb2 import PosEvent
from services.shared.evidence import MANIFEST_VERSION, STORE_ERRORS, EvidenceStore, check_id, frame_name
from services.shared.kafka import Outcome, Poison, RetryableError
from services.shared.serde import PoisonMessage, decode, to_json_dict
from services.shared.storeconfig import Camera, StoreConfig, StoreConfigWatcher
from services.shared.traffic import LineCount

log = logging.getLogger("recorder")

EVIDENCE_WRITTEN = Counter("sw_recorder_evidence_written_total", "Alert manifests written, by status", ["status"])
ALERTS_SKIPPED = Counter("sw_recorder_alerts_skipped_total", "Alerts not recorded, by reason", ["reason"])
EVIDENCE_EXPIRED = Counter("sw_recorder_evidence_expired_total", "Alerts' evidence deleted by the retention sweep")
STALE_CLOSED = Counter("sw_recorder_stale_pending_closed_total", "Pending manifests of an earlier run marked partial")
PENDING = Gauge("sw_recorder_pending_alerts", "Alerts waiting for their window to pass")
BUFFER_BYTES = Gauge("sw_recorder_buffer_bytes", "JPEG bytes held in the camera buffers")

DAY_MS = 86_400_000
CAMERA_KINDS = ("camera_window", "frames", "frame")
# The early snapshot is chosen among the frames this close to the alert's moment.
EARLY_SNAPSHOT_SPAN_MS = 2000
# More pending alerts than this (a flood, or cameras all silent) are finished with what exists, oldest first.
MAX_PENDING = 1000
# However much progress its camera makes, an alert waits at most this many times max_wait in all.
MAX_WAIT_FACTOR = 10
STATUS_INTERVAL_MS = 1000
# Line crossings held for Redis while it is away (a busy store counts a few thousand an hour).
LINE_COUNTS_KEPT = 50_000


@dataclass(frozen=True)
class RecorderOptions:
    buffer_ms: int = 30_000
    buffer_max_bytes: int = 64 * 1024 * 1024
    before_ms: int = 5_000
    after_ms: int = 5_000
    max_wait_ms: int = 20_000
    pos_retention_ms: int = 3_600_000
    pos_max_events: int = 50_000
    max_clock_skew_ms: int = 300_000


@dataclass
class Plan:
    """What an alert's evidence consists of, read from its refs once when it arrives."""

    camera_id: str
    start_ms: int
    end_ms: int
    snapshot_sequence: int | None
    snapshot_time_ms: int
    pos_events: list[tuple[str, int]]
    transactions: list[tuple[str, int]]
    notes: list[str] = field(default_factory=list)
    # The other cameras the alert's refs name (a person followed across cameras): (camera, start, end).
    other_cameras: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class Pending:
    alert: Alert
    plan: Plan
    since_ms: int
    progress_ms: int
    awaiting: tuple | None = None
    # Written ahead of the rest (with the pending manifest) once its frame and detections are here,
    # so a push notification can carry it seconds before the window closes.
    early_snapshot: dict | None = None
    early_tried: bool = False


def _frames_meta(frames: list[BufferedFrame], folder: str = "") -> list[dict]:
    """The manifest's entries of these frames (each sequence once), named inside `folder`."""
    return list({frame_name(f.sequence): {"name": folder + frame_name(f.sequence), "sequence": f.sequence, "capture_time_ms": f.capture_time_ms,
                                          "width": f.width, "height": f.height} for f in frames}.values())


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _range(ref: str) -> tuple[int, int]:
    first, sep, last = ref.partition("-")
    if not sep:
        raise ValueError(ref)
    a, b = int(first), int(last)
    return min(a, b), max(a, b)


class Recorder:
    """Takes batches from the consume loop (`handle`); `tick` and `sweep` run from timer threads."""

    def __init__(self, config: StoreConfig, store: EvidenceStore, options: RecorderOptions | None = None,
                 watcher: StoreConfigWatcher | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.options = options or RecorderOptions()
        self.watcher = watcher
        self.clock = clock
        self.cameras: dict[str, CameraBuffer] = {}
        self.pos: dict[str, StorePos] = {}
        self.pending: dict[str, Pending] = {}
        # One lock for buffers and pending alerts: the consume loop and the timer threads share them.
        self.lock = threading.RLock()
        self.started_ms = self.now_ms()
        self._status_written: dict[str, int] = {}
        self._status_dirty: set[str] = set()
        # Line crossings on their way to Redis (the dashboard's people counts); the oldest go first if
        # Redis stays away long enough to fill it.
        self.line_counts: deque[LineCount] = deque(maxlen=LINE_COUNTS_KEPT)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ---- the consume loop --------------------------------------------------------------------

    def handle(self, messages: list[Message]) -> Outcome:
        """Frames, POS events and alerts into the buffers; an unreadable one is poison, which the loop
        passes over (each topic's DLQ belongs to its main reader: inference, correlator, notifier)."""
        outcome = Outcome()
        with self.lock:
            self.refresh_config()
            now = self.now_ms()
            try:
                for msg in messages:
                    try:
                        self.take(msg.topic() or "", msg.value(), now)
                    except PoisonMessage as exc:
                        outcome.poison.append(Poison(msg, str(exc)))
                self.finish_due(now)
            except STORE_ERRORS as exc:
                # Buffers keep what they took (a retried frame is kept once); pending alerts stay pending.
                raise RetryableError(f"evidence store {self.store.url}: {exc}") from None
            BUFFER_BYTES.set(sum(b.bytes for b in self.cameras.values()))
        return outcome

    def refresh_config(self, now: bool = False) -> None:
        config = self.watcher.poll(force=now) if self.watcher is not None else None
        if config is not None:
            self.config = config
            known = {c.id for s in config.stores for c in s.cameras}
            for camera_id in [c for c in self.cameras if c not in known]:
                del self.cameras[camera_id]

    def take(self, topic: str, value: bytes | None, now: int) -> None:
        """One message of any of the four topics; PoisonMessage when it cannot be used."""
        if topic == topics.FRAMES:
            frame = decode(Frame, value, required=("store_id", "camera_id", "capture_time_ms"))
            if not frame.heartbeat and not frame.jpeg.startswith(b"\xff\xd8"):
                raise PoisonMessage(f"frame {frame.camera_id}#{frame.sequence}: {'no JPEG' if not frame.jpeg else 'payload is not a JPEG'}")
            self._not_ahead(frame.capture_time_ms, now, f"frame {frame.camera_id}#{frame.sequence}")
            self._buffer(frame.camera_id).add_frame(frame, now)
            self._status_dirty.add(frame.camera_id)
        elif topic == topics.DETECTIONS:
            analysis = decode(FrameAnalysis, value, required=("camera_id", "capture_time_ms"))
            self._not_ahead(analysis.capture_time_ms, now, f"analysis {analysis.camera_id}#{analysis.frame_sequence}")
            self._buffer(analysis.camera_id).add_analysis(analysis)
            self._status_dirty.add(analysis.camera_id)
            for crossing in analysis.line_crossings:
                self.line_counts.append(LineCount(analysis.store_id, analysis.camera_id, crossing.line_id, crossing.line_kind, crossing.direction,
                                                  crossing.track_id, analysis.capture_time_ms))
        elif topic == topics.POS:
            event = decode(PosEvent, value, required=("event_id", "store_id", "event_time_ms"))
            self._not_ahead(event.event_time_ms, now, f"POS event {event.event_id}")
            self._store_pos(event.store_id).add(event)
        elif topic == topics.ALERTS:
            alert = decode(Alert, value, required=("alert_id", "store_id", "rule"))
            try:
                check_id(alert.alert_id, "alert id")
                check_id(alert.store_id, "store id")
            except ValueError as exc:
                raise PoisonMessage(f"{Alert.DESCRIPTOR.full_name}: {exc}") from None
            self._store_pos(alert.store_id)
            self.take_alert(alert, now)
        else:
            raise PoisonMessage(f"the recorder does not read topic {topic!r}")

    def _not_ahead(self, time_ms: int, now: int, what: str) -> None:
        if time_ms > now + self.options.max_clock_skew_ms:
            raise PoisonMessage(f"{what}: time {iso(time_ms)} is more than {self.options.max_clock_skew_ms / 1000:g} s ahead of this host's clock")

    def _camera(self, camera_id: str) -> tuple[str, Camera]:
        try:
            store, camera = self.config.camera(camera_id)
        except KeyError:
            self.refresh_config(now=True)  # a camera just added: ingest may have read the edit first
            try:
                store, camera = self.config.camera(camera_id)
            except KeyError:
                raise PoisonMessage(f"camera {camera_id!r} is not in the store config") from None
        return store.id, camera

    def _buffer(self, camera_id: str) -> CameraBuffer:
        buffer = self.cameras.get(camera_id)
        if buffer is None:
            store_id, _ = self._camera(camera_id)
            buffer = self.cameras[camera_id] = CameraBuffer(store_id, camera_id, self.options.buffer_ms, self.options.buffer_max_bytes)
        return buffer

    def _store_pos(self, store_id: str) -> StorePos:
        pos = self.pos.get(store_id)
        if pos is None:
            if not any(s.id == store_id for s in self.config.stores):
                self.refresh_config(now=True)
                if not any(s.id == store_id for s in self.config.stores):
                    raise PoisonMessage(f"store {store_id!r} is not in the store config")
            pos = self.pos[store_id] = StorePos(self.options.pos_retention_ms, self.options.pos_max_events)
        return pos

    # ---- alerts ------------------------------------------------------------------------------

    def take_alert(self, alert: Alert, now: int) -> None:
        if alert.alert_id in self.pending:
            ALERTS_SKIPPED.labels("already_pending").inc()
            return
        retention_ms = int(self.config.evidence_retention_days_for(alert.store_id) * DAY_MS)
        if alert.raised_time_ms and alert.raised_time_ms < now - retention_ms:
            ALERTS_SKIPPED.labels("past_retention").inc()
            log.info("alert older than the evidence retention; not recorded", extra={"alert_id": alert.alert_id})
            return
        try:
            existing = self.store.manifest(alert.store_id, alert.alert_id)
        except ValueError as exc:
            log.warning("unreadable manifest; recording the alert again", extra={"alert_id": alert.alert_id, "error": str(exc)})
            existing = None
        if existing is not None and existing.get("status") in ("complete", "partial"):
            ALERTS_SKIPPED.labels("replay").inc()
            log.info("evidence already written; replayed alert skipped", extra={"alert_id": alert.alert_id, "status": existing.get("status")})
            return
        pending = Pending(alert, self.plan(alert), since_ms=now, progress_ms=now)
        pending.awaiting = self._awaiting(pending)
        if pending.awaiting is None:
            self.finish(pending, now, gave_up=False)
            return
        self._write_pending(pending, now)
        EVIDENCE_WRITTEN.labels("pending").inc()
        self.pending[alert.alert_id] = pending
        PENDING.set(len(self.pending))
        log.info("alert pending until its window passes", extra={"alert_id": alert.alert_id, "camera": pending.plan.camera_id,
                                                                 "window_end": iso(pending.plan.end_ms), "awaiting": pending.awaiting[0]})
        if len(self.pending) > MAX_PENDING:
            oldest = min(self.pending.values(), key=lambda p: p.since_ms)
            self.finish(oldest, now, gave_up=True)

    def _snapshot_ready(self, pending: Pending) -> bool:
        """The snapshot's frame and that frame's detections are buffered, and it was not written yet."""
        plan = pending.plan
        buffer = self.cameras.get(plan.camera_id) if plan.camera_id else None
        return (not pending.early_tried and buffer is not None and buffer.clock_ms >= plan.snapshot_time_ms
                and (not buffer.analysis_clock_ms or buffer.analysis_clock_ms >= plan.snapshot_time_ms))

    def _write_pending(self, pending: Pending, now: int) -> None:
        """The "pending" manifest, with the snapshot when it can be drawn already."""
        plan, alert = pending.plan, pending.alert
        if self._snapshot_ready(pending):
            pending.early_tried = True
            files: dict[str, bytes] = {}
            span = (max(plan.start_ms, plan.snapshot_time_ms - EARLY_SNAPSHOT_SPAN_MS), min(plan.end_ms, plan.snapshot_time_ms + EARLY_SNAPSHOT_SPAN_MS))
            pending.early_snapshot = self._snapshot(plan, self.cameras[plan.camera_id].between(*span), files, [])
            if pending.early_snapshot is not None:
                self.store.write_files(alert.store_id, alert.alert_id, files)
        self.store.write_manifest(self._manifest(pending, now, "pending", [], [], pending.early_snapshot, None, []))

    def plan(self, alert: Alert) -> Plan:
        """The camera, window and POS events an alert's evidence covers, from its refs."""
        refs = list(alert.evidence)
        camera_refs = [r for r in refs if r.kind in CAMERA_KINDS]
        # The alert's own camera gives the snapshot; others its refs name (a person followed across
        # cameras) give their frames and a clip each.
        named = list(dict.fromkeys(r.camera_id for r in camera_refs if r.camera_id))
        camera_id = alert.camera_id if alert.camera_id in named else next(iter(named), alert.camera_id)
        notes: list[str] = []
        spans: dict[str, tuple[list[int], list[int]]] = {}
        snapshot_sequence, snapshot_time = None, alert.event_time_ms
        for ref in camera_refs:
            ref_camera = ref.camera_id or camera_id
            buffer = self.cameras.get(ref_camera)

            def time_of(sequence: int, fallback: int, buffer: CameraBuffer | None = buffer) -> int:
                known = buffer.time_of(sequence) if buffer is not None else None
                return known if known is not None else fallback

            try:
                if ref.kind == "camera_window":
                    start, end = _range(ref.ref)
                elif ref.kind == "frames":
                    first, last = _range(ref.ref)
                    start, end = time_of(first, ref.time_ms or alert.event_time_ms), time_of(last, max(ref.time_ms, alert.event_time_ms))
                else:
                    start = end = time_of(int(ref.ref), ref.time_ms or alert.event_time_ms)
                    if ref_camera == camera_id:
                        snapshot_sequence, snapshot_time = int(ref.ref), start
            except ValueError:
                notes.append(f"evidence ref {ref.kind} {ref.ref!r} is malformed")
                continue
            starts, ends = spans.setdefault(ref_camera, ([], []))
            starts.append(start)
            ends.append(end)
        starts, ends = spans.pop(camera_id, ([alert.event_time_ms], [alert.event_time_ms]))
        if camera_id:
            start_ms, end_ms = min(starts) - self.options.before_ms, max(ends) + self.options.after_ms
        else:
            start_ms = end_ms = alert.event_time_ms
        others = [(camera, min(s) - self.options.before_ms, max(e) + self.options.after_ms) for camera, (s, e) in spans.items()]
        pos_events = list(dict.fromkeys((r.ref, r.time_ms) for r in refs if r.kind == "pos_event" and r.ref))
        transactions = list(dict.fromkeys((r.ref, r.time_ms) for r in refs if r.kind == "pos_transaction" and r.ref))
        return Plan(camera_id, start_ms, end_ms, snapshot_sequence, min(max(snapshot_time, start_ms), end_ms), pos_events, transactions, notes,
                    others)

    def _find_event(self, event_id: str, store_id: str) -> PosEvent | None:
        own = self.pos.get(store_id)
        if own is not None and event_id in own.events:
            return own.events[event_id]
        # Chain-wide rules (return abuse) name events of other stores.
        return next((p.events[event_id] for p in self.pos.values() if event_id in p.events), None)

    def _pos_awaited(self, pending: Pending) -> int:
        """How many named POS events (or transactions) recent enough to be kept have not arrived yet."""
        store_id = pending.alert.store_id
        pos = self.pos.get(store_id)
        kept_since = pos.kept_since_ms() if pos is not None else 0
        waiting = sum(1 for event_id, t in pending.plan.pos_events if t >= kept_since and self._find_event(event_id, store_id) is None)
        waiting += sum(1 for txn, t in pending.plan.transactions if t >= kept_since and not (pos and pos.transaction(txn)))
        return waiting

    def _awaiting(self, pending: Pending) -> tuple | None:
        """What the alert still waits for, with how far it has got (a change counts as progress); None when ready."""
        plan = pending.plan
        if plan.camera_id:
            buffer = self.cameras.get(plan.camera_id)
            if buffer is None or buffer.clock_ms < plan.end_ms:
                return ("camera", buffer.clock_ms if buffer else 0)
            # Detections come from inference, a little after their frames: wait for the snapshot's.
            if buffer.analysis_clock_ms and buffer.analysis_clock_ms < plan.snapshot_time_ms:
                return ("detections", buffer.analysis_clock_ms)
        for camera, _start, end in plan.other_cameras:
            other = self.cameras.get(camera)
            if other is None or other.clock_ms < end:
                return (f"camera {camera}", other.clock_ms if other else 0)
        waiting = self._pos_awaited(pending)
        if waiting:
            return ("pos", waiting)
        return None

    def finish_due(self, now: int) -> int:
        """Finish the pending alerts whose window has passed, or that waited long enough; returns how many."""
        done = 0
        for pending in sorted(self.pending.values(), key=lambda p: p.since_ms):
            awaiting = self._awaiting(pending)
            if awaiting is None:
                self.finish(pending, now, gave_up=False)
            else:
                if awaiting != pending.awaiting:
                    pending.awaiting, pending.progress_ms = awaiting, now
                    if self._snapshot_ready(pending):
                        self._write_pending(pending, now)
                stalled = now - pending.progress_ms > self.options.max_wait_ms
                if not (stalled or now - pending.since_ms > MAX_WAIT_FACTOR * self.options.max_wait_ms):
                    continue
                self.finish(pending, now, gave_up=True)
            done += 1
        return done

    def tick(self) -> None:
        """From a timer thread: finish what is due even while no message arrives (all cameras silent)."""
        with self.lock:
            try:
                self.finish_due(self.now_ms())
            except STORE_ERRORS as exc:
                log.warning("evidence store failed; pending alerts retried on the next tick", extra={"error": str(exc), "pending": len(self.pending)})

    def finish_all(self, reason: str) -> int:
        """At stop: every pending alert written with what exists, `reason` among its missing parts."""
        with self.lock:
            now = self.now_ms()
            for pending in sorted(self.pending.values(), key=lambda p: p.since_ms):
                if self._awaiting(pending) is not None:
                    pending.plan.notes.append(reason)
                self.finish(pending, now, gave_up=True)
            return len(self.pending)

    def finish(self, pending: Pending, now: int, gave_up: bool) -> dict:
        """Write the alert's files, then its manifest; returns the manifest."""
        manifest, files = self.build(pending, now, gave_up)
        alert = pending.alert
        self.store.write_files(alert.store_id, alert.alert_id, files)
        self.store.write_manifest(manifest)
        self.pending.pop(alert.alert_id, None)
        PENDING.set(len(self.pending))
        EVIDENCE_WRITTEN.labels(manifest["status"]).inc()
        log.info("evidence written", extra={"alert_id": alert.alert_id, "store_id": alert.store_id, "status": manifest["status"],
                                            "frames": len(manifest["frames"]), "missing": manifest["missing"]})
        return manifest

    def build(self, pending: Pending, now: int, gave_up: bool) -> tuple[dict, dict[str, bytes]]:
        """The manifest and files of an alert from what the buffers hold now."""
        plan = pending.plan
        missing = list(plan.notes)
        files: dict[str, bytes] = {}
        frames_meta: list[dict] = []
        snapshot_meta: dict | None = None
        clip_meta: dict | None = None
        if plan.camera_id:
            frames = self._camera_evidence(pending, gave_up, missing)
            for frame in frames:
                files[frame_name(frame.sequence)] = frame.jpeg
            frames_meta = _frames_meta(frames)
            snapshot_meta = self._snapshot(plan, frames, files, missing)
            clip_meta = self._clip(plan.camera_id, frames, files, missing)
        others = []
        for camera, start, end in plan.other_cameras:
            frames = self._camera_frames(camera, start, end, pending, missing)
            folder = f"cameras/{camera}/"
            for frame in frames:
                files[folder + frame_name(frame.sequence)] = frame.jpeg
            others.append({"camera_id": camera, "window_ms": [start, end], "frames": _frames_meta(frames, folder),
                           "clip": self._clip(camera, frames, files, missing, folder + "clip.avi")})
        pos_events = self._pos_evidence(pending, missing)
        status = "partial" if missing else "complete"
        manifest = self._manifest(pending, now, status, missing, frames_meta, snapshot_meta, clip_meta, pos_events)
        if others:
            manifest["other_cameras"] = others
        return manifest, files

    def _camera_evidence(self, pending: Pending, gave_up: bool, missing: list[str]) -> list[BufferedFrame]:
        plan = pending.plan
        frames = self._camera_frames(plan.camera_id, plan.start_ms, plan.end_ms, pending, missing)
        buffer = self.cameras.get(plan.camera_id)
        if gave_up and buffer is not None and buffer.clock_ms >= plan.end_ms and buffer.analysis_clock_ms and buffer.analysis_clock_ms < plan.snapshot_time_ms:
            missing.append(f"no detections of {plan.camera_id} after {iso(buffer.analysis_clock_ms)} (inference behind or down)")
        return frames

    def _camera_frames(self, camera: str, start: int, end: int, pending: Pending, missing: list[str]) -> list[BufferedFrame]:
        """A camera's buffered frames of [start, end], and why any part of it is missing."""
        buffer = self.cameras.get(camera)
        if buffer is None or not buffer.clock_ms:
            missing.append(f"no frames of {camera} between {iso(start)} and {iso(end)} (camera silent: nothing received from it)")
            return []
        frames = buffer.between(start, end)
        if buffer.clock_ms < end:
            missing.append(f"{camera} sent nothing after {iso(buffer.clock_ms)}; the window ends at {iso(end)} "
                           f"(waited {(self.now_ms() - pending.since_ms) / 1000:.0f} s)")
        if start < buffer.complete_since_ms:
            missing.append(f"frames of {camera} between {iso(start)} and {iso(min(end, buffer.complete_since_ms))} are not in the recorder's buffer "
                           f"(it keeps {self.options.buffer_ms / 1000:g} s per camera, or started after)")
        elif not frames:
            missing.append(f"no frames of {camera} between {iso(start)} and {iso(end)} (camera silent)")
        return frames

    def _snapshot(self, plan: Plan, frames: list[BufferedFrame], files: dict[str, bytes], missing: list[str]) -> dict | None:
        if not frames:
            return None
        buffer = self.cameras[plan.camera_id]
        chosen = next((f for f in frames if f.sequence == plan.snapshot_sequence), None)
        if chosen is None:
            chosen = min(frames, key=lambda f: abs(f.capture_time_ms - plan.snapshot_time_ms))
        analysis = buffer.analysis_for(chosen)
        if analysis is None and buffer.analysis_clock_ms:
            missing.append(f"no detections for frame {chosen.sequence} of {plan.camera_id}")
        try:
            zones = self.config.camera(plan.camera_id)[1].zones
        except KeyError:
            zones = []
        overlay = render.detections(analysis, zones)
        try:
            files["snapshot.jpg"] = render.snapshot(chosen, overlay)
        except render.RenderError as exc:
            missing.append(f"no snapshot: frame {chosen.sequence} of {plan.camera_id}: {exc}")
            return None
        return {"name": "snapshot.jpg", "sequence": chosen.sequence, "capture_time_ms": chosen.capture_time_ms, "detections": overlay}

    def _clip(self, camera_id: str, frames: list[BufferedFrame], files: dict[str, bytes], missing: list[str], name: str = "clip.avi") -> dict | None:
        if not frames:
            return None
        try:
            default_fps = self.config.camera(camera_id)[1].fps
        except KeyError:
            default_fps = 10.0
        fps = render.measured_fps(frames, default_fps)
        try:
            data, count = render.clip(frames, fps)
        except render.RenderError as exc:
            missing.append(f"no clip of {camera_id}: {exc}")
            return None
        files[name] = data
        return {"name": name, "frames": count, "fps": fps}

    def _pos_evidence(self, pending: Pending, missing: list[str]) -> list[dict]:
        alert, plan = pending.alert, pending.plan
        pos = self.pos.get(alert.store_id)
        kept_since = pos.kept_since_ms() if pos is not None else 0
        keeps = f"the recorder keeps {self.options.pos_retention_ms / 1000:g} s of POS events"
        found: dict[str, PosEvent] = {}
        for event_id, t in plan.pos_events:
            event = self._find_event(event_id, alert.store_id)
            if event is not None:
                found[event_id] = event
            else:
                why = f"older than {keeps}" if t < kept_since else "not received by the recorder"
                missing.append(f"POS event {event_id} at {iso(t)}: {why}")
        for txn, t in plan.transactions:
            events = pos.transaction(txn) if pos is not None else []
            if not events:
                why = f"older than {keeps}" if t < kept_since else "not received by the recorder"
                missing.append(f"POS transaction {txn} at {iso(t)}: {why}")
            found.update((e.event_id, e) for e in events)
        return [to_json_dict(e) for e in sorted(found.values(), key=lambda e: (e.event_time_ms, e.event_id))]

    def _manifest(self, pending: Pending, now: int, status: str, missing: list[str], frames: list[dict], snapshot: dict | None,
                  clip: dict | None, pos_events: list[dict]) -> dict:
        alert, plan = pending.alert, pending.plan
        return {
            "version": MANIFEST_VERSION, "alert_id": alert.alert_id, "store_id": alert.store_id, "camera_id": plan.camera_id,
            "rule": alert.rule, "event_time_ms": alert.event_time_ms, "raised_time_ms": alert.raised_time_ms, "written_ms": now,
            "status": status, "missing": missing, "window_ms": [plan.start_ms, plan.end_ms],
            "frames": frames, "snapshot": snapshot, "clip": clip, "pos_events": pos_events,
        }

    # ---- camera status and retention -----------------------------------------------------------

    def status_updates(self) -> list[dict]:
        """Cameras whose status changed and was last written a second ago or more (for Redis)."""
        now = self.now_ms()
        with self.lock:
            due = [c for c in self._status_dirty if c in self.cameras and now - self._status_written.get(c, 0) >= STATUS_INTERVAL_MS]
            for camera_id in due:
                self._status_written[camera_id] = now
                self._status_dirty.discard(camera_id)
            return [self.cameras[c].status() for c in due]

    def take_line_counts(self) -> list[LineCount]:
        """The line crossings not yet written to Redis (`give_back_line_counts` if writing fails)."""
        with self.lock:
            taken = list(self.line_counts)
            self.line_counts.clear()
            return taken

    def give_back_line_counts(self, counts: list[LineCount]) -> None:
        with self.lock:
            self.line_counts.extendleft(reversed(counts))

    def sweep(self) -> int:
        """Delete evidence past each store's retention, and close pending manifests nobody will finish."""
        deleted = 0
        for store in self.config.stores:
            cutoff = self.now_ms() - int(self.config.evidence_retention_days_for(store.id) * DAY_MS)
            count = self.store.expire(store.id, cutoff)
            EVIDENCE_EXPIRED.inc(count)
            deleted += count
            self.close_stale(store.id)
        if deleted:
            log.info("expired evidence deleted", extra={"alerts": deleted})
        return deleted

    def close_stale(self, store_id: str) -> int:
        """Mark "partial" the pending manifests of an earlier run (its buffer is lost) or of an alert
        this run no longer waits for."""
        closed = 0
        stale_before = self.now_ms() - MAX_WAIT_FACTOR * self.options.max_wait_ms - 60_000
        for alert_id in self.store.alert_ids(store_id):
            try:
                manifest = self.store.manifest(store_id, alert_id)
            except ValueError:
                continue
            if not manifest or manifest.get("status") != "pending":
                continue
            with self.lock:
                if alert_id in self.pending:
                    continue
                manifest = self.store.manifest(store_id, alert_id)  # again, under the lock: the loop may just have finished it
                if not manifest or manifest.get("status") != "pending":
                    continue
                written = int(manifest.get("written_ms") or 0)
                if written >= self.started_ms and written >= stale_before:
                    continue
                manifest["status"] = "partial"
                manifest["missing"] = [*manifest.get("missing", []), f"the recorder stopped before this alert's window had passed "
                                       f"(pending since {iso(written)}); the frames it had buffered were lost"]
                manifest["written_ms"] = self.now_ms()
                self.store.write_manifest(manifest)
            STALE_CLOSED.inc()
            EVIDENCE_WRITTEN.labels("partial").inc()
            closed += 1
            log.warning("pending evidence of an earlier run marked partial", extra={"alert_id": alert_id, "store_id": store_id})
        return closed
