"""Kafka helpers: idempotent producer, an at-least-once consume-process-commit loop, and a DLQ.

Offsets are committed only after the outputs of a batch are acknowledged by the broker, so a crash
replays work instead of losing it; downstream dedupe (deterministic ids) makes replays harmless.
A message the handler cannot understand goes to `<topic>.dlq` with error headers and never stops
the loop; a failure of something the handler depends on (model server down) retries the same batch.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter

from services.shared.backoff import Backoff
from services.shared.serde import PoisonMessage
from services.shared.topics import dlq

log = logging.getLogger(__name__)

MESSAGES_PROCESSED = Counter("sw_messages_processed_total", "Messages handled and committed", ["service", "topic"])
MESSAGES_DEAD_LETTERED = Counter("sw_messages_dead_lettered_total", "Poison messages sent to a DLQ", ["service", "topic"])
MESSAGES_SKIPPED = Counter("sw_messages_skipped_total", "Poison messages skipped by a reader that does not own the topic's DLQ", ["service", "topic"])
BATCH_RETRIES = Counter("sw_batch_retries_total", "Batches retried after a transient failure", ["service", "topic"])


def wait_for_broker(bootstrap_servers: str, service: str, stop_event: threading.Event, topic_names: Iterable[str] = (),
                    poll_s: float = 2.0) -> bool:
    """Block until the broker answers; False if asked to stop first.

    A broker that is absent at start is said once (not a line per retry) and waited for, so a service
    started before Kafka, or during its restart, comes up on its own. Then the topics the service
    reads are checked against their definition and each difference is logged as an error.
    """
    from services.shared.topicadmin import admin_client, check_topics

    admin = admin_client(bootstrap_servers, quiet=True)
    began, said = time.monotonic(), False
    while not stop_event.is_set():
        try:
            admin.list_topics(timeout=poll_s)
            break
        except KafkaException as exc:
            if not said:
                log.warning("Kafka broker not reachable; waiting for it", extra={"service": service, "bootstrap_servers": bootstrap_servers, "error": str(exc)})
                said = True
            stop_event.wait(0.5)
    else:
        return False
    if said:
        log.info("Kafka broker reachable", extra={"service": service, "waited_s": round(time.monotonic() - began, 1)})
    names = list(topic_names)
    if names:
        try:
            problems = check_topics(bootstrap_servers, names)
        except KafkaException as exc:
            problems = [f"could not read the topics' settings: {exc}"]
        for problem in problems:
            log.error("topic with the wrong settings", extra={"service": service, "problem": problem})
    return True


# Delivery failures that an outage, a restart or a leader election explain: produce again.
TRANSIENT_DELIVERY_ERRORS = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NETWORK_EXCEPTION,
})


def is_transient(err: KafkaError) -> bool:
    return err.retriable() or err.code() in TRANSIENT_DELIVERY_ERRORS


class RetryableError(RuntimeError):
    """A dependency failed (model server, webhook); the same batch is tried again, nothing is committed."""


class OncePerMinute:
    """Says whether something may be said again: each key once a minute. While a broker is down,
    every client reports it on every poll and every connection attempt, every second."""

    def __init__(self) -> None:
        self._said: dict[object, float] = {}
        self._lock = threading.Lock()

    def due(self, key: object) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._said.get(key, -60.0) < 60.0:
                return False
            self._said[key] = now
            return True


class _SameLineOncePerMinute(logging.Filter):
    """Lets a librdkafka line through once a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._limit = OncePerMinute()

    def filter(self, record: logging.LogRecord) -> bool:
        # The same complaint from any client, about any attempt: no client names, no numbers.
        return self._limit.due(re.sub(r"\d+", "#", re.sub(r"\[rdkafka#[^\]]*\]", "", record.getMessage())))


def client_logger() -> logging.Logger:
    """The logger every Kafka client of ours hands librdkafka (config key `logger`)."""
    logger = logging.getLogger("librdkafka")
    if not any(isinstance(f, _SameLineOncePerMinute) for f in logger.filters):
        logger.addFilter(_SameLineOncePerMinute())
    return logger


