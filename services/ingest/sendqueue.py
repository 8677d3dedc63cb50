"""Frames waiting for Kafka: bounded per camera, oldest dropped first, so capture never blocks.

When the broker is slow or gone, a camera thread that waited on `produce` would stop reading its
stream; the stream's own buffers would then overflow or the camera would drop the connection. So
capture threads only append here, and one sender thread feeds the producer, taking cameras in
turn. Each camera may have `max_frames` frames queued here and as many handed to the producer but
not yet acknowledged; beyond that its oldest queued frame is dropped (and counted), so memory stays
bounded through a broker outage and the newest frames go out first when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer

from services.shared.boundedqueue import DropOldestQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    camera_id: str
    sequence: int
    value: bytes
    # Called once with None (acknowledged) or the reason it was lost ("queue_full", "delivery_failed: ...").
    on_done: Callable[[str | None], None]


class SendQueue:
    def __init__(self, producer: Producer, topic: str, max_frames: int, drain_s: float = 5.0) -> None:
        self.producer = producer
        self.topic = topic
        self.max_frames = max_frames
        # How long the sender keeps delivering queued frames after it is told to stop.
        self.drain_s = drain_s
        self._queues: OrderedDict[str, DropOldestQueue[Outgoing]] = OrderedDict()
        self._in_flight: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._drain_deadline: float | None = None
        self.discarded = 0

    def put(self, item: Outgoing, wait_unless: threading.Event | None = None) -> None:
        """Queue a frame; when the camera's queue is full its oldest frame is dropped ("queue_full").

        With `wait_unless`, a full queue makes the caller wait for room instead (until that event is
        set): a file has no live moment to keep up with, so it is slowed down, never thinned out.
        """
        with self._cond:
            queue = self._queues.setdefault(item.camera_id, DropOldestQueue(self.max_frames, self._cond))
            dropped = queue.put(item, wait_unless)
            self._queues.setdefault(item.camera_id, queue)  # the sender may have emptied and removed it meanwhile
        if dropped is not None:
            dropped.on_done("queue_full")

    def depth(self, camera_id: str) -> int:
        """Frames of this camera queued here or waiting for the broker's acknowledgement."""
        with self._cond:
            return len(self._queues.get(camera_id, ())) + self._in_flight[camera_id]

    def _take(self) -> list[Outgoing]:
        """Every frame that may be sent now, oldest first per camera, cameras taking turns."""
        with self._cond:
            items: list[Outgoing] = []
            while True:
                taken = len(items)
                for camera_id, queue in list(self._queues.items()):
                    item = queue.take() if self._in_flight[camera_id] < self.max_frames else None
                    if item is not None:
                        items.append(item)
                        self._in_flight[camera_id] += 1
                        self._queues.move_to_end(camera_id)
                    elif not len(queue) and not self._in_flight[camera_id]:
                        del self._queues[camera_id]  # a removed camera leaves nothing behind
                if len(items) == taken:
                    break
            return items

    def _waiting(self) -> tuple[int, int]:
        with self._cond:
            return sum(len(q) for q in self._queues.values()), sum(self._in_flight.values())

    def _draining_past_deadline(self, stop: threading.Event) -> bool:
        if not stop.is_set():
            return False
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.drain_s
        return time.monotonic() > self._drain_deadline

    def run(self, stop: threading.Event) -> None:
        """The sender loop. Once `stop` is set it drains what is queued, until `drain_s` runs out."""
        while True:
            items = self._take()
            for item in items:
                self._produce(item, stop)
            queued, in_flight = self._waiting()
            if stop.is_set() and (not queued or self._draining_past_deadline(stop)):
                self._discard_queued()
                return
            if in_flight:
                self.producer.poll(0.01)  # delivery callbacks free in-flight slots
            elif not items:
                with self._cond:
                    self._cond.wait(0.1)

    def _produce(self, item: Outgoing, stop: threading.Event) -> None:
        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            with self._cond:
                self._in_flight[item.camera_id] -= 1
            item.on_done(None if err is None else f"delivery_failed: {err.str()}")

        while True:
            try:
                self.producer.produce(self.topic, key=item.camera_id, value=item.value, on_delivery=on_delivery)
                return
            except BufferError:
                # librdkafka's own buffer is full (many cameras, broker slow): wait for room.
                if self._draining_past_deadline(stop):
                    self._not_sent(item, "shutdown")
                    return
                self.producer.poll(0.05)
            except KafkaException as exc:
                log.warning("frame not sent", extra={"camera": item.camera_id, "sequence": item.sequence, "error": str(exc)})
                self._not_sent(item, f"produce_failed: {exc}")
                return

    def _not_sent(self, item: Outgoing, reason: str) -> None:
        with self._cond:
            self._in_flight[item.camera_id] -= 1
            self.discarded += reason == "shutdown"
        item.on_done(reason)

    def _discard_queued(self) -> None:
        """At the end of the drain time: what is still queued is lost, and counted."""
        with self._cond:
            left = [item for queue in self._queues.values() for item in queue.take_all()]
            self.discarded += len(left)
        for item in left:
            item.on_done("shutdown")
