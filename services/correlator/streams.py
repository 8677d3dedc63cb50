"""Topics and tables of the correlator, built for one app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from services.correlator.state import CameraState, FeedbackState, RegisterState, StateCodec, TillState, TokenState, TransactionState
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
    feedback: Any
    alerts: Any
    register_state: Any
    till_state: Any
    camera_state: Any
    token_state: Any
    transaction_state: Any
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
            feedback=_raw(app, topics.FEEDBACK),
            alerts=_raw(app, topics.ALERTS),
            # Keyed store:register but written only from its camera's partition (a register is
            # watched by one camera), so it lives and recovers with that partition.
            register_state=table("register-state", RegisterState),
            till_state=table("till-state", TillState),
            camera_state=table("camera-state", CameraState),
            token_state=table("token-returns", TokenState),
            transaction_state=table("transactions", TransactionState),
            # Every worker needs every store's feedback factors (rules run on all partitions).
            feedback_state=table("store-feedback", FeedbackState, global_table=True),
            app=app,
        )

    def dlq(self, source: str) -> Any:
        return _raw(self.app, topics.dlq(source))


class CachedTable:
    """A table's values kept decoded in this process, and written back only when they matter.

    Reading a RocksDB table decodes the value every time, and every write goes to RocksDB and to the
    changelog; at a few presence samples a second per register that was most of the correlator's
    time. A value is written at once when `urgent` (something a crash must not lose: a pending or
    decided refund, an alert, a presence change, a new coverage interval) and otherwise at most every
    `flush_ms` of event time. Losing that much of a coverage extension in a crash leaves no gap as
    long as `flush_ms` plus the presence heartbeat stays under the coverage a sample vouches for
    (checked by the settings). The cache is dropped whenever partitions move.
    """

    def __init__(self, table: Any, factory: Any, flush_ms: int) -> None:
        self.table = table
        self.factory = factory
        self.flush_ms = flush_ms
        self.values: dict[str, Any] = {}
        self.written_ms: dict[str, int] = {}

    def get(self, key: str) -> Any:
        value = self.values.get(key)
        if value is None:
            value = self.table.get(key)
            if value is None:
                value = self.factory()
            self.values[key] = value
        return value

    def put(self, key: str, value: Any, urgent: bool, time_ms: int) -> None:
        self.values[key] = value
        if urgent or time_ms - self.written_ms.get(key, -self.flush_ms) >= self.flush_ms:
            self.table[key] = value
            self.written_ms[key] = time_ms

    def forget(self) -> None:
        self.values.clear()
        self.written_ms.clear()
