"""Scenario runner: replays scripted store scenarios through a real correlator and scores its alerts.

`python -m devplatform.scenarios [--dir DIR] [--keep-logs]` (`make scenarios`). Each JSON file in
DIR describes stores, a timeline of POS events, what each camera saw (at the FrameAnalysis level, as
inference would publish it) and the alerts that must follow (format: scenarios/README.md). The runner
starts Apache Kafka and one correlator for all of them, sends every scenario's detections and POS
events in event-time order, waits until the correlator has consumed everything and no alert comes
any more, and matches the alerts on sw.alerts.v1 to the expectations. It prints one line per
scenario and ends with a JSON line (precision, recall); the exit status is 0 only when both are 1
and no alert id was raised twice.

Scenarios share one chain and one correlator, so every store, camera, employee id and token is
prefixed with the scenario's file stem ("refund-ok.store-1"): chain-wide rules (return abuse, own
card) never mix scenarios. Event times are in the past (a fixed `start` plus seconds), which is how
the correlator sees a backlog replayed: its rules run on event time, not the wall clock.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import typing
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devplatform.launcher import ROOT, LaunchError, Platform, is_ours
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis, PersonObservation
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.rulesconfig import RULE_NAMES, merge
from services.shared.storeconfig import StoreConfig, StoreConfigError, load_store_config

DEFAULT_DIR = ROOT / "scenarios"
STEM = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
# Bags as the concealment rule knows them (services/correlator/rules.py BAG_LABELS).
BAGS = ("backpack", "handbag", "suitcase")
Pose = Literal["standing", "reaching", "hand_at_hip", "hand_in_bag"]
POSES: tuple[str, ...] = typing.get_args(Pose)
# What each named pose must read as through the correlator's own hand_cues: (reaching, concealing).
POSE_CUES = {"standing": (False, False), "reaching": (True, False), "hand_at_hip": (False, True), "hand_in_bag": (False, True)}
# Inference's tracker forgets a person unseen this long (DetectorStage.track_max_lost_s default).
TRACK_LOST_MS = 2000
# The correlator's tick for refunds whose camera stays silent (services/correlator/agents.py TICK_INTERVAL_S).
TICK_S = 5.0
# Detections and POS events not yet consumed, per partition: the runner writes at most this far ahead of
# the correlator, so a scenario's late messages still arrive after what the correlator has read.
MAX_UNCONSUMED_BYTES = 2 * 1024 * 1024
CORRELATOR_GROUP = topics.CORRELATOR_APP_ID
CONSUMED_TOPICS = (topics.DETECTIONS, topics.POS, topics.CAMERA_EVENTS, topics.RETURNS_BY_TOKEN, topics.TRANSACTIONS)
DLQ_TOPICS = tuple(topics.dlq(t) for t in CONSUMED_TOPICS)


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the field."""


# --- the format ------------------------------------------------------------------------------------

class _Strict(BaseModel):
    # populate_by_name: `register` is spelled register_id here (BaseModel has a `register` of its own).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in 0..1 of the frame


def _in_frame(box: Box | None) -> Box | None:
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"box {list(box)} is not [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return box


class PosSpec(_Strict):
    t: float = Field(ge=0)
    type: Literal["sale", "return", "refund", "void", "no_sale", "drawer_open"]
    store: str = ""
    register_id: str = Field(alias="register")
    id: str = Field(min_length=1)
    total: float = 0.0
    currency: str = "GBP"
    employee: str = ""
    card_token: str = ""
    customer_token: str = ""
    transaction: str = ""
    original_transaction: str = ""
    after_tender: bool = False
    repeat: int = Field(1, ge=1, le=10)
    # The POS clock's error: the event says t + clock_offset_s (default: the scenario's pos_clock_offset_s).
    clock_offset_s: float | None = None
    late: bool = False


class ZoneState(_Strict):
    person_present: bool | None = None
    person_count: int | None = Field(None, ge=0)
    track_ids: list[int] | None = None
    presence_score: float | None = Field(None, ge=0, le=1)
    object_count: int | None = Field(None, ge=0)
    new_object_count: int | None = Field(None, ge=0)
    anomaly: float = Field(0.0, ge=0)


ZoneVisits = list[str] | dict[str, float]


class PoseAt(_Strict):
    t: float
    pose: Pose


class PersonSpec(_Strict):
    track: int = Field(ge=1)
    zones: ZoneVisits = []
    first_seen: float | None = None
    box: Box | None = None
    score: float = Field(0.9, gt=0, le=1)
    pose: Pose | None = None
    poses: list[PoseAt] = []

    _box = field_validator("box")(_in_frame)

    @model_validator(mode="after")
    def _one_pose(self) -> PersonSpec:
        if self.pose and self.poses:
            raise ValueError("give either pose or poses, not both")
        return self


class ObjectSpec(_Strict):
    label: str
    box: Box
    track: int = Field(0, ge=0)
    zones: ZoneVisits = []
    first_seen: float | None = None
    score: float = Field(0.8, gt=0, le=1)

    _box = field_validator("box")(_in_frame)