def producer_config(bootstrap_servers: str, **overrides: object) -> dict:
    config = {
        "bootstrap.servers": bootstrap_servers,
        "logger": client_logger(),
        "enable.idempotence": True,
        "acks": "all",
        # Java's partitioner, so keys land where Faust (aiokafka) and Kafka Streams would put them.
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "message.max.bytes": 4 * 1024 * 1024,
    }
    config.update(overrides)
    return config


def make_producer(bootstrap_servers: str, **overrides: object) -> Producer:
    return Producer(producer_config(bootstrap_servers, **overrides))


def produce_and_wait(producer: Producer, topic: str, key: bytes | str, value: bytes, headers: list | None = None, timeout: float = 10.0) -> Message:
    """Produce one message and block until the broker acknowledges it (or raise)."""
    [result] = produce_all_and_wait(producer, topic, [(key, value)], headers, timeout)
    if isinstance(result, KafkaError):
        raise KafkaException(result)
    return result


def produce_all_and_wait(producer: Producer, topic: str, records: Sequence[tuple[bytes | str, bytes]], headers: list | None = None,
                         timeout: float = 10.0) -> list[Message | KafkaError]:
    """Produce messages and block until the broker acknowledged or refused each one.

    One result per record, in order: the acknowledged message, or the error (a record still
    unacknowledged at the deadline gets a timeout error), so a caller can tell which were stored.
    A batch waits for all of its acknowledgements at once, not one round trip per message.
    """
    results: list[Message | KafkaError | None] = [None] * len(records)
    pending = [len(records)]
    lock = threading.Lock()

    def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
        def done(err: KafkaError | None, msg: Message) -> None:
            with lock:
                results[index] = err if err is not None else msg
                pending[0] -= 1
        return done

    deadline = time.monotonic() + timeout
    for index, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery(index))
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, f"local queue for {topic} still full after {timeout}s")) from None
                producer.poll(0.05)
    while pending[0] > 0 and time.monotonic() < deadline:
        producer.poll(0.05)
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, f"no acknowledgement for {topic} in {timeout}s")
    return [timed_out if result is None else result for result in results]


def dlq_headers(topic: str, partition: int, offset: int, service: str, error: str) -> list[tuple[str, bytes]]:
    """Why and where from, on every dead-lettered message (confluent-kafka and Faust alike)."""
    return [
        ("sw-error", error.encode()[:1000]),
        ("sw-source-topic", topic.encode()),
        ("sw-source-partition", str(partition).encode()),
        ("sw-source-offset", str(offset).encode()),
        ("sw-service", service.encode()),
        ("sw-failed-at-ms", str(int(time.time() * 1000)).encode()),
    ]


@dataclass
class Output:
    topic: str
    key: bytes | str | None
    value: bytes
    headers: list | None = None


@dataclass(frozen=True)
class Poison:
    """A message its handler cannot use (undecodable, invalid, refused by a model), and why."""

    message: Message
    reason: str


@dataclass
class Outcome:
    """What a handler made of a batch: the outputs to produce, and the messages it found poison.

    The handler only judges; the loop keeps each poison message in its topic's DLQ (or passes
    over it where another service owns that DLQ), and counts it once the batch is committed, so a
    batch handled again after a retry never counts the same message twice.
    """

    outputs: list[Output] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)


Handler = Callable[[list[Message]], Outcome]


