"""Kafka tooling for the scenario runner, the benchmarks and the tests: how far a consumer group has
committed, topics read back, and worker processes run beside the broker.

Offsets are read with consumers that never subscribe: one in a watched group only asks for the
group's commits, so it never joins the group or takes partitions from its members.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from devplatform.launcher import Platform
from services.shared import topics

# (topic, partition)
Partition = tuple[str, int]
T = TypeVar("T")


def _consumer(bootstrap: str, group: str, **extra: Any) -> Consumer:
    # log_level 3: no line when the broker goes away at the end of a run.
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 3, **extra})


def _partitions(topic_names: Sequence[str]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in topic_names for p in range(topics.PARTITIONS)]


# What a node answers for a few seconds after it started, though its metadata already names it the
# leader of every partition: offsets and the groups' coordinators are still being loaded.
STARTING_UP = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
                         KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE})


def _once_up(ask: Callable[[], T], timeout_s: float = 30.0) -> T:
    """`ask()`, asked again while the broker answers that it is still starting up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ask()
        except KafkaException as exc:
            if exc.args[0].code() not in STARTING_UP or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Offsets:
    """Where topics end, and how far consumer groups have committed in them."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._own = _consumer(bootstrap, f"kafkatools-offsets-{uuid.uuid4().hex[:8]}")
        self._groups: dict[str, Consumer] = {}

    def watermarks(self, topic_names: Sequence[str]) -> dict[Partition, tuple[int, int]]:
        """(first offset still held, end offset) of every partition."""
        return {(tp.topic, tp.partition): _once_up(partial(self._own.get_watermark_offsets, tp, timeout=10, cached=False)) for tp in _partitions(topic_names)}

    def ends(self, topic_names: Sequence[str]) -> dict[Partition, int]:
        return {part: high for part, (_low, high) in self.watermarks(topic_names).items()}

    def committed(self, group: str, topic_names: Sequence[str]) -> dict[Partition, int]:
        """The group's committed offset in every partition (0 where it committed none)."""
        if group not in self._groups:
            self._groups[group] = _consumer(self.bootstrap, group)
        consumer = self._groups[group]
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in _once_up(lambda: consumer.committed(_partitions(topic_names), timeout=10))}

    def behind(self, group: str, topic_names: Sequence[str]) -> dict[Partition, tuple[int, int]]:
        """(committed, end offset) wherever the group has not consumed a partition to its end."""
        committed = self.committed(group, topic_names)
        return {part: (committed[part], end) for part, end in self.ends(topic_names).items() if committed[part] < end}

    def consumed_to_end(self, group: str, topic_names: Sequence[str]) -> bool:
        return not self.behind(group, topic_names)

    def close(self) -> None:
        for consumer in (self._own, *self._groups.values()):
            consumer.close()


def consumed_to_end(bootstrap: str, group: str, topic_names: Sequence[str]) -> bool:
    """Whether `group` has committed every partition of these topics up to its end."""
    offsets = Offsets(bootstrap)
    try:
        return offsets.consumed_to_end(group, topic_names)
    finally:
        offsets.close()


class TopicReader(Generic[T]):
    """Reads topics from the beginning (or from given offsets) with a consumer that joins no group,
    decoding each message with `parse`: up to their ends (`read_to_end`), or in the background
    (`start`, then `received` while it reads, `stop`)."""

    def __init__(self, bootstrap: str, topic_names: Sequence[str], parse: Callable[[Message], T], since: Mapping[Partition, int] | None = None) -> None:
        self.parse = parse
        self.consumer = _consumer(bootstrap, f"kafkatools-reader-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
        parts = _partitions(topic_names)
        for tp in parts:
            tp.offset = (since or {}).get((tp.topic, tp.partition), OFFSET_BEGINNING)
        self.consumer.assign(parts)
        self._not_at_end = {(tp.topic, tp.partition) for tp in parts}
        self._received: list[T] = []
        self.last_received = time.monotonic()  # when the last message came (monotonic clock)
        self.error = ""  # why the background reader stopped early
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.consumer.close()

    def _poll(self, timeout_s: float) -> None:
        msg = self.consumer.poll(timeout_s)
        if msg is None:
            return
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._not_at_end.discard((msg.topic() or "", msg.partition() or 0))
            return
        item = self.parse(msg)
        with self._lock:
            self._received.append(item)
            self.last_received = time.monotonic()

    def received(self) -> list[T]:
        """What was read so far, in the order it came."""
        with self._lock:
            return list(self._received)

    def read_to_end(self, timeout_s: float = 15.0) -> list[T]:
        """Read until every partition was read to its end (or timeout_s passed); then close."""
        deadline = time.monotonic() + timeout_s
        try:
            while self._not_at_end and time.monotonic() < deadline:
                self._poll(0.2)
        finally:
            self._close()
        return self.received()

    @property
    def at_end(self) -> bool:
        """Every partition was read up to its end (as it was when reached)."""
        return not self._not_at_end

    def first(self, match: Callable[[T], bool], timeout_s: float) -> T | None:
        """The first message read that `match`es, reading for timeout_s at most (None then); then close."""
        deadline, seen = time.monotonic() + timeout_s, 0
        try:
            while time.monotonic() < deadline:
                self._poll(0.2)
                with self._lock:
                    new, seen = self._received[seen:], len(self._received)
                for item in new:
                    if match(item):
                        return item
        finally:
            self._close()
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._read_until_stopped, daemon=True, name="topic-reader")
        self._thread.start()

    def _read_until_stopped(self) -> None:
        try:
            while not self._stopping.is_set():
                self._poll(0.2)
        except Exception as exc:  # the caller sees it in `error`
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._close()

    def stop(self) -> None:
        """Stop reading (the background thread, if started) and close the consumer."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        else:
            self._close()


@dataclass
class Worker:
    """A worker process started by the launcher's own spawn (its log in the platform's log folder,
    the platform's `down` stops it by PID if it still runs)."""

    platform: Platform
    name: str
    popen: subprocess.Popen
    http: str = ""

    @classmethod
    def start(cls, platform: Platform, name: str, argv: list[str], env: dict[str, str]) -> Worker:
        return cls(platform, name, platform.spawn(name, argv, env))

    def tail(self, lines: int = 25) -> str:
        return self.platform.tail(self.name, lines)

    def check(self, what: str) -> None:
        """Raise WorkerExited, with its exit code and last log lines, if the worker no longer runs."""
        if self.popen.poll() is not None:
            raise WorkerExited(f"{self.name} exited with code {self.popen.returncode} while {what}; last log lines:\n{self.tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and its exit code; None when it had to be killed after timeout_s."""
        self.popen.terminate()
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return None


class WorkerExited(RuntimeError):
    """A worker process ended while it was still needed; the message names it and its last log lines."""
