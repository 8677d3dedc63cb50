"""The chain's store configuration: stores, cameras with zones, registers. One file, validated once.

Every service reads the part it needs. A bad file fails at start with the path of the bad field
(for example `stores.0.registers.0.customer_zones`), never with a KeyError later.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from datetime import date
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict

from services.shared.coco import coco_names
from services.shared.returnpolicy import ReturnPolicy
from services.shared.rulesconfig import RulesConfig, resolve

ZoneKind = Literal["counter_customer", "counter_merchandise", "high_value", "exit", "staff_only", "aisle"]
log = logging.getLogger(__name__)
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _duplicates(ids: Sequence[str]) -> list[str]:
    return sorted({i for i in ids if ids.count(i) > 1})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _inside_frame(polygon: list[tuple[float, float]]) -> list[tuple[float, float]]:
    for x, y in polygon:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"vertex ({x}, {y}) is outside the frame; use coordinates normalised to 0..1")
    return polygon


def _valid_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    RulesConfig.model_validate(overrides)
    return overrides


# Rule settings that differ here from the level above (see services/shared/rulesconfig.py).
RuleOverrides = Annotated[dict[str, Any], AfterValidator(_valid_overrides)]


# (x, y) vertices normalised to the frame, 0..1, so polygons survive a change of resolution.
Polygon = Annotated[list[tuple[float, float]], Field(min_length=3), AfterValidator(_inside_frame)]


class Zone(_Strict):
    id: str = Field(pattern=_ID)
    kind: ZoneKind
    polygon: Polygon
    # Fraction of the zone that must be covered by a person before it counts as occupied.
    min_occupancy: float = Field(0.03, gt=0, le=1)
    # An object counts as new in the zone for this long after it arrived (FrameAnalysis
    # new_object_count); what lies there longer (a card reader, a display) is part of the scene.
    new_object_s: float = Field(300.0, gt=0, le=86400)
    # Loitering and concealment settings for this zone only.
    rules: RuleOverrides = {}


class MotionGate(_Strict):
    """Send frames with motion, and a keyframe now and then so models still see a static scene."""

    enabled: bool = True
    # Fraction of the frame (outside privacy masks) that must differ from the background model.
    threshold: float = Field(0.003, ge=0, le=1)
    # A static scene still sends one frame this often (keep it under the correlator's coverage gap, 3 s).
    keyframe_interval_s: float = Field(2.0, gt=0, le=3600)
    # Keep sending this long after motion stops, so models see the scene settle (someone leaving).
    hold_s: float = Field(1.0, ge=0, le=60)
    # While frames are held back, an imageless heartbeat Frame goes out whenever nothing was sent for
    # this long: the correlator decides only once the camera's event time passes a window's end, so a
    # still scene would otherwise hold decisions back by up to a keyframe interval. At most 1 s, so
    # decisions come within a second of a window closing and a crash leaves no coverage gap.
    heartbeat_s: float = Field(0.5, gt=0, le=1)


class PresenceStage(_Strict):
    """Background difference against the empty scene: a cheap cue, no identities (needs an empty-scene clip)."""

    kind: Literal["presence"]
    model: str = "presence"


class AnomalyStage(_Strict):
    """The camera's own anomaly model (trained on its normal footage): a score per frame and per zone."""

    kind: Literal["anomaly"]
    model: str


class TileGrid(_Strict):
    """Overlapping tiles at the detector's own input size, so far and small people are found."""

    rows: int = Field(2, ge=1, le=4)
    cols: int = Field(2, ge=1, le=4)
    # Fraction of a tile shared with its neighbour, so a person on a seam is whole in one tile.
    overlap: float = Field(0.2, ge=0, lt=0.5)
    # Also run on the whole frame, for people too large for one tile.
    whole_frame: bool = True


# COCO classes that matter at a counter or a shelf; other detections are dropped.
DEFAULT_OBJECTS = ["backpack", "handbag", "suitcase", "umbrella", "bottle", "wine_glass", "cup", "cell_phone", "book", "laptop",
                   "scissors", "remote", "keyboard", "mouse", "teddy_bear", "clock", "vase", "sports_ball", "knife"]