class Segment(_Strict):
    t: float = Field(ge=0)
    until: float
    fps: float = Field(5.0, gt=0, le=30)
    anomaly: float = Field(0.0, ge=0)
    zones: dict[str, ZoneState] = {}
    persons: list[PersonSpec] = []
    objects: list[ObjectSpec] = []
    late: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.until <= self.t:
            raise ValueError(f"until {self.until} is not after t {self.t}")
        return self


class Expectation(_Strict):
    rule: str
    store: str = ""
    register_id: str = Field("", alias="register")
    camera: str = ""
    pos_event: str = ""
    track: int | None = None

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, rule: str) -> str:
        if rule not in RULE_NAMES:
            raise ValueError(f"unknown rule {rule!r} (one of {', '.join(RULE_NAMES)})")
        return rule

    def describe(self) -> str:
        parts = [self.rule] + [f"{k}={v}" for k, v in (("store", self.store), ("register", self.register_id), ("camera", self.camera),
                                                          ("pos_event", self.pos_event), ("track", self.track)) if v not in ("", None)]
        return " ".join(parts)


class ScenarioSpec(_Strict):
    description: str = ""
    start: datetime
    rules: dict[str, Any] = {}
    employees: list[dict[str, Any]] = []
    stores: list[dict[str, Any]] = Field(min_length=1)
    pos_clock_offset_s: float = 0.0
    pos: list[PosSpec] = []
    video: dict[str, list[Segment]] = {}
    expect: list[Expectation] = []

    @field_validator("start")
    @classmethod
    def _aware_past(cls, start: datetime) -> datetime:
        if start.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2026-11-27T14:00:00Z")
        if start >= datetime.now(UTC):
            raise ValueError("must lie in the past (event times in the future are refused by the correlator)")
        return start


# --- one loaded scenario -------------------------------------------------------------------------

@dataclass
class Outgoing:
    """One message to send: `late` ones go in a second round, after the first was consumed."""

    late: bool
    time_ms: int
    order: int
    topic: str
    key: str
    value: bytes


@dataclass
class Scenario:
    name: str
    path: Path
    spec: ScenarioSpec
    stores: list[dict[str, Any]]  # as they go into the generated store config (prefixed, defaults filled)
    employees: list[dict[str, Any]]
    start_ms: int

    def pid(self, local: str) -> str:
        """A scenario-local id as it appears in the shared chain."""
        return f"{self.name}.{local}" if local else ""

    @property
    def store_ids(self) -> list[str]:
        return [s["id"] for s in self.spec.stores]

    def store_of(self, given: str, what: str) -> str:
        if not given:
            if len(self.store_ids) != 1:
                raise ScenarioError(f"{self.path.name}: {what} names no store, and the scenario has {len(self.store_ids)}")
            return self.store_ids[0]
        if given not in self.store_ids:
            raise ScenarioError(f"{self.path.name}: {what}: store {given!r} is not one of {self.store_ids}")
        return given


def _default_polygon(index: int, count: int) -> list[list[float]]:
    """The index-th of `count` vertical strips of the frame."""
    x0, x1 = index / count, (index + 1) / count
    return [[round(x0, 4), 0.0], [round(x1, 4), 0.0], [round(x1, 4), 1.0], [round(x0, 4), 1.0]]


def _error_lines(exc: ValidationError) -> str:
    return "\n  ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors())


def load_scenario(path: Path) -> Scenario:
    name = path.stem
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path.name}: not readable JSON ({exc})") from None
    if not re.match(STEM, name):
        raise ScenarioError(f"{path.name}: the file stem prefixes ids, so it may hold only letters, digits, '_' and '-'")
    try:
        spec = ScenarioSpec.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(f"{path.name}:\n  {_error_lines(exc)}") from None
    scenario = Scenario(name, path, spec, [], [], int(spec.start.timestamp() * 1000))
    for raw_store in spec.stores:
        store = json.loads(json.dumps(raw_store))
        if "id" not in store:
            raise ScenarioError(f"{path.name}: a store without an id")
        store["id"] = scenario.pid(store["id"])
        store["rules"] = merge(spec.rules, store.get("rules", {}))
        for camera in store.get("cameras", []):
            camera["id"] = scenario.pid(camera.get("id", ""))
            camera.setdefault("source", "file:unused.mp4")
            if not {"detector", "presence"} & {s.get("kind") for s in camera.get("stages", [])}:
                camera["stages"] = [*camera.get("stages", []), {"kind": "detector"}]
            zones = camera.get("zones", [])
            for i, zone in enumerate(zones):
                zone.setdefault("polygon", _default_polygon(i, len(zones)))
        for register in store.get("registers", []):
            register["camera"] = scenario.pid(register.get("camera", ""))
        scenario.stores.append(store)
    scenario.employees = [{**e, "id": scenario.pid(e.get("id", "")), "tokens": [scenario.pid(t) for t in e.get("tokens", [])]} for e in spec.employees]
    config = scenario_config(scenario)  # validates the stores with the real schema
    _check_references(scenario, config)
    return scenario


def scenario_config(*scenarios: Scenario) -> StoreConfig:
    raw = {"chain": "scenarios", "stores": [s for sc in scenarios for s in sc.stores], "employees": [e for sc in scenarios for e in sc.employees]}
    try:
        return StoreConfig(**raw)
    except ValidationError as exc:
        where = scenarios[0].path.name if len(scenarios) == 1 else "scenarios"
        raise ScenarioError(f"{where}: stores do not validate as a store config:\n  {_error_lines(exc)}") from None