@dataclass
class ConsumeLoop:
    """Poll a batch, hand it to `handle`, produce what it returns, then commit.

    `handle` gets the batch's raw messages and returns an `Outcome`; it raises RetryableError when
    a dependency is down, and the same batch is handed to it again. Poison messages from the topics
    in `dead_letters` (all of `topics` when None) go to their DLQ with the reason; those from other
    topics are passed over, because each topic's DLQ has one owner and a bad message is kept once,
    not once per reader.
    """

    service: str
    bootstrap_servers: str
    group_id: str
    topics: list[str]
    handle: Handler
    dead_letters: Collection[str] | None = None
    batch_size: int = 32
    poll_timeout: float = 0.2
    consumer_overrides: dict = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    max_retry_backoff: float = 5.0

    def __post_init__(self) -> None:
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Short sessions: a restarted member rejoins in seconds, locally and in production.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "logger": client_logger(),
        }
        config.update(self.consumer_overrides)
        self._consumer_config = config
        self.consumer = Consumer(config)
        self.producer = make_producer(self.bootstrap_servers)
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._error_said = OncePerMinute()
        self._assignment_lost = False
        self.consumers_renewed = 0

    def _subscribe(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=lambda *_: self.ready.set(), on_lost=self._lost)

    def _lost(self, consumer: Consumer, partitions: list) -> None:
        """The group gave our partitions away (our session timed out: a process stopped or starved for
        longer than session.timeout.ms). Said here; acted on once consume() returns."""
        self._assignment_lost = True
        log.warning("partitions lost: the session timed out; a fresh consumer will rejoin the group",
                    extra={"service": self.service, "partitions": len(partitions)})

    def _renew_consumer(self) -> None:
        """A fresh consumer in place of one whose assignment was lost. The same client rejoining was
        seen (librdkafka 2.16, `make chaos` with a replica stopped 10 s) to be handed the same
        partitions back and never fetch them again, their lag growing for good; a new member starts
        each assigned partition from its committed offset."""
        self._assignment_lost = False
        self.consumers_renewed += 1
        self.consumer.close()
        self.consumer = Consumer(self._consumer_config)
        self._subscribe()

    def run(self) -> None:
        """Consume until stopped; an unexpected error is kept in `failure` so the service exits non-zero."""
        try:
            if not wait_for_broker(self.bootstrap_servers, self.service, self.stop_event, self.topics):
                return
            self._subscribe()
            while not self.stop_event.is_set():
                batch = self.consumer.consume(self.batch_size, self.poll_timeout)
                if self._assignment_lost:
                    # What came with the loss belongs to the partitions' new owner: not handled here.
                    self._renew_consumer()
                    continue
                messages = [m for m in batch if not self._is_error(m)]
                if messages:
                    self._process(messages)
                self.producer.poll(0)
        except Exception as exc:
            # Nothing of the failed batch was committed: a restart (by the orchestrator) redoes it.
            log.exception("consume loop failed; stopping", extra={"service": self.service})
            self.failure = exc
            self.stop_event.set()
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF and self._error_said.due(err.code()):
            log.warning("consumer error", extra={"service": self.service, "error": str(err)})
        return True

    def _process(self, messages: list[Message]) -> None:
        outcome = self._handle_with_retries(messages)
        if outcome is None:
            return  # stopping mid-retry: nothing committed, the batch is redone after restart
        kept = [poison for poison in outcome.poison if self._owns_dlq(poison.message)]
        if not self._deliver(outcome.outputs + [self._dlq_output(poison) for poison in kept]):
            return  # stopping before the broker took every output: nothing committed
        try:
            self.consumer.commit(offsets=_next_offsets(messages), asynchronous=False)
        except KafkaException as exc:
            # Partitions revoked by a rebalance while we worked (or the broker went away meanwhile):
            # the partitions' owner redoes the batch, and deterministic ids make the replay harmless.
            log.warning("commit refused; the batch will be redone by the partitions' owner", extra={"error": str(exc)})
            return
        for msg in messages:
            MESSAGES_PROCESSED.labels(self.service, msg.topic()).inc()
        for poison in outcome.poison:
            self._say_poison(poison)

    def _deliver(self, outputs: list[Output]) -> bool:
        """Produce the outputs until the broker has acknowledged every one; False if asked to stop.

        A broker that is down or restarting holds the batch here (said once), and an output it
        refused is produced again, so an outage delays the commit instead of losing an output or
        stopping the service.
        """
        pending, said, backoff = list(outputs), False, Backoff(0.5, self.max_retry_backoff)
        while pending:
            failed: list[tuple[Output, KafkaError]] = []
            for out in pending:
                self._produce(out, failed)
            while self.producer.flush(1.0) > 0:
                if self.stop_event.is_set():
                    self.producer.flush(5)
                    return False
                if not said:
                    log.warning("broker has not acknowledged the outputs yet; holding the batch", extra={"service": self.service, "outputs": len(pending)})
                    said = True
            lasting = [err for _out, err in failed if not is_transient(err)]
            if lasting:
                # Retrying would never end (a message too large, a topic that does not exist): stop
                # uncommitted, so the batch is redone once the cause is mended.
                raise KafkaException(lasting[0])
            if failed and self.stop_event.wait(backoff.next_delay()):
                return False
            if failed:
                log.warning("outputs refused by the broker; producing them again", extra={"service": self.service, "outputs": len(failed), "error": str(failed[0][1])})
            pending = [out for out, _err in failed]
        if said:
            log.info("broker acknowledged the held batch", extra={"service": self.service})
        return True

    def _handle_with_retries(self, messages: list[Message]) -> Outcome | None:
        """Run the handler until it succeeds; while a dependency is down, the consumer is paused but
        still polled, so the group does not evict it (max.poll.interval.ms) however long the outage."""
        backoff, paused = Backoff(0.2, self.max_retry_backoff), False
        try:
            while True:
                try:
                    return self.handle(messages)
                except RetryableError as exc:
                    BATCH_RETRIES.labels(self.service, messages[0].topic()).inc()
                    delay = backoff.next_delay()
                    log.warning("dependency failed, retrying batch", extra={"error": str(exc), "retry_in_s": delay})
                    if not paused:
                        self.consumer.pause(self.consumer.assignment())
                        paused = True
                    if not self._idle_poll(delay):
                        return None
        finally:
            if paused:
                self.consumer.resume(self.consumer.assignment())

    def _idle_poll(self, seconds: float) -> bool:
        """Keep polling for `seconds` without taking work; False when asked to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_event.is_set():
                return False
            for msg in self.consumer.consume(self.batch_size, min(0.2, max(0.0, deadline - time.monotonic()))):
                if msg.error() is None:
                    # From a partition assigned during the outage (not paused): read it again later.
                    topic, partition, offset = _position(msg)
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                    self.consumer.pause([TopicPartition(topic, partition)])
        return not self.stop_event.is_set()

    def _produce(self, out: Output, failed: list[tuple[Output, KafkaError]]) -> None:
        """Hand one output to the producer; if the broker finally refuses it, it lands in `failed`."""
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append((out, err))

        while True:
            try:
                self.producer.produce(out.topic, key=out.key, value=out.value, headers=out.headers, on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _owns_dlq(self, msg: Message) -> bool:
        return self.dead_letters is None or msg.topic() in self.dead_letters

    def _dlq_output(self, poison: Poison) -> Output:
        topic, partition, offset = _position(poison.message)
        headers = dlq_headers(topic, partition, offset, self.service, poison.reason)
        return Output(dlq(topic), poison.message.key(), poison.message.value() or b"", headers)

    def _say_poison(self, poison: Poison) -> None:
        """Count and log a poison message of a committed batch: kept in the DLQ, or passed over."""
        msg = poison.message
        where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), "error": poison.reason}
        if self._owns_dlq(msg):
            MESSAGES_DEAD_LETTERED.labels(self.service, msg.topic()).inc()
            log.warning("poison message sent to DLQ", extra=where)
        else:
            MESSAGES_SKIPPED.labels(self.service, msg.topic()).inc()
            log.warning("poison message skipped (its topic's owner keeps it in the DLQ)", extra=where)


def _position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message.

    confluent-kafka types them Optional because error events carry none; every message handled
    here was consumed without an error, so a missing one is a bug, not something to default.
    """
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"not a consumed message: topic={topic!r} partition={partition!r} offset={offset!r}")
    return topic, partition, offset


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    highest: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = _position(msg)
        key = (topic, partition)
        highest[key] = max(highest.get(key, -1), offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]


__all__ = ["ConsumeLoop", "Outcome", "Output", "Poison", "PoisonMessage", "RetryableError", "dlq_headers", "make_producer", "produce_all_and_wait", "produce_and_wait"]
