"""The scenario file format (pydantic), loading, and validation against the real store config schema.

Each JSON file describes stores, a timeline of POS events, what each camera saw (at the FrameAnalysis
level, as inference would publish it) and the alerts that must follow (format: scenarios/README.md).
Scenarios share one chain, so every store, camera, employee id and token is prefixed with the
scenario's file stem ("refund-ok.store-1"): chain-wide rules (return abuse, own card) never mix them.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devplatform.launcher import ROOT
from services.shared.rulesconfig import RULE_NAMES, merge
from services.shared.storeconfig import StoreConfig

DEFAULT_DIR = ROOT / "scenarios"
STEM = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Pose = Literal["standing", "reaching", "hand_at_hip", "hand_in_bag"]
POSES: tuple[str, ...] = typing.get_args(Pose)


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


# The zones a person or object is in: their ids, or id -> t it entered (seconds from the scenario's start).
VisitedZones = list[str] | dict[str, float]


class PoseAt(_Strict):
    t: float
    pose: Pose


class CrossSpec(_Strict):
    """A counting line the person crosses: reported in the segment's first frame at or after `t`."""

    line: str
    direction: Literal["in", "out"]
    t: float = Field(ge=0)


class PersonSpec(_Strict):
    track: int = Field(ge=1)
    zones: VisitedZones = []
    first_seen: float | None = None
    box: Box | None = None
    score: float = Field(0.9, gt=0, le=1)
    pose: Pose | None = None
    poses: list[PoseAt] = []
    crosses: list[CrossSpec] = []

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
    zones: VisitedZones = []
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


class IncidentExpectation(_Strict):
    """An incident that must come out of folding the scenario's alerts (services/shared/incidents.py):
    exactly these rules among its reasons, and, where given, a reason at this store, camera,
    register or naming this POS event."""

    rules: list[str] = Field(min_length=1)
    store: str = ""
    register_id: str = Field("", alias="register")
    camera: str = ""
    pos_event: str = ""

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: list[str]) -> list[str]:
        unknown = [r for r in rules if r not in RULE_NAMES]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown} (one of {', '.join(RULE_NAMES)})")
        return sorted(set(rules))

    def describe(self) -> str:
        parts = ["+".join(self.rules)] + [f"{k}={v}" for k, v in (("store", self.store), ("register", self.register_id), ("camera", self.camera),
                                                                    ("pos_event", self.pos_event)) if v]
        return "incident " + " ".join(parts)


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
    # None: the scenario says nothing about incidents; [] : it expects none.
    incidents: list[IncidentExpectation] | None = None

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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path.name}: not readable JSON ({exc})") from None
    return build_scenario(path, raw)


def build_scenario(path: Path, raw: Any) -> Scenario:
    """A scenario from its parsed JSON; `path` names it (its stem prefixes the ids) and its errors,
    and need not exist (a generated scenario such as the busy day)."""
    name = path.stem
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
        for handover in store.get("handovers", []):
            for end in ("from", "to"):
                if isinstance(handover.get(end), dict):
                    handover[end]["camera"] = scenario.pid(handover[end].get("camera", ""))
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
        line_ids = {line.id for line in camera.lines}
        for segment in segments:
            named = set(segment.zones) | {z for p in segment.persons for z in p.zones} | {z for o in segment.objects for z in o.zones}
            unknown = sorted(named - zone_ids)
            if unknown:
                raise ScenarioError(f"{sc.path.name}: video of {cam} at t={segment.t:g}: zone(s) {unknown} are not zones of the camera ({sorted(zone_ids)})")
            for person in segment.persons:
                for cross in person.crosses:
                    if cross.line not in line_ids:
                        raise ScenarioError(f"{sc.path.name}: video of {cam} at t={segment.t:g}: track {person.track} crosses line {cross.line!r}, "
                                            f"which is not a line of the camera ({sorted(line_ids)})")
                    if not segment.t <= cross.t < segment.until:
                        raise ScenarioError(f"{sc.path.name}: video of {cam}: track {person.track} crosses {cross.line} at t={cross.t:g}, "
                                            f"outside its segment ({segment.t:g} to {segment.until:g})")
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
    for i, inc in enumerate(sc.spec.incidents or []):
        store = config.store(sc.pid(sc.store_of(inc.store, f"incidents[{i}]")))
        if inc.register_id and inc.register_id not in {r.id for r in store.registers} | {e.register_id for e in sc.spec.pos}:
            raise ScenarioError(f"{sc.path.name}: incidents[{i}]: register {inc.register_id!r} is neither configured in {store.id} nor used by a POS event")
        if inc.camera and sc.pid(inc.camera) not in {c.id for c in store.cameras}:
            raise ScenarioError(f"{sc.path.name}: incidents[{i}]: camera {inc.camera!r} is not a camera of {store.id}")
        if inc.pos_event and inc.pos_event not in {e.id for e in sc.spec.pos}:
            raise ScenarioError(f"{sc.path.name}: incidents[{i}]: pos_event {inc.pos_event!r} is not the id of any POS event")
    last_s = max([e.t + (e.clock_offset_s if e.clock_offset_s is not None else sc.spec.pos_clock_offset_s) for e in sc.spec.pos]
                 + [s.until for segs in sc.spec.video.values() for s in segs] + [0.0])
    if sc.start_ms + last_s * 1000 > time.time() * 1000:
        raise ScenarioError(f"{sc.path.name}: events up to t={last_s:g}s lie in the future; move start back")


def load_dir(directory: Path) -> list[Scenario]:
    """Every scenario file of a folder, checked together: their prefixed stores make one valid chain."""
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise ScenarioError(f"no scenario files (*.json) in {directory}")
    scenarios = [load_scenario(p) for p in paths]
    scenario_config(*scenarios)
    return scenarios