def _check_references(sc: Scenario, config: StoreConfig) -> None:
    cameras = {c.id: c for s in config.stores for c in s.cameras}
    for cam, segments in sc.spec.video.items():
        camera = cameras.get(sc.pid(cam))
        if camera is None:
            raise ScenarioError(f"{sc.path.name}: video of camera {cam!r}, which no store of the scenario has")
        zone_ids = {z.id for z in camera.zones}
        for segment in segments:
            named = set(segment.zones) | {z for p in segment.persons for z in p.zones} | {z for o in segment.objects for z in o.zones}
            unknown = sorted(named - zone_ids)
            if unknown:
                raise ScenarioError(f"{sc.path.name}: video of {cam} at t={segment.t:g}: zone(s) {unknown} are not zones of the camera ({sorted(zone_ids)})")
        ordered = sorted(segments, key=lambda s: s.t)
        for a, b in itertools.pairwise(ordered):
            if b.t < a.until:
                raise ScenarioError(f"{sc.path.name}: video of {cam}: segments at t={a.t:g} and t={b.t:g} overlap")
            if a.late and not b.late:
                raise ScenarioError(f"{sc.path.name}: video of {cam}: a late segment (t={a.t:g}) before one that is not: a camera's frames arrive in order")
    for i, event in enumerate(sc.spec.pos):
        sc.store_of(event.store, f"pos[{i}] ({event.id})")
    for i, exp in enumerate(sc.spec.expect):
        store_id = sc.store_of(exp.store, f"expect[{i}]")
        store = config.store(sc.pid(store_id))
        if exp.register_id and exp.register_id not in {r.id for r in store.registers} | {e.register_id for e in sc.spec.pos}:
            raise ScenarioError(f"{sc.path.name}: expect[{i}]: register {exp.register_id!r} is neither configured in {store_id} nor used by a POS event")
        if exp.camera and sc.pid(exp.camera) not in {c.id for c in store.cameras}:
            raise ScenarioError(f"{sc.path.name}: expect[{i}]: camera {exp.camera!r} is not a camera of {store_id}")
        if exp.pos_event and exp.pos_event not in {e.id for e in sc.spec.pos}:
            raise ScenarioError(f"{sc.path.name}: expect[{i}]: pos_event {exp.pos_event!r} is not the id of any POS event")
    last_s = max([e.t + (e.clock_offset_s if e.clock_offset_s is not None else sc.spec.pos_clock_offset_s) for e in sc.spec.pos]
                 + [s.until for segs in sc.spec.video.values() for s in segs] + [0.0])
    if sc.start_ms + last_s * 1000 > time.time() * 1000:
        raise ScenarioError(f"{sc.path.name}: events up to t={last_s:g}s lie in the future; move start back")


# --- messages ---------------------------------------------------------------------------------------

def _pos_message(sc: Scenario, event: PosSpec) -> PosEvent:
    offset = event.clock_offset_s if event.clock_offset_s is not None else sc.spec.pos_clock_offset_s
    return PosEvent(
        event_id=event.id, type=PosEventType.Value(f"POS_EVENT_TYPE_{event.type.upper()}"),
        store_id=sc.pid(sc.store_of(event.store, event.id)), register_id=event.register_id,
        transaction_id=event.transaction, employee_id=sc.pid(event.employee), event_time_ms=sc.start_ms + round((event.t + offset) * 1000),
        currency=event.currency, total_minor=round(event.total * 100), customer_token=sc.pid(event.customer_token),
        card_token=sc.pid(event.card_token), original_transaction_id=event.original_transaction, after_tender=event.after_tender,
    )


