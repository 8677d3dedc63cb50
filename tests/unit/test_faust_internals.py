"""Faust internals the correlator relies on: an upgrade that removes or changes one fails here, by name,
instead of as wrong state or a lost commit in production.

- CachedTable (services/correlator/streams.py) writes a key under the event that last changed it by
  setting `faust.streams._current_event` (a ContextVar of weak references), because a table takes
  its partition from the current event.
- Streams.create sets a table's `value_serializer` after construction; Faust must read it later,
  when it builds the table's store and changelog topic.
- FlushOnCommit is a Sensor whose `on_commit_initiated` runs before the offsets are committed, and
  the commit flushes the producer first, so a key's changelog is durable before its offsets.
- The readiness check reads `app.started`, `app.consumer.assignment()` and `app.rebalancing`.
"""

import contextvars
import inspect
import weakref
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.streams import _current_event, current_event
from faust.transport.consumer import Consumer

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
