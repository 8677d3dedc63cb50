"""Typed state of the correlator's tables: dataclasses, stored as JSON through a Faust codec.

Each table holds one of these per key. Only what a rule needs to decide later is kept (changes, not
every sample), because every write goes to the table's changelog.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust


def _through_containers(kind: Any, convert: Callable[[Any], Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """Apply `convert`'s function for the items of a list, the values of a dict, an Optional's value;
    anything else passes as it is."""
    origin = typing.get_origin(kind)
    if origin is list:
        item = convert(typing.get_args(kind)[0])
        return lambda value: [item(v) for v in value]
    if origin is dict:
        item = convert(typing.get_args(kind)[1])
        return lambda value: {k: item(v) for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
        inner_convert = convert(inner)
        return lambda value: None if value is None else inner_convert(value)
    return lambda value: value


def _field_functions(kind: type, convert: Callable[[Any], Callable[[Any], Any]]) -> list[tuple[str, Callable[[Any], Any]]]:
    hints = typing.get_type_hints(kind)
    return [(f.name, convert(hints[f.name])) for f in dataclasses.fields(kind)]


@functools.cache
def _decoder(kind: Any) -> Callable[[Any], Any]:
    """A function that rebuilds `kind` from its JSON form, made once per type (type hints are
    resolved here, not on every read: tables are read on the hot path)."""
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        fields, cls = _field_functions(kind, _decoder), kind

        def dataclass_from(value: dict) -> Any:
            return cls(**{name: decode(value[name]) for name, decode in fields if name in value})
        return dataclass_from
    return _through_containers(kind, _decoder)


@functools.cache
def _encoder(kind: Any) -> Callable[[Any], Any]:
    """The JSON form of `kind`, made once per type: dataclasses.asdict deep-copies every value and
    was most of the cost of a table write."""
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        fields = _field_functions(kind, _encoder)
        return lambda value: {name: encode(getattr(value, name)) for name, encode in fields}
    return _through_containers(kind, _encoder)


class StateCodec(faust.Codec):
    """Serialises one state dataclass as compact JSON; a table with it holds typed values."""

    def __init__(self, kind: type, **kwargs: Any) -> None:
        self.kind = kind
        super().__init__(kind=kind, **kwargs)

    def _dumps(self, obj: Any) -> bytes:
        return json.dumps(_encoder(self.kind)(obj), separators=(",", ":")).encode()

    def _loads(self, data: bytes) -> Any:
        return _decoder(self.kind)(json.loads(data))

    def clone(self, *children: Any) -> StateCodec:  # faust combines codecs with `|`; keep the kind
        return type(self)(self.kind, children=(*self.children, *children))


# --- registers: store:register --------------------------------------------------------------------

@dataclass
class Change:
    """What the camera reported from this moment on: customer present, merchandise (-1: not observed)."""

    time_ms: int
    customer: bool
    merchandise: int
    seq: int


@dataclass
class Coverage:
    """The camera reported continuously over [start_ms, end_ms] (a sample vouches for max_gap_ms)."""

    start_ms: int
    end_ms: int
    start_seq: int


@dataclass
class PendingRefund:
    event_id: str
    event_time_ms: int
    received_ms: int
    # The PosEvent as serialized protobuf, base64: the alert quotes it when decided.
    event: str
    # The refund rules still to decide, each when the camera passes its own window.
    rules: list[str] = field(default_factory=list)


@dataclass
class DrawerOpen:
    event_id: str
    time_ms: int
    employee_id: str


@dataclass
class RegisterState:
    """What a register's camera saw, and its refunds waiting for it. Kept by the camera's partition
    (key store:register), so frames update it in process without another hop."""

    changes: list[Change] = field(default_factory=list)
    covered: list[Coverage] = field(default_factory=list)
    watermark_ms: int = 0
    watermark_seq: int = 0
    camera_id: str = ""
    # Wall time the last sample was taken in: a camera silent this long lets refunds time out.
    sample_received_ms: int = 0
    pending: list[PendingRefund] = field(default_factory=list)
    # Refunds already decided (newest last, bounded): a replayed refund raises nothing new.
    decided: list[str] = field(default_factory=list)


@dataclass
class TillState:
    """A register's POS-only history (key store:register, on the POS partition)."""

    drawer_opens: list[DrawerOpen] = field(default_factory=list)
    # Per employee: no further no-sale alert before this event time (one alert per shift).
    no_sale_quiet_until: dict[str, int] = field(default_factory=dict)
    # Events already acted on (newest last, bounded): a replayed POS event raises nothing new.
    decided: list[str] = field(default_factory=list)


# --- camera: camera id ---------------------------------------------------------------------------

@dataclass
class Visit:
    """A tracked person's visit of a high_value or exit zone, for the concealment and loitering rules."""

    entered_ms: int
    last_ms: int
    # Whether the person reached out (a wrist away from the body) since entering: the shelf.
    reached: bool = False
    # Last n frames as bits (newest lowest): pose cue after reaching, anomaly above level.
    pose_bits: int = 0
    anomaly_bits: int = 0
    first_cue_seq: int = 0
    # Since when nobody else has been in the zone with the person (0: someone is).
    alone_since_ms: int = 0
    # Frames of this visit with a concealment cue (hand to waist, pocket or bag after reaching).
    cue_frames: int = 0