class DetectorStage(_Strict):
    """Persons and objects with the TF Object Detection API signature, tracked between frames."""

    kind: Literal["detector"]
    model: str = "detector"
    # Detections below this score never start a track; a tracked person half hidden keeps their track on
    # detections down to a quarter of it (reported with that lower score).
    min_score: float = Field(0.4, gt=0, le=1)
    # Run the detector at most this often per second (None: every frame); the tracker carries people between.
    detect_fps: float | None = Field(None, gt=0, le=60)
    tiles: TileGrid | None = None
    # Which point of a box decides the zone: the feet (cameras at an angle) or the centre (cameras overhead).
    anchor: Literal["foot", "center"] = "foot"
    objects: list[str] = Field(default_factory=lambda: list(DEFAULT_OBJECTS))

    @field_validator("objects")
    @classmethod
    def _coco_names(cls, names: list[str]) -> list[str]:
        known = set(coco_names().values())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown COCO class(es) {unknown}; names are like {sorted(known)[:6]}...")
        return names
    # A person unseen this long is a new person when seen again.
    track_max_lost_s: float = Field(2.0, gt=0, le=60)


class PoseStage(_Strict):
    """Keypoints per tracked person (needs a detector stage): hands to waist or bag, crouching."""

    kind: Literal["pose"]
    model: str = "pose"
    # Persons shorter than this (pixels of the sent frame) are too small for keypoints.
    min_person_px: int = Field(48, ge=16)


Stage = Annotated[PresenceStage | AnomalyStage | DetectorStage | PoseStage, Field(discriminator="kind")]


class Line(_Strict):
    """A counting line on a camera's picture: people whose tracked foot point crosses it are counted,
    each crossing once (services/inference/lines.py).

    `inside` is a point on the side people are counted "in" towards (the shop floor, for a door), so
    the direction never depends on which end of the line was drawn first.
    """

    id: str = Field(pattern=_ID)
    # `door`: an entrance or exit of the store (people in the store, checkout bypass); `count`: counted only.
    kind: Literal["door", "count"] = "count"
    # Normalised (x, y) vertices, 0..1, at least two: a polyline along the floor.
    points: Annotated[list[tuple[float, float]], Field(min_length=2, max_length=32), AfterValidator(_inside_frame)]
    inside: tuple[float, float]
    # A foot point within this distance of the line (fraction of the frame) is on it, and changes no
    # side: a track that jitters on the line is counted once, when it is clearly across.
    margin: float = Field(0.01, ge=0, le=0.2)
    # Detections in a row a track must be seen on the new side before the crossing counts (a box
    # that jumps across for one frame is not a person crossing).
    confirm_frames: int = Field(2, ge=1, le=10)

    @model_validator(mode="after")
    def _inside_off_the_line(self) -> Line:
        _inside_frame([self.inside])
        if any(a == b for a, b in zip(self.points, self.points[1:], strict=False)):
            raise ValueError("points: two consecutive points are the same")
        nearest = min(zip(self.points, self.points[1:], strict=False), key=lambda seg: distance_to_segment(seg[0], seg[1], self.inside))
        if distance_to_segment(nearest[0], nearest[1], self.inside) <= self.margin:
            raise ValueError(f"inside {list(self.inside)} lies on the line (within its margin {self.margin}); put it clearly on the side counted as in")
        return self


