"""Faust internals the correlator relies on: an upgrade that removes or changes one fails here, by name,
instead of as wrong state or a lost commit in production.

- CachedTable (services/correlator/streams.py) writes a key under the event that last changed it by
  setting `faust.streams._current_event` (a ContextVar of weak references), because a table takes
  its partition from the current event.
- Streams.create sets a table's `value_serializer` after construction; Faust must read it later,
  when it builds the table's store and changelog topic.
- FlushOnCommit is a Sensor whose `on_commit_initiated` runs before the offsets are committed, and
  the commit flushes the producer first, so a key's changelog is durable before its offsets; that
  flush drains the buffer of table writes only with the correlator's DrainingProducerBuffer.
- Faust drops what it fetched while its flow is stopped and seeks back to the committed offsets;
  the correlator's consumer also rewinds the partitions without one (seek_to_committed_or_beginning,
  tested on a real broker in tests/integration/test_correlator.py).
- The readiness check reads `app.started`, `app.consumer.assignment()` and `app.rebalancing`.
"""

import asyncio
import contextvars
import inspect
import weakref
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.streams import _current_event, current_event
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer

from services.correlator import app as correlator_app
from services.correlator.app import DrainingProducerBuffer, create_app
from services.correlator.settings import CorrelatorSettings
from services.correlator.state import RegisterState, StateCodec
from services.shared import topics


def _app() -> faust.App:
    return faust.App("sw-internals-guard", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)


class _Event:
    """What Faust reads of an event here: its message's topic and partition (weakly referenced)."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


def _event(topic: str, partition: int) -> _Event:
    return _Event(topic, partition)


def test_the_current_event_is_a_context_variable_of_weak_references():
    assert isinstance(_current_event, contextvars.ContextVar)
    event = _event(topics.DETECTIONS, 3)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        assert current_event() is event
    finally:
        _current_event.reset(token)
    assert current_event() is None


def test_a_table_takes_its_partition_from_the_current_event():
    table: Any = _app().Table("register-state", default=None, partitions=topics.PARTITIONS, key_type=str)
    with pytest.raises(TypeError):
        table.partition_for_key("store-001:till-1")  # no event: Faust refuses, and CachedTable.put says why first
    event = _event(topics.DETECTIONS, 5)  # held here: the context holds only a weak reference
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        assert table.partition_for_key("store-001:till-1") == 5
    finally:
        _current_event.reset(token)


def test_a_value_serializer_set_after_construction_is_what_the_changelog_and_the_store_use():
    table: Any = _app().Table("register-state", default=None, partitions=topics.PARTITIONS, key_type=str)
    codec = StateCodec(RegisterState)
    table.value_serializer = codec
    sent: list[dict] = []
    table.changelog_topic.send_soon = lambda **kwargs: sent.append(kwargs)
    table.send_changelog(5, "store-001:till-1", RegisterState())
    assert sent[0]["value_serializer"] is codec and sent[0]["partition"] == 5
    store = table._new_store_by_url("memory://")
    assert store.value_serializer is codec


def test_sensors_hear_of_a_commit_before_its_offsets_and_the_producer_is_flushed_first():
    assert "consumer" in inspect.signature(faust.Sensor.on_commit_initiated).parameters
    commit = inspect.getsource(Consumer.force_commit)
    assert commit.index("on_commit_initiated") < commit.index("_commit_tps")
    offsets = inspect.getsource(Consumer._commit_offsets)
    assert offsets.index("producer.flush()") < offsets.index("self._commit(")


def test_the_app_says_whether_it_started_and_whether_it_is_rebalancing():
    app = _app()
    assert app.started is False and app.rebalancing is False
    assert callable(getattr(Consumer, "assignment", None))


class _SlowChannel:
    """A topic whose client takes 0.3 s to take each message (a partition whose leader moves)."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(0.3)
        self.published.append(fut.message.key)


async def _started_with_three_slow_messages(buffer: ProducerBuffer) -> _SlowChannel:
    """Starts `buffer` and puts three messages for a slow topic in it; returns the topic."""
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    channel = _SlowChannel()
    await buffer.start()
    for key in ("a", "b", "c"):
        buffer.put(SimpleNamespace(message=SimpleNamespace(channel=channel, key=key)))  # type: ignore[arg-type]
    return channel


async def _flush_three_slow_messages(buffer: ProducerBuffer) -> tuple[int, int]:
    """Buffers three messages, flushes; returns (published by then, still buffered)."""
    channel = await _started_with_three_slow_messages(buffer)
    try:
        await asyncio.wait_for(buffer.flush(), timeout=30)
        result = len(channel.published), buffer.size
        for _ in range(100):  # let the rest go out: a buffer stopped with messages in it raises
            if len(channel.published) == 3:
                break
            await asyncio.sleep(0.05)
        return result
    finally:
        await buffer.stop()


def test_fausts_own_buffer_flush_returns_with_table_writes_still_buffered():
    """Why the correlator replaces it: this flush is what a commit waits for before its offsets."""
    published, _ = asyncio.run(_flush_three_slow_messages(ProducerBuffer()))
    assert published < 3


def test_the_correlators_buffer_flush_returns_once_every_message_is_in_the_client():
    published, buffered = asyncio.run(_flush_three_slow_messages(DrainingProducerBuffer()))
    assert (published, buffered) == (3, 0)


def test_the_correlators_buffer_stopped_with_messages_in_it_sends_them_all_first():
    """A worker's shutdown (SIGTERM) stops the buffer's sending task after the message in hand."""

    async def stop_with_three_buffered() -> int:
        buffer = DrainingProducerBuffer()
        channel = await _started_with_three_slow_messages(buffer)
        await asyncio.sleep(0.1)  # the sending task holds the first
        await asyncio.wait_for(buffer.stop(), timeout=30)
        return len(channel.published)

    assert asyncio.run(stop_with_three_buffered()) == 3


def test_the_correlator_app_produces_through_the_draining_buffer_and_seeks_with_the_rewinding_consumer(tmp_path):
    app = create_app(CorrelatorSettings(kafka_bootstrap_servers="127.0.0.1:1", correlator_data_dir=tmp_path))
    producer: Any = app.producer
    assert type(producer.buffer) is DrainingProducerBuffer and producer.buffer.app is app
    consumer: Any = app.consumer
    assert type(consumer._thread) is correlator_app._ConsumerThread
    assert "seek_to_committed_or_beginning" in inspect.getsource(type(consumer._thread).seek_to_committed)
    # Faust's consumer reaches the seek through its thread, and drops records fetched while stopped.
    assert "self._thread.seek_to_committed()" in inspect.getsource(type(consumer).seek_to_committed)
    assert "perform_seek()" in inspect.getsource(Consumer.getmany)
