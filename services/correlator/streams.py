"""Topics and tables of the correlator, built for one app."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event, current_event

from services.correlator.state import (
    CameraState,
    FeedbackState,
    RegisterState,
    StateCodec,
    StoreJourneys,
    TillState,
    TokenState,
    TransactionState,
)
from services.shared import topics


def _raw(app: faust.App, *names: str) -> Any:
    return app.topic(*names, key_serializer="raw", value_serializer="raw")


@dataclass
class Streams:
    # Frames and the refunds routed to their camera share keys (camera id) and partitions, so one
    # agent sees both, with the state of the camera and of the registers it watches.
    camera_inputs: Any
    camera_events: Any
    pos: Any
    returns_by_token: Any
    transactions: Any
    store_steps: Any
    feedback: Any
    alerts: Any
    register_state: Any
    till_state: Any
    camera_state: Any
    token_state: Any
    transaction_state: Any
    store_journeys: Any
    feedback_state: Any
    app: faust.App

    @classmethod
    def create(cls, app: faust.App) -> Streams:
        def table(name: str, kind: type, global_table: bool = False) -> Any:
            make = app.GlobalTable if global_table else app.Table
            made: Any = make(name, default=None, partitions=topics.PARTITIONS, key_type=str)
            # Faust derives the serializer from value_type (Records only); its store and changelog
            # are built later from this attribute, so the dataclass codec goes in here.
            made.value_serializer = StateCodec(kind)
            return made

        return cls(
            camera_inputs=_raw(app, topics.DETECTIONS, topics.CAMERA_EVENTS),
            camera_events=_raw(app, topics.CAMERA_EVENTS),
            pos=_raw(app, topics.POS),
            returns_by_token=_raw(app, topics.RETURNS_BY_TOKEN),
            transactions=_raw(app, topics.TRANSACTIONS),
            store_steps=_raw(app, topics.STORE_STEPS),
            feedback=_raw(app, topics.FEEDBACK),
            alerts=_raw(app, topics.ALERTS),
            # Keyed store:register but written only from its camera's partition (a register is
            # watched by one camera), so it lives and recovers with that partition.
            register_state=table("register-state", RegisterState),
            till_state=table("till-state", TillState),
            camera_state=table("camera-state", CameraState),
            token_state=table("token-returns", TokenState),
            transaction_state=table("transactions", TransactionState),
            store_journeys=table("store-journeys", StoreJourneys),
            # Every worker needs every store's feedback factors (rules run on all partitions).
            feedback_state=table("store-feedback", FeedbackState, global_table=True),
            app=app,
        )

    def dlq(self, source: str) -> Any:
        return _raw(self.app, topics.dlq(source))


class CachedTable:
    """A table's values kept decoded in this process, written back when the consumer commits.

    Reading a RocksDB table decodes the value every time, and every write goes to RocksDB and to the
    changelog; writing a register's state on every frame was most of the correlator's time. Here
    agents read and change the cached value, and `flush` writes each changed key once, just before
    Faust commits offsets (`FlushOnCommit`): the commit then flushes the producer, so a key's
    changelog is durable before the offsets of the events that changed it, and a crash replays
    from a commit whose state was saved. Each key is written under the event that last changed it,
    because Faust picks the table partition (RocksDB file and changelog partition) from the
    current event: the register tables are keyed by register but live in their camera's partition.
    """

    def __init__(self, table: Any, factory: Any) -> None:
        self.table = table
        self.factory = factory
        self.values: dict[str, Any] = {}
        # Changed keys, with the event (strongly held until written) whose partition they live in.
        self.dirty: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        value = self.values.get(key)
        if value is None:
            value = self.table.get(key)
            if value is None:
                value = self.factory()
            self.values[key] = value
        return value

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        event = current_event()
        if event is None:
            raise RuntimeError(f"{self.table.name}: a cached value can only change while an agent handles an event")
        self.dirty[key] = event

    def flush(self) -> int:
        """Write every changed key; returns how many."""
        written = 0
        for key, event in self.dirty.items():
            token = _current_event.set(weakref.ref(event))
            try:
                self.table[key] = self.values[key]
            finally:
                _current_event.reset(token)
            written += 1
        self.dirty.clear()
        return written

    def forget(self) -> None:
        self.values.clear()
        self.dirty.clear()


class FlushOnCommit(faust.Sensor):
    """Writes the cached tables back at the start of every offset commit (see CachedTable)."""

    def __init__(self, *tables: CachedTable) -> None:
        super().__init__()
        self.tables = tables

    def on_commit_initiated(self, consumer: Any) -> Any:
        for table in self.tables:
            table.flush()
        return super().on_commit_initiated(consumer)