def distance_to_segment(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> float:
    """Euclidean distance from p to the segment a-b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / (dx * dx + dy * dy)))
    return float(((p[0] - a[0] - t * dx) ** 2 + (p[1] - a[1] - t * dy) ** 2) ** 0.5)
# Marks the camera fields only inference reads (ingest neither reconnects nor restarts for them).
_FOR_INFERENCE: JsonDict = {"read_by": "inference"}
_OLD_MODEL_FIELDS = ("presence_model", "anomaly_model", "detector_model", "detector_min_score")


class Camera(_Strict):
    id: str = Field(pattern=_ID)
    # file:PATH (relative to the config file), rtsp://, http(s):// or device:N.
    source: str
    fps: float = Field(10.0, gt=0, le=60)
    width: int = Field(320, ge=32, le=3840)
    height: int = Field(240, ge=32, le=2160)
    jpeg_quality: int = Field(85, ge=10, le=100)
    # A frame whose JPEG is larger is encoded again at lower quality, down to min_jpeg_quality; one
    # still too large is dropped and counted. Stays under Kafka's default 1 MB message size.
    max_jpeg_bytes: int = Field(256 * 1024, ge=4096, le=1_000_000)
    min_jpeg_quality: int = Field(40, ge=10, le=100)
    motion: MotionGate = MotionGate()
    # Areas filled black before a frame leaves the store (and ignored by motion detection).
    privacy_masks: list[Polygon] = []
    # Pixelate frontal faces (OpenCV's Haar cascade, shipped in the opencv-python wheel). Best effort:
    # a turned or small face can be missed; privacy_masks are the guarantee.
    blur_faces: bool = False
    # The models inference runs on this camera's frames (each names its models.config model), at most one of each kind.
    stages: list[Stage] = Field([], json_schema_extra=_FOR_INFERENCE)
    zones: list[Zone] = Field([], json_schema_extra=_FOR_INFERENCE)
    # Counting lines (doors, aisle ends), crossed by tracked people's foot points (needs a detector stage).
    lines: list[Line] = Field([], json_schema_extra=_FOR_INFERENCE)

    @model_validator(mode="before")
    @classmethod
    def _no_old_model_fields(cls, raw: object) -> object:
        if isinstance(raw, dict) and any(key in raw for key in _OLD_MODEL_FIELDS):
            old = [key for key in _OLD_MODEL_FIELDS if key in raw]
            raise ValueError(f"{', '.join(old)} were replaced by `stages`, e.g. stages: [{{kind: detector, model: detector}}, {{kind: anomaly, model: anomaly}}]")
        return raw

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, source: str) -> str:
        if not re.match(r"^(file:|rtsp://|https?://|device:\d+$)", source):
            raise ValueError("must start with file:, rtsp://, http://, https:// or be device:N")
        if "://" in source:
            try:
                url = urlsplit(source)
                url.port  # noqa: B018 (raises on a port that is not a number)
            except ValueError:
                raise ValueError("is not a valid URL (characters such as / ? # @ in a password must be percent-encoded)") from None
            if not url.hostname:
                raise ValueError("has no host name")
        return source

    @model_validator(mode="after")
    def _consistent(self) -> Camera:
        if self.min_jpeg_quality > self.jpeg_quality:
            raise ValueError(f"min_jpeg_quality {self.min_jpeg_quality} is above jpeg_quality {self.jpeg_quality}")
        dupes = _duplicates([z.id for z in self.zones])
        if dupes:
            raise ValueError(f"duplicate zone id(s) {dupes}")
        kinds = [s.kind for s in self.stages]
        if _duplicates(kinds):
            raise ValueError(f"more than one {_duplicates(kinds)[0]} stage: a camera runs each kind of stage at most once")
        if "pose" in kinds and "detector" not in kinds:
            raise ValueError("a pose stage needs a detector stage (keypoints are found on tracked persons)")
        if _duplicates([line.id for line in self.lines]):
            raise ValueError(f"duplicate line id(s) {_duplicates([line.id for line in self.lines])}")
        if self.lines and "detector" not in kinds:
            raise ValueError("lines need a detector stage (they count tracked persons)")
        return self

    @classmethod
    def inference_fields(cls) -> set[str]:
        """The fields only inference reads, from the model's own declarations."""
        return {name for name, info in cls.model_fields.items() if info.json_schema_extra == _FOR_INFERENCE}

    def stage(self, kind: str) -> PresenceStage | AnomalyStage | DetectorStage | PoseStage | None:
        return next((s for s in self.stages if s.kind == kind), None)

    def zone(self, zone_id: str) -> Zone:
        return next(z for z in self.zones if z.id == zone_id)


class CameraZone(_Strict):
    camera: str
    zone: str


class Handover(_Strict):
    """Where one camera's view continues in another's, so a person's journey carries on across them
    (checkout bypass, repeat visits) with no face recognition: a track that leaves `from_` camera's
    view from its zone, and a new track first seen in `to` camera's zone within `within_s`, are the
    same person. Only an unambiguous pair is linked: two people leaving together link to nobody."""

    from_: CameraZone = Field(alias="from")
    to: CameraZone
    within_s: float = Field(10.0, gt=0, le=300)
    # Also the way back (to's zone -> from's zone): most doorways and aisle ends are walked both ways.
    both_ways: bool = True

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Register(_Strict):
    id: str = Field(pattern=_ID)
    camera: str
    customer_zones: list[str] = Field(min_length=1)
    merchandise_zones: list[str] = []
    rules: RuleOverrides = {}


class OpeningHours(_Strict):
    open: dtime
    close: dtime

    @model_validator(mode="after")
    def _not_empty(self) -> OpeningHours:
        if self.open == self.close:
            raise ValueError(f"open and close are both {self.open}: leave opening_hours out for a store that never closes")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class StaffShift(_Strict):
    """A time in which people are expected on camera while the store is closed (cleaners, a
    stock-take, a delivery), in store time: after_hours does not fire for them. Loitering still
    applies, presence outside the window still raises after_hours, and so do more people than
    `max_persons` on one camera."""

    name: str = Field(min_length=1, max_length=64)
    # Weekdays the shift starts on (default: every day); weekly shifts skip the store's holidays.
    days: tuple[Weekday, ...] | None = Field(None, min_length=1)
    # Or the dates it starts on instead (a stock-take), holidays included.
    dates: tuple[date, ...] = ()
    start: dtime
    # Before `start`: the shift runs past midnight into the next day.
    end: dtime
    # Cameras the shift is expected on (default: every camera of the store).
    cameras: tuple[str, ...] = ()
    # More people than this on one camera still raise after_hours (default: any number).
    max_persons: int | None = Field(None, ge=1, le=1000)

    @model_validator(mode="after")
    def _a_window(self) -> StaffShift:
        if self.start == self.end:
            raise ValueError(f"end: equals start {self.start}; a shift needs a length (an end before start runs past midnight)")
        if self.days is not None and self.dates:
            raise ValueError("days, dates: give the weekdays of a weekly shift or the dates of a one-off, not both")
        return self

    def starts_on(self, day: date, holidays: tuple[date, ...]) -> bool:
        if self.dates:
            return day in self.dates
        return day not in holidays and WEEKDAYS[day.weekday()] in (self.days or WEEKDAYS)


class StorePos(_Strict):
    """How the store's POS systems name it, for the api's POS gateway adapters (all optional)."""

    # POSLog RetailStoreID when it differs from the store id (vendors often number stores: "0042").
    retail_store_id: str | None = Field(None, min_length=1, max_length=64)
    # POSLog WorkstationID -> register id, where the tills are numbered differently from the registers.
    workstations: dict[str, str] = {}
    # The Shopify shop whose refunds/create webhooks belong to this store.
    shopify_shop_domain: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}\.myshopify\.com$")
    # Square locations whose refund webhooks belong to this store.
    square_location_ids: list[str] = []
    # Shopify and Square name no till: their refunds are booked to this register.
    default_register: str | None = None