def _keypoints(box: Box, pose: str, bags: list[Box]) -> list[tuple[str, float, float]]:
    """COCO keypoints for a named pose, inside the person's box (x0, y0, x1, y1 in 0..1 of the frame).

    Body proportions in torso lengths (shoulder centre to hip centre, 0.3 of the box height): a
    hanging arm's wrist 0.35 below and 0.15 outside the hip; a reaching arm stretched 1.2 sideways
    at shoulder height (towards the middle of the frame); a hand at the hip 0.1 from it; a hand in a
    bag at the centre of the first bag in the frame.
    """
    x0, y0, x1, y1 = box
    height = y1 - y0
    cx = (x0 + x1) / 2
    torso = 0.3 * height
    sy, hy = y0 + 0.2 * height, y0 + 0.5 * height
    side = 1.0 if cx < 0.5 else -1.0  # the "working" arm points towards the frame's middle
    shoulder = {1.0: cx + 0.35 * torso, -1.0: cx - 0.35 * torso}
    hip = {1.0: cx + 0.25 * torso, -1.0: cx - 0.25 * torso}
    names = {1.0: "right", -1.0: "left"}
    points: list[tuple[str, float, float]] = [
        ("nose", cx, y0 + 0.06 * height), ("left_eye", cx - 0.08 * torso, y0 + 0.05 * height), ("right_eye", cx + 0.08 * torso, y0 + 0.05 * height),
        ("left_ear", cx - 0.18 * torso, y0 + 0.06 * height), ("right_ear", cx + 0.18 * torso, y0 + 0.06 * height),
    ]
    arms: dict[float, tuple[tuple[float, float], tuple[float, float]]] = {}
    for s in (1.0, -1.0):
        hanging = ((shoulder[s] + s * 0.1 * torso, sy + 0.55 * torso), (hip[s] + s * 0.15 * torso, hy + 0.35 * torso))
        arms[s] = hanging
    if pose == "reaching":
        arms[side] = ((shoulder[side] + side * 0.6 * torso, sy), (shoulder[side] + side * 1.2 * torso, sy - 0.1 * torso))
    elif pose == "hand_at_hip":
        arms[side] = ((shoulder[side] + side * 0.45 * torso, sy + 0.5 * torso), (hip[side] + side * 0.1 * torso, hy + 0.05 * torso))
    elif pose == "hand_in_bag":
        if not bags:
            raise ValueError("pose hand_in_bag needs a bag (backpack, handbag or suitcase) among the frame's objects")
        bx0, by0, bx1, by1 = bags[0]
        wrist = ((bx0 + bx1) / 2, (by0 + by1) / 2)
        arms[side] = (((shoulder[side] + wrist[0]) / 2, (sy + wrist[1]) / 2), wrist)
    for s in (1.0, -1.0):
        (ex, ey), (wx, wy) = arms[s]
        points += [(f"{names[s]}_shoulder", shoulder[s], sy), (f"{names[s]}_elbow", ex, ey), (f"{names[s]}_wrist", wx, wy),
                   (f"{names[s]}_hip", hip[s], hy), (f"{names[s]}_knee", hip[s], hy + 0.7 * torso), (f"{names[s]}_ankle", hip[s], y1)]
    return [(n, min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)) for n, x, y in points]


def check_pose(person: PersonObservation, pose: str, bags: list[Any]) -> None:
    """The named pose must read as intended through the correlator's own hand cues (default settings)."""
    from services.correlator.rules import hand_cues
    from services.shared.rulesconfig import Concealment

    defaults = Concealment()
    cues = hand_cues(person, bags, defaults.hand_reach, defaults.min_keypoint_score)
    if cues != POSE_CUES[pose]:
        raise ValueError(f"pose {pose} reads as reaching={cues[0]}, concealing={cues[1]} to the concealment rule, "
                         f"not {POSE_CUES[pose]}: move the person's box or the bag")


def _zone_box(polygon: list[tuple[float, float]]) -> Box:
    """A standing person whose feet are at the middle of the zone."""
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    x0 = min(max(cx - 0.06, 0.0), 0.88)
    y1 = max(cy, 0.3)
    return (x0, max(y1 - 0.4, 0.0), x0 + 0.12, y1)


@dataclass
class _Tracks:
    """What inference's tracker would say about a camera's tracks: since when seen, since when in each zone."""

    first_seen: dict[tuple[str, int], int] = field(default_factory=dict)
    last_seen: dict[tuple[str, int], int] = field(default_factory=dict)
    visits: dict[tuple[str, int, str], int] = field(default_factory=dict)
    visit_seen: dict[tuple[str, int, str], int] = field(default_factory=dict)

    def seen(self, kind: str, track: int, now: int, explicit: int | None) -> int:
        key = (kind, track)
        if explicit is not None:
            self.first_seen[key] = explicit
        elif key not in self.first_seen or now - self.last_seen.get(key, now) > TRACK_LOST_MS:
            self.first_seen[key] = now
        self.last_seen[key] = now
        return self.first_seen[key]

    def entered(self, kind: str, track: int, zones: ZoneVisits, now: int, start_ms: int) -> list[tuple[str, int]]:
        # Seen outside a zone ends the visit of it (inference's detector stage does the same).
        for key in [k for k in self.visits if k[:2] == (kind, track) and k[2] not in zones]:
            del self.visits[key]
        result = []
        for zone in zones:
            key = (kind, track, zone)
            if isinstance(zones, dict):
                self.visits[key] = start_ms + round(zones[zone] * 1000)
            elif key not in self.visits or now - self.visit_seen.get(key, now) > TRACK_LOST_MS:
                self.visits[key] = now
            self.visit_seen[key] = now
            result.append((zone, self.visits[key]))
        return result


def _pose_at(person: PersonSpec, t: float) -> str | None:
    if person.pose:
        return person.pose
    current = None
    for step in sorted(person.poses, key=lambda p: p.t):
        if step.t <= t + 1e-9:
            current = step.pose
    return current