@dataclass
class ZoneStay:
    """A track's current visit of a zone the storewide rules follow (high_value, counter_customer,
    exit, staff_only, a handover's zone), as its camera has reported it to the store so far."""

    entered_ms: int
    last_ms: int
    first_seq: int
    last_seq: int
    # From the pose stage, in high_value zones: keypoints were seen, and an arm reached out.
    posed: bool = False
    reached: bool = False


@dataclass
class CameraState:
    # "track:zone" -> visit
    visits: dict[str, Visit] = field(default_factory=dict)
    # "track:zone" -> the stay reported to the store's journeys (enter sent, leave still to send).
    stays: dict[str, ZoneStay] = field(default_factory=dict)
    # Alert keys raised (rule episodes) -> event time, kept a day, so a replay pages nobody twice.
    raised: dict[str, int] = field(default_factory=dict)
    # Track id -> capture time of the person's first concealment cue on this camera (kept an hour):
    # loitering's shorter `*_cue_s` limits apply to them from then on, in any zone.
    cues: dict[str, int] = field(default_factory=dict)


# --- store: a person's way through the store, across its cameras ----------------------------------

@dataclass
class TrackStep:
    """What a camera tells its store about one track (on sw.correlator.store-steps.v1, key: store):
    it entered or left a followed zone, crossed a door line, or (kind "clock") the camera's event
    time reached `time_ms`. Idempotent to apply: a replayed step changes nothing."""

    kind: str  # "enter", "leave", "cross", "clock"
    store_id: str
    camera_id: str
    time_ms: int
    track_id: int = 0
    zone_id: str = ""
    zone_kind: str = ""
    entered_ms: int = 0
    first_seen_ms: int = 0
    first_seq: int = 0
    last_seq: int = 0
    posed: bool = False
    reached: bool = False
    # A leave because the track ended (walked out of view), not because it moved out of the zone.
    gone: bool = False
    line_id: str = ""
    direction: str = ""


@dataclass
class HighValueVisit:
    camera_id: str
    track_id: int
    zone_id: str
    entered_ms: int
    # When last seen in the zone (0: still there).
    left_ms: int = 0
    first_seq: int = 0
    last_seq: int = 0
    posed: bool = False
    reached: bool = False
    # An exit after it was judged by checkout bypass: a second exit step (door line and exit zone) raises nothing more.
    judged: bool = False


@dataclass
class StoreExit:
    camera_id: str
    track_id: int
    time_ms: int
    # "door line <id>" or "exit zone <id>"
    how: str
    seq: int = 0


@dataclass
class Journey:
    """One person's way through the store: their tracks (linked by handovers), high-value visits,
    till visits and exits waiting to be decided."""

    # "camera:track", the first one names the person.
    tracks: list[str] = field(default_factory=list)
    last_ms: int = 0
    # Where and when the first track was first seen in a followed zone ("camera:zone"), so a
    # handover's departure reported after the new track's first step still links them.
    first_zone: str = ""
    first_ms: int = 0
    visits: list[HighValueVisit] = field(default_factory=list)
    # When the person entered a counter_customer (till) zone.
    checkouts: list[int] = field(default_factory=list)
    staff: bool = False
    exits: list[StoreExit] = field(default_factory=list)
    decided_exits: list[str] = field(default_factory=list)
    # No further repeat_visits alert before this event time (one per person and period).
    repeat_quiet_until_ms: int = 0
    # A new track two departed people could be: never joined to either.
    ambiguous: bool = False


@dataclass
class Departure:
    """A track that walked out of view from a handover's zone: the next camera's new track may be them."""

    track: str
    camera_id: str
    zone_id: str
    time_ms: int
    # Wall time it was noted: a neighbouring camera never heard from is waited for this long at most.
    noted_ms: int = 0


@dataclass
class StoreJourneys:
    # person id -> journey
    people: dict[str, Journey] = field(default_factory=dict)
    # "camera:track" -> person id
    tracks: dict[str, str] = field(default_factory=dict)
    departures: list[Departure] = field(default_factory=list)
    # camera -> the latest event time it reported, and the wall time its last step came in
    clocks: dict[str, int] = field(default_factory=dict)
    heard: dict[str, int] = field(default_factory=dict)
    # Wall time the first step came in: a camera never heard from is waited for SILENT_CAMERA_MS from then.
    started_ms: int = 0


# --- chain-wide returns: card or customer token --------------------------------------------------

@dataclass
class TokenReturn:
    event_id: str
    time_ms: int
    store_id: str
    register_id: str
    total_minor: int


@dataclass
class TokenState:
    returns: list[TokenReturn] = field(default_factory=list)
    quiet_until_ms: int = 0


# --- transactions: store:transaction ---------------------------------------------------------------

@dataclass
class TransactionState:
    sale_employee: str = ""
    sale_time_ms: int = 0
    sale_register: str = ""
    sale_seen: bool = False
    # Refunds of this sale that arrived before it (base64 PosEvents), decided when it comes.
    waiting: list[str] = field(default_factory=list)
    decided: list[str] = field(default_factory=list)


# --- feedback: store -----------------------------------------------------------------------------

@dataclass
class RuleFeedback:
    confirmed: int = 0
    false_alarm: int = 0
    # Threshold multiplier from feedback (1: as configured; above: fewer alerts).
    factor: float = 1.0


@dataclass
class FeedbackState:
    rules: dict[str, RuleFeedback] = field(default_factory=dict)
    # Verdict per alert id (bounded, oldest dropped), so a replayed or changed verdict counts once.
    verdicts: dict[str, int] = field(default_factory=dict)