class Store(_Strict):
    id: str = Field(pattern=_ID)
    name: str = ""
    # HQ groups stores by region for filters and statistics ("north", "uk-south"); free text.
    region: str = Field("", max_length=64)
    timezone: str
    # Days an alert's evidence (frames, snapshot, POS transaction) is kept; the chain's value when unset.
    evidence_retention_days: float | None = Field(None, gt=0)
    opening_hours: OpeningHours | None = None
    # Days the store stays closed all day (local dates): anyone seen is there after hours.
    holidays: list[date] = []
    # When people are expected on camera while the store is closed (cleaners, stock-takes).
    staff_shifts: list[StaffShift] = []
    rules: RuleOverrides = {}
    cameras: list[Camera] = Field(min_length=1)
    registers: list[Register] = []
    # Where camera views chain (a person walking out of one view into another's).
    handovers: list[Handover] = []
    pos: StorePos = StorePos()
    # Returns assessed at the till: thresholds and conditions that always warn (returnpolicy.py).
    returns: ReturnPolicy = ReturnPolicy()

    @field_validator("timezone")
    @classmethod
    def _real_timezone(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {tz!r}") from None
        return tz

    @model_validator(mode="after")
    def _registers_reference_cameras(self) -> Store:
        cameras = {c.id: c for c in self.cameras}
        if len(cameras) != len(self.cameras):
            raise ValueError("duplicate camera ids")
        dupes = _duplicates([r.id for r in self.registers])
        if dupes:
            raise ValueError(f"duplicate register id(s) {dupes}")
        for reg in self.registers:
            cam = cameras.get(reg.camera)
            if cam is None:
                raise ValueError(f"register {reg.id}: camera {reg.camera!r} is not defined in this store")
            if not {"detector", "presence"} & {s.kind for s in cam.stages}:
                raise ValueError(f"register {reg.id}: camera {cam.id} has no detector or presence stage, so nobody could ever be seen at the counter")
            zone_ids = {z.id for z in cam.zones}
            for zone in reg.customer_zones + reg.merchandise_zones:
                if zone not in zone_ids:
                    raise ValueError(f"register {reg.id}: zone {zone!r} is not a zone of camera {cam.id}")
        for i, handover in enumerate(self.handovers):
            for end, where in (("from", handover.from_), ("to", handover.to)):
                cam = cameras.get(where.camera)
                if cam is None:
                    raise ValueError(f"handovers.{i}.{end}: camera {where.camera!r} is not defined in this store")
                if where.zone not in {z.id for z in cam.zones}:
                    raise ValueError(f"handovers.{i}.{end}: zone {where.zone!r} is not a zone of camera {cam.id}")
            if handover.from_.camera == handover.to.camera:
                raise ValueError(f"handovers.{i}: from and to are the same camera; a handover links two cameras' views")
        for i, shift in enumerate(self.staff_shifts):
            unknown = [c for c in shift.cameras if c not in cameras]
            if unknown:
                raise ValueError(f"staff_shifts.{i}.cameras: {unknown} not camera(s) of this store")
        registers = {r.id for r in self.registers}
        for workstation, register in self.pos.workstations.items():
            if register not in registers:
                raise ValueError(f"pos.workstations: workstation {workstation!r} names register {register!r}, which is not a register of this store")
        if self.pos.default_register is not None and self.pos.default_register not in registers:
            raise ValueError(f"pos.default_register: {self.pos.default_register!r} is not a register of this store")
        if (self.pos.shopify_shop_domain or self.pos.square_location_ids) and self.pos.default_register is None:
            raise ValueError("pos.default_register: Shopify and Square refunds name no till; say which register they are booked to")
        return self


class Employee(_Strict):
    """An employee's own payment cards and customer accounts, as the same salted hashes the POS sends."""

    id: str = Field(min_length=1)
    tokens: list[str] = []


class StoreConfig(_Strict):
    chain: str
    stores: list[Store] = Field(min_length=1)
    # The chain's rule settings; stores, registers and zones override them.
    rules: RuleOverrides = {}
    employees: list[Employee] = []
    # Days evidence is kept where a store sets no retention of its own (local law usually caps this).
    evidence_retention_days: float = Field(30.0, gt=0)
    # Where the config was read from; file: sources are relative to it.
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _unique_ids(self) -> StoreConfig:
        stores = [s.id for s in self.stores]
        cameras = [c.id for s in self.stores for c in s.cameras]
        shops = [s.pos.shopify_shop_domain for s in self.stores if s.pos.shopify_shop_domain]
        locations = [loc for s in self.stores for loc in s.pos.square_location_ids]
        retail_ids = [s.pos.retail_store_id or s.id for s in self.stores]
        for kind, ids in (("store", stores), ("camera", cameras), ("pos.shopify_shop_domain", shops), ("pos.square_location_ids", locations),
                          ("POSLog store (pos.retail_store_id, or the store id)", retail_ids)):
            dupes = _duplicates(ids)
            if dupes:
                raise ValueError(f"duplicate {kind} id(s) {dupes}: ids must be unique across the chain")
        for store in self.stores:  # overrides valid alone can still clash once merged (k above n)
            for register in store.registers:
                self.rules_for(store.id, register_id=register.id)
            for camera in store.cameras:
                for zone in camera.zones:
                    self.rules_for(store.id, camera_id=camera.id, zone_id=zone.id)
        return self

    def evidence_retention_days_for(self, store_id: str) -> float:
        own = self.store(store_id).evidence_retention_days
        return self.evidence_retention_days if own is None else own

    def rules_for(self, store_id: str, register_id: str = "", camera_id: str = "", zone_id: str = "") -> RulesConfig:
        """The rules in force at a store, or at one of its registers or zones."""
        store = self.store(store_id)
        layers = [self.rules, store.rules]
        if register_id:
            layers.append(next(r for r in store.registers if r.id == register_id).rules)
        if camera_id and zone_id:
            layers.append(next(c for c in store.cameras if c.id == camera_id).zone(zone_id).rules)
        return resolve(*layers)

    def employee_tokens(self) -> dict[str, set[str]]:
        return {e.id: set(e.tokens) for e in self.employees}

    def store(self, store_id: str) -> Store:
        return next(s for s in self.stores if s.id == store_id)

    def store_for_pos(self, *, retail_store_id: str = "", shopify_shop: str = "", square_location: str = "") -> Store | None:
        """The store a POS system means by its own name for it: a POSLog RetailStoreID, a Shopify shop, a Square location."""
        for store in self.stores:
            if retail_store_id and retail_store_id == (store.pos.retail_store_id or store.id):
                return store
            if shopify_shop and shopify_shop.lower() == store.pos.shopify_shop_domain:
                return store
            if square_location and square_location in store.pos.square_location_ids:
                return store
        return None

    def camera(self, camera_id: str) -> tuple[Store, Camera]:
        for store in self.stores:
            for cam in store.cameras:
                if cam.id == camera_id:
                    return store, cam
        raise KeyError(camera_id)

    def registers_watched_by(self, camera_id: str) -> list[tuple[Store, Register]]:
        return [(s, r) for s in self.stores for r in s.registers if r.camera == camera_id]

    def resolve_source(self, camera: Camera) -> str:
        """The camera source with file: paths made absolute against the config's folder."""
        if camera.source.startswith("file:"):
            path = Path(camera.source[len("file:"):])
            return str(path if path.is_absolute() else (self.base_dir / path).resolve())
        return camera.source


class StoreConfigError(ValueError):
    pass


def load_store_config(path: Path | str) -> StoreConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StoreConfigError(f"store config {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise StoreConfigError(f"store config {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise StoreConfigError(f"store config {path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise StoreConfigError(f"store config {path}: top level must be a mapping")
    if not all(isinstance(key, str) for key in raw):
        raise StoreConfigError(f"store config {path}: top-level keys must be names")
    try:
        return StoreConfig(**raw, base_dir=path.resolve().parent)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()]
        raise StoreConfigError(f"store config {path}:\n  " + "\n  ".join(lines)) from None


class StoreConfigWatcher:
    """Notices edits of the store config file, so cameras can be added, changed or removed live.

    Compares the file's text on each poll rather than its mtime: a Kubernetes ConfigMap is updated
    by swapping a symlink, and editors may write a file twice within one mtime tick. An edit that
    fails validation is reported in `error` and the running config stays in force.
    `interval_s` is how often `poll` looks at the file (0: only when forced).
    """

    def __init__(self, path: Path | str, current: StoreConfig, interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.config = current
        self.error = ""
        self.interval_s = interval_s
        self._next_check = time.monotonic() + interval_s
        self._text = self._read_text()

    def _read_text(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def poll(self, force: bool = False) -> StoreConfig | None:
        """The new config when the file changed and is valid; None when unchanged, invalid, or not
        yet due (every `interval_s`, or at once with `force`)."""
        if not force and (self.interval_s <= 0 or time.monotonic() < self._next_check):
            return None
        self._next_check = time.monotonic() + self.interval_s
        text = self._read_text()
        if text == self._text:
            return None
        self._text = text
        try:
            config = load_store_config(self.path)
        except StoreConfigError as exc:
            self.error = str(exc)
            log.error("store config change rejected; keeping the running config", extra={"error": self.error})
            return None
        self.error = ""
        if config == self.config:
            return None
        self.config = config
        log.info("store config reloaded", extra={"path": str(self.path)})
        return config