def frame_messages(sc: Scenario, config: StoreConfig) -> Iterator[tuple[bool, int, str, FrameAnalysis]]:
    """(late, capture time, camera id, FrameAnalysis) for every frame of every camera of a scenario."""
    for cam, segments in sc.spec.video.items():
        store, camera = config.camera(sc.pid(cam))
        zones = {z.id: z for z in camera.zones}
        tracks = _Tracks()
        seq = 0
        for segment in sorted(segments, key=lambda s: s.t):
            count = int((segment.until - segment.t) * segment.fps + 1e-6)
            for i in range(count):
                t = segment.t + i / segment.fps
                now = sc.start_ms + round(t * 1000)
                seq += 1
                analysis = FrameAnalysis(store_id=store.id, camera_id=camera.id, capture_time_ms=now, frame_sequence=seq, anomaly_score=segment.anomaly)
                analysis.models.add(name="detector", version=1)
                observed = {z.id: analysis.zones.add(zone_id=z.id, kind=z.kind) for z in camera.zones}
                bags = []
                for obj in segment.objects:
                    first = tracks.seen("object", obj.track, now, None if obj.first_seen is None else sc.start_ms + round(obj.first_seen * 1000))
                    visits = tracks.entered("object", obj.track, obj.zones, now, sc.start_ms)
                    x0, y0, x1, y1 = obj.box
                    made = analysis.objects.add(label=obj.label, score=obj.score, track_id=obj.track, first_seen_ms=first,
                                                box={"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1},
                                                zones=[{"zone_id": z, "entered_ms": since} for z, since in visits])
                    if obj.label in BAGS:
                        bags.append(made)
                    for zone_id, since in visits:
                        zone = observed[zone_id]
                        zone.object_count += 1
                        zone.newest_object_entered_ms = max(zone.newest_object_entered_ms, since)
                        if now - since <= zones[zone_id].new_object_s * 1000:
                            zone.new_object_count += 1
                for spec in segment.persons:
                    first = tracks.seen("person", spec.track, now, None if spec.first_seen is None else sc.start_ms + round(spec.first_seen * 1000))
                    visits = tracks.entered("person", spec.track, spec.zones, now, sc.start_ms)
                    box = spec.box or (_zone_box(zones[visits[0][0]].polygon) if visits else (0.44, 0.3, 0.56, 0.7))
                    x0, y0, x1, y1 = box
                    person = analysis.persons.add(track_id=spec.track, score=spec.score, first_seen_ms=first, detected=True,
                                                  box={"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1},
                                                  zones=[{"zone_id": z, "entered_ms": since} for z, since in visits])
                    pose = _pose_at(spec, t)
                    if pose:
                        bag_boxes = [(b.box.xmin, b.box.ymin, b.box.xmax, b.box.ymax) for b in bags]
                        where = f"{sc.path.name}: video of {cam} at t={t:g}, track {spec.track}"
                        try:
                            for name, x, y in _keypoints(box, pose, bag_boxes):
                                person.keypoints.add(name=name, x=x, y=y, score=0.9)
                            check_pose(person, pose, bags)
                        except ValueError as exc:
                            raise ScenarioError(f"{where}: {exc}") from None
                    for zone_id, since in visits:
                        zone = observed[zone_id]
                        zone.person_count += 1
                        zone.track_ids.append(spec.track)
                        zone.person_present = True
                        zone.presence_score = max(zone.presence_score, spec.score)
                        zone.max_dwell_ms = max(zone.max_dwell_ms, now - since)
                for zone_id, state in segment.zones.items():
                    zone = observed[zone_id]
                    if state.person_count is not None:
                        zone.person_count = state.person_count
                    if state.track_ids is not None:
                        del zone.track_ids[:]
                        zone.track_ids.extend(state.track_ids)
                    zone.person_present = state.person_present if state.person_present is not None else zone.person_count > 0
                    if state.presence_score is not None:
                        zone.presence_score = state.presence_score
                    elif zone.person_present and zone.presence_score == 0:
                        zone.presence_score = 0.9
                    if state.object_count is not None:
                        zone.object_count = state.object_count
                    if state.new_object_count is not None:
                        zone.new_object_count = state.new_object_count
                        zone.object_count = max(zone.object_count, state.new_object_count)
                    zone.anomaly_score = state.anomaly
                yield segment.late, now, camera.id, analysis


def messages(sc: Scenario, config: StoreConfig) -> list[Outgoing]:
    """Every message of a scenario, in the order it is sent (late ones last, event time within each round)."""
    out: list[Outgoing] = []
    order = 0
    for late, now, camera_id, analysis in frame_messages(sc, config):
        out.append(Outgoing(late, now, order, topics.DETECTIONS, camera_id, analysis.SerializeToString(deterministic=True)))
        order += 1
    for spec in sc.spec.pos:
        event = _pos_message(sc, spec)
        for _ in range(spec.repeat):
            out.append(Outgoing(spec.late, sc.start_ms + round(spec.t * 1000), order, topics.POS, f"{event.store_id}:{event.register_id}",
                                event.SerializeToString(deterministic=True)))
            order += 1
    out.sort(key=lambda m: (m.late, m.time_ms, m.order))
    return out


def refund_waits(sc: Scenario, config: StoreConfig) -> list[tuple[str, float | None]]:
    """Per refund or return: (event id, None when decided at once, else its max_wait_s). A refund is
    decided as soon as its camera's frames pass the end of its windows; otherwise only once it has
    waited the correlator's max_wait_s (wall clock) for them."""
    from services.correlator.rules import REFUND_WITHOUT_CUSTOMER, REFUND_WITHOUT_MERCHANDISE, refund_window

    last_frame: dict[str, int] = defaultdict(int)
    for _late, now, camera_id, _analysis in frame_messages(sc, config):
        last_frame[camera_id] = max(last_frame[camera_id], now)
    result = []
    for spec in sc.spec.pos:
        if spec.type not in ("refund", "return"):
            continue
        event = _pos_message(sc, spec)
        store = config.store(event.store_id)
        register = next((r for r in store.registers if r.id == event.register_id), None)
        rules = config.rules_for(store.id, register_id=register.id if register else "")
        applicable = [r for r, on in ((REFUND_WITHOUT_CUSTOMER, rules.refund_without_customer.enabled),
                                      (REFUND_WITHOUT_MERCHANDISE, rules.refund_without_merchandise.enabled and bool(register and register.merchandise_zones))) if on]
        if not applicable:
            continue
        prompt = register is not None and all(last_frame.get(register.camera, 0) >= refund_window(r, event.event_time_ms, rules)[1] for r in applicable)
        result.append((f"{sc.name}/{spec.id}", None if prompt else rules.timing.max_wait_s))
    return result


# --- matching -------------------------------------------------------------------------------------------

def _matches(sc: Scenario, exp: Expectation, alert: Alert) -> bool:
    if alert.rule != exp.rule or alert.store_id != sc.pid(sc.store_of(exp.store, "expect")):
        return False
    if exp.register_id and alert.register_id != exp.register_id:
        return False
    if exp.camera and alert.camera_id != sc.pid(exp.camera):
        return False
    if exp.pos_event and exp.pos_event not in {e.ref for e in alert.evidence if e.kind == "pos_event"}:
        return False
    return not (exp.track is not None and alert.facts.get("track") != str(exp.track))


@dataclass
class Outcome:
    scenario: Scenario
    alerts: list[Alert]
    duplicates: list[Alert]
    matched: list[tuple[Expectation, Alert]] = field(default_factory=list)
    missed: list[Expectation] = field(default_factory=list)
    extra: list[Alert] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missed or self.extra or self.duplicates)


def match(sc: Scenario, alerts: list[Alert], duplicates: list[Alert]) -> Outcome:
    """Each expectation takes one alert that fits it (the most specific expectations choose first)."""
    outcome = Outcome(sc, alerts, duplicates)
    free = list(alerts)
    specificity = sorted(sc.spec.expect, key=lambda e: -(sum(1 for v in (e.register_id, e.camera, e.pos_event) if v) + (e.track is not None)))
    for exp in specificity:
        found = next((a for a in free if _matches(sc, exp, a)), None)
        if found is None:
            outcome.missed.append(exp)
        else:
            free.remove(found)
            outcome.matched.append((exp, found))
    outcome.extra = free
    return outcome


def _describe(alert: Alert) -> str:
    where = " ".join(f"{k}={v}" for k, v in (("register", alert.register_id), ("camera", alert.camera_id)) if v)
    events = [e.ref for e in alert.evidence if e.kind == "pos_event"]
    named = f" [pos events {', '.join(events)}]" if events else f" [track {alert.facts['track']}]" if "track" in alert.facts else ""
    return f"{alert.rule} {where} id={alert.alert_id}: {alert.explanation}{named}"


def report(outcome: Outcome, echo: Any = print) -> None:
    sc = outcome.scenario
    status = "PASS" if outcome.ok else "FAIL"
    echo(f"{status} {sc.name}: expected {len(sc.spec.expect)}, raised {len(outcome.alerts)}, matched {len(outcome.matched)}, "
         f"missed {len(outcome.missed)}, extra {len(outcome.extra)}" + (f", duplicates {len(outcome.duplicates)}" if outcome.duplicates else ""))
    for exp in outcome.missed:
        echo(f"    missed: {exp.describe()}")
    for alert in outcome.extra:
        echo(f"    extra: {_describe(alert)}")
    for alert in outcome.duplicates:
        echo(f"    duplicate (raised again): {_describe(alert)}")


def summary(outcomes: list[Outcome], dead_lettered: int = 0) -> dict[str, Any]:
    expected = sum(len(o.scenario.spec.expect) for o in outcomes)
    raised = sum(len(o.alerts) for o in outcomes)
    tp = sum(len(o.matched) for o in outcomes)
    return {"scenarios": len(outcomes), "expected": expected, "raised": raised, "true_positives": tp,
            "precision": round(tp / raised, 4) if raised else 1.0, "recall": round(tp / expected, 4) if expected else 1.0,
            "duplicates": sum(len(o.duplicates) for o in outcomes), "dead_lettered": dead_lettered}


# --- running ------------------------------------------------------------------------------------------

class _Collector(threading.Thread):
    """Reads sw.alerts.v1 and the correlator's DLQs from the beginning, in the background."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True, name="alert-collector")
        from confluent_kafka import Consumer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scenarios-{uuid.uuid4().hex[:8]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 3})
        self.consumer.subscribe([topics.ALERTS, *DLQ_TOPICS])
        self.alerts: list[Alert] = []
        self.dead: list[tuple[str, str, str]] = []  # (topic, key, error)
        self.last_alert = time.monotonic()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                msg = self.consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                with self.lock:
                    if msg.topic() == topics.ALERTS:
                        self.alerts.append(Alert.FromString(msg.value()))
                        self.last_alert = time.monotonic()
                    else:
                        headers = dict(msg.headers() or [])
                        key, error = msg.key(), headers.get("sw-error") or b""
                        self.dead.append((msg.topic() or "", key.decode(errors="replace") if isinstance(key, bytes) else str(key or ""),
                                          error.decode(errors="replace") if isinstance(error, bytes) else str(error)))
        except Exception as exc:  # reported by the runner, which then fails
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


class _Progress:
    """Knows how far the correlator has consumed its inputs (its group's committed offsets)."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Consumer

        # Same group as the correlator, never subscribed: it only reads the group's committed offsets.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": CORRELATOR_GROUP, "enable.auto.commit": False, "log_level": 3})

    def lag(self, topic_names: tuple[str, ...] = CONSUMED_TOPICS) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (committed, end offset) wherever the correlator is behind."""
        from confluent_kafka import TopicPartition

        parts = [TopicPartition(t, p) for t in topic_names for p in range(topics.PARTITIONS)]
        committed = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(parts, timeout=10)}
        behind = {}
        for tp in parts:
            _low, high = self.consumer.get_watermark_offsets(tp, timeout=10)
            done = max(committed[(tp.topic, tp.partition)], 0)
            if done < high:
                behind[(tp.topic, tp.partition)] = (done, high)
        return behind

    def close(self) -> None:
        self.consumer.close()


class _Sender:
    """Produces in order, never letting the correlator fall more than MAX_UNCONSUMED_BYTES behind in a partition."""

    def __init__(self, bootstrap: str, progress: _Progress, echo: Any) -> None:
        from services.shared.kafka import make_producer

        # log_level 3: no line when the broker goes away at the end of the run.
        self.producer = make_producer(bootstrap, log_level=3)
        self.progress = progress
        self.echo = echo
        self.sizes: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        self.failed: list[str] = []
        self.sent = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.sizes[(msg.topic(), msg.partition())].append((msg.offset(), len(msg.value() or b"")))

    def _throttle(self) -> None:
        self.producer.flush(30)
        waited = time.monotonic()
        while True:
            behind = self.progress.lag((topics.DETECTIONS, topics.POS))
            pending = {}
            for key, sizes in self.sizes.items():
                done = behind.get(key, (1 << 62, 0))[0]
                sizes[:] = [(o, n) for o, n in sizes if o >= done]
                pending[key] = sum(n for _o, n in sizes)
            if max(pending.values(), default=0) <= MAX_UNCONSUMED_BYTES // 2:
                return
            if time.monotonic() - waited > 5:
                self.echo(f"  letting the correlator catch up ({max(pending.values()) / 1e6:.1f} MB unconsumed in one partition)")
                waited = time.monotonic()
            time.sleep(0.5)

    def send(self, batch: list[Outgoing]) -> None:
        since_check = 0
        for m in batch:
            self.producer.produce(m.topic, key=m.key.encode(), value=m.value, on_delivery=self._delivered)
            self.producer.poll(0)
            self.sent += 1
            since_check += len(m.value)
            if since_check > MAX_UNCONSUMED_BYTES // 4:
                since_check = 0
                self._throttle()
        if self.producer.flush(30):
            raise RuntimeError("the broker did not acknowledge every message within 30 s")
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} messages were not delivered: {self.failed[0]}")

    def close(self) -> None:
        self.producer.close()


def load_dir(directory: Path) -> list[Scenario]:
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise ScenarioError(f"no scenario files (*.json) in {directory}")
    scenarios = [load_scenario(p) for p in paths]
    scenario_config(*scenarios)
    return scenarios


def _exit_status(pid: int) -> str:
    """How a child process of ours ended, reaping it."""
    try:
        _pid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def wait_for_quiet(platform: Platform, collector: _Collector, progress: _Progress, deadline_for_refunds: float, echo: Any,
                   quiet_s: float, limit_s: float) -> None:
    """Until the correlator consumed everything, every refund could be decided, and no alert came for quiet_s."""
    started = last_note = time.monotonic()
    while True:
        now = time.monotonic()
        if now - started > limit_s:
            raise RuntimeError(f"the correlator did not settle within {limit_s:.0f} s")
        if not is_ours(platform.components["correlator"]):
            raise RuntimeError(f"the correlator exited while the scenarios were running ({_exit_status(platform.components['correlator']['pid'])})")
        if collector.error:
            raise RuntimeError(f"reading alerts failed: {collector.error}")
        behind = progress.lag()
        with collector.lock:
            alerts, last_alert = len(collector.alerts), collector.last_alert
        refunds_left = max(0.0, deadline_for_refunds - now)
        if not behind and refunds_left == 0 and now - last_alert >= quiet_s:
            return
        if now - last_note >= 5:
            last_note = now
            left = sum(high - done for done, high in behind.values())
            state = f"{left} messages left to consume" if behind else "everything consumed"
            wait = f", refunds without video after their window decided in {refunds_left:.0f} s" if refunds_left else ""
            echo(f"  waiting: {state}, {alerts} alerts so far{wait}")
        time.sleep(0.5)


def run(directory: Path, keep_logs: bool = False, echo: Any = print, quiet_s: float = 4.0) -> int:
    try:
        scenarios = load_dir(directory)
        config = scenario_config(*scenarios)
        batches = [(sc, messages(sc, config), refund_waits(sc, config)) for sc in scenarios]
    except ScenarioError as exc:
        echo(f"scenario error: {exc}")
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="sw-scenarios-"))
    config_path = run_dir / "store-config.yaml"
    config_path.write_text(yaml.safe_dump({"chain": "scenarios", "stores": [s for sc in scenarios for s in sc.stores],
                                           "employees": [e for sc in scenarios for e in sc.employees]}, sort_keys=False))
    try:
        load_store_config(config_path)  # what the correlator will read, read the same way
    except StoreConfigError as exc:
        echo(f"generated store config is invalid: {exc}")
        shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    platform = Platform(run_dir=run_dir, store_config=config_path)
    collector: _Collector | None = None
    progress: _Progress | None = None
    sender: _Sender | None = None
    code = 1
    try:
        started = time.monotonic()
        platform.start_broker()
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        platform.start_service("correlator")
        echo(f"Kafka and correlator ready in {time.monotonic() - started:.1f}s (pids {platform.components['broker']['pid']}, "
             f"{platform.components['correlator']['pid']}); {len(scenarios)} scenarios from {directory}")
        collector = _Collector(bootstrap)
        collector.start()
        progress = _Progress(bootstrap)
        sender = _Sender(bootstrap, progress, echo)
        all_messages = [m for _sc, ms, _w in batches for m in ms]
        first = [m for m in all_messages if not m.late]
        late = [m for m in all_messages if m.late]
        # One event-time order across scenarios is not needed (they share nothing); per camera and
        # register it is, and each scenario's list is sorted already.
        sender.send(first)
        echo(f"  sent {len(first)} messages (detections and POS events)")
        if late:
            wait_for_quiet(platform, collector, progress, 0.0, echo, quiet_s=0.0, limit_s=300)
            sender.send(late)
            echo(f"  sent {len(late)} late messages, after the correlator had consumed the others")
        waits = [w for _sc, _ms, ws in batches for w in ws]
        slow = [name for name, wait in waits if wait is not None]
        deadline = 0.0
        if slow:
            # Refunds whose camera never passes their window are decided once they waited max_wait_s.
            max_wait = max(wait for _name, wait in waits if wait is not None)
            deadline = time.monotonic() + max_wait + TICK_S + 3
            echo(f"  {len(slow)} refund(s) without video past their window ({', '.join(slow[:4])}{'...' if len(slow) > 4 else ''}): "
                 f"decided after max_wait_s ({max_wait:g} s)")
        wait_for_quiet(platform, collector, progress, deadline, echo, quiet_s=quiet_s, limit_s=600)
        collector.stop()
        code = score(scenarios, collector, echo)
    except LaunchError as exc:
        echo(f"could not start: {exc}")
        code = 2
    except RuntimeError as exc:
        echo(f"failed: {exc}")
        tail = platform._tail("correlator") if "correlator" in platform.components else ""
        if tail:
            echo(f"  correlator log (last lines):\n{tail}")
        code = 1
    finally:
        if collector is not None and collector.is_alive():
            collector.stop()
        if sender is not None:
            sender.close()
        if progress is not None:
            progress.close()
        platform.down(echo=lambda *_: None)
        if keep_logs:
            echo(f"logs and the generated store config kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return code


def score(scenarios: list[Scenario], collector: _Collector, echo: Any) -> int:
    by_scenario: dict[str, list[Alert]] = defaultdict(list)
    duplicates: dict[str, list[Alert]] = defaultdict(list)
    seen = Counter[str]()
    names = sorted((sc.name for sc in scenarios), key=len, reverse=True)

    def owner(key: str) -> str:
        return next((n for n in names if key.startswith(n + ".")), "")

    for alert in collector.alerts:
        seen[alert.alert_id] += 1
        target = duplicates if seen[alert.alert_id] > 1 else by_scenario
        target[owner(alert.store_id)].append(alert)
    outcomes = [match(sc, by_scenario.pop(sc.name, []), duplicates.pop(sc.name, [])) for sc in scenarios]
    for outcome in outcomes:
        report(outcome, echo)
    stray = [a for alerts in by_scenario.values() for a in alerts]
    for alert in stray:
        echo(f"    alert for no scenario: {alert.store_id} {_describe(alert)}")
    for topic, key, error in collector.dead:
        echo(f"    dead-lettered by the correlator ({topic}, key {key}, scenario {owner(key) or '?'}): {error}")
    result = summary(outcomes, len(collector.dead))
    if stray:
        result["raised"] += len(stray)
        result["precision"] = round(result["true_positives"] / result["raised"], 4)
    echo(json.dumps(result))
    ok = result["precision"] == 1.0 and result["recall"] == 1.0 and not result["duplicates"] and not collector.dead
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devplatform.scenarios", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder of scenario files (*.json); default scenarios/")
    parser.add_argument("--keep-logs", action="store_true", help="keep the broker and correlator logs and the generated store config")
    args = parser.parse_args(argv)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run(args.dir, keep_logs=args.keep_logs, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted; broker and correlator stopped", flush=True)
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
