"""The ingest service: one worker thread per camera, one sender thread, live store-config changes.

Cameras are added, changed or removed by editing the store config; only the cameras that changed
are restarted, and a changed camera keeps its counters and its sequence numbers, so downstream sees
one continuous stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Producer
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

from services.ingest.camera import CAMERA_STATES, CameraStats, CameraWorker, IngestOptions
from services.ingest.sendqueue import SendQueue
from services.shared import topics
from services.shared.storeconfig import Camera, StoreConfig

log = logging.getLogger(__name__)


@dataclass
class _Running:
    worker: CameraWorker
    thread: threading.Thread


class IngestService:
    def __init__(self, producer: Producer, options: IngestOptions, topic: str = topics.FRAMES) -> None:
        self.producer = producer
        self.options = options
        self.queue = SendQueue(producer, topic, options.send_queue_frames, options.drain_s)
        self._running: dict[str, _Running] = {}
        self._stats: dict[str, CameraStats] = {}
        # Next sequence number of cameras that were removed, in case they come back.
        self._retired_sequences: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sender_stop = threading.Event()
        self._sender = threading.Thread(target=self.queue.run, args=(self._sender_stop,), name="sender", daemon=True)

    def start(self, config: StoreConfig) -> IngestService:
        self._sender.start()
        self.apply(config)
        return self

    @staticmethod
    def _capture_settings(store_id: str, camera: Camera, source: str) -> tuple:
        """What ingest does with a camera; the fields only inference reads (zones, stages) are left out,
        so editing them never reconnects the camera."""
        return store_id, source, camera.model_dump(exclude=Camera.inference_fields())

    def _wanted(self, config: StoreConfig) -> dict[str, tuple[str, Camera, str]]:
        return {
            cam.id: (store.id, cam, config.resolve_source(cam))
            for store in config.stores
            for cam in store.cameras
            if not self.options.cameras or cam.id in self.options.cameras
        }

    def apply(self, config: StoreConfig) -> dict[str, list[str]]:
        """Start, restart and stop camera workers so they match `config`; returns what changed."""
        wanted = self._wanted(config)
        with self._lock:
            current = {cid: (r.worker.store_id, r.worker.camera, r.worker.source) for cid, r in self._running.items()}
            removed = sorted(set(current) - set(wanted))
            changed = sorted(cid for cid in set(current) & set(wanted)
                             if self._capture_settings(*current[cid]) != self._capture_settings(*wanted[cid]))
            added = sorted(set(wanted) - set(current))
            stopping = [self._running.pop(cid) for cid in removed + changed]
        for running in stopping:
            running.worker.stop.set()
        for running in stopping:
            running.thread.join()
        with self._lock:
            for cid in removed:
                self._retired_sequences[cid] = self._stats.pop(cid).next_sequence
            for cid in changed + added:
                store_id, camera, source = wanted[cid]
                stats = self._stats.get(cid)
                if stats is None or stats.source != source or stats.store_id != store_id:
                    # A new source is a new stream, but sequence numbers go on: they identify frames.
                    sequence = stats.next_sequence if stats else self._retired_sequences.pop(cid, 0)
                    stats = CameraStats(store_id, source, next_sequence=sequence)
                stats.set_state("starting")
                self._stats[cid] = stats
                self._start(store_id, camera, source, stats)
        if removed or changed or added:
            log.info("cameras updated", extra={"added": added, "changed": changed, "removed": removed})
        return {"added": added, "changed": changed, "removed": removed}

    def _start(self, store_id: str, camera: Camera, source: str, stats: CameraStats) -> None:
        worker = CameraWorker(store_id, camera, source, self.queue, stats, self.options)
        thread = threading.Thread(target=worker.run, name=f"camera-{camera.id}", daemon=True)
        self._running[camera.id] = _Running(worker, thread)
        thread.start()

    def sending(self) -> bool:
        """Whether the sender thread runs: without it nothing reaches Kafka (readiness says so)."""
        return self._sender.is_alive()

    def cameras(self) -> dict[str, dict]:
        """Every camera's state and counters, for the status endpoint."""
        with self._lock:
            stats = dict(self._stats)
        return {cid: s.snapshot(self.queue.depth(cid)) for cid, s in sorted(stats.items())}

    def wait_finished(self, timeout: float) -> bool:
        """Wait until every camera thread has ended (file sources played once); for tools and benchmarks."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [r.thread for r in self._running.values()]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def stop(self) -> int:
        """Stop every camera, deliver what is queued within the drain time; returns frames not delivered.

        A camera blocked in a source open or read notices the stop when that call times out; it is
        not waited for beyond that (its thread is a daemon), so SIGTERM ends within about the
        open timeout plus the drain time.
        """
        with self._lock:
            stopping = list(self._running.values())
        for running in stopping:
            running.worker.stop.set()
        deadline = time.monotonic() + max(self.options.open_timeout_s, self.options.read_timeout_s) + 1
        for running in stopping:
            running.thread.join(max(0.0, deadline - time.monotonic()))
        deadline = time.monotonic() + self.options.drain_s
        self._sender_stop.set()
        self._sender.join(self.options.drain_s + 1)
        return self.queue.discarded + self.producer.flush(max(0.0, deadline - time.monotonic()))


class IngestCollector:
    """Per-camera series for /metrics, read from the same counters as the status endpoint.

    Collected at scrape time, so a removed camera's series disappear with it.
    """

    def __init__(self, service: IngestService) -> None:
        self.service = service

    def collect(self) -> Iterator:
        cameras = self.service.cameras()
        state = GaugeMetricFamily("sw_ingest_camera_state", "1 for the camera's current state", labels=["camera", "state"])
        gauges = {
            "fps": GaugeMetricFamily("sw_ingest_camera_fps", "Frames per second taken from the source at the target rate (last 5 s)", labels=["camera"]),
            "sent_fps": GaugeMetricFamily("sw_ingest_camera_sent_fps", "Frames per second sent after the motion gate (last 5 s)", labels=["camera"]),
            "last_frame_age_s": GaugeMetricFamily("sw_ingest_camera_last_frame_age_seconds", "Seconds since the source last delivered a frame", labels=["camera"]),
            "send_queue": GaugeMetricFamily("sw_ingest_send_queue_frames", "Frames waiting for the Kafka producer", labels=["camera"]),
        }
        counters = {
            "frames": CounterMetricFamily("sw_ingest_frames_sampled", "Frames taken from the source at the target fps", labels=["camera"]),
            "frames_gated": CounterMetricFamily("sw_ingest_frames_gated", "Frames held back by the motion gate", labels=["camera"]),
            "frames_published": CounterMetricFamily("sw_ingest_frames_published", "Frames acknowledged by Kafka", labels=["camera"]),
            "bytes_published": CounterMetricFamily("sw_ingest_bytes_published", "JPEG bytes acknowledged by Kafka", labels=["camera"]),
            "reconnects": CounterMetricFamily("sw_ingest_reconnects", "Failed opens and lost streams, each followed by a retry", labels=["camera"]),
            "gaps": CounterMetricFamily("sw_ingest_capture_gaps", "Pauses of a live source longer than 3 frame intervals", labels=["camera"]),
            "gap_seconds": CounterMetricFamily("sw_ingest_capture_gap_seconds", "Time lost in those pauses", labels=["camera"]),
        }
        dropped = CounterMetricFamily("sw_ingest_frames_dropped", "Frames lost, by reason (queue_full, delivery_failed, too_large, undecodable, ...)", labels=["camera", "reason"])
        for cid, snap in cameras.items():
            for name in CAMERA_STATES:
                state.add_metric([cid, name], 1.0 if snap["state"] == name else 0.0)
            for key, family in gauges.items():
                if snap[key] is not None:
                    family.add_metric([cid], snap[key])
            for key, counter in counters.items():
                counter.add_metric([cid], snap[key])
            for reason, count in snap["dropped"].items():
                dropped.add_metric([cid, reason], count)
        yield state
        yield from gauges.values()
        yield from counters.values()
        yield dropped

    def register(self) -> IngestCollector:
        REGISTRY.register(self)
        return self
