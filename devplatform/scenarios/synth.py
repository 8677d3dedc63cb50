"""What the cameras and tills of a scenario would publish: FrameAnalysis frames and POS events.

Frames are what inference's detector stage would make of the scripted tracks: each track's zone
visits and the zones' counts and dwell come from the same helper (services/shared/zonevisits.py);
named poses become keypoints that the correlator's own hand cues read as named.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from devplatform.scenarios.spec import Box, PersonSpec, PosSpec, Scenario, ScenarioError, VisitedZones, ZoneState
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis, PersonObservation
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.storeconfig import StoreConfig
from services.shared.zonevisits import Sighting, ZoneVisits

# Bags as the concealment rule knows them (services/correlator/rules.py BAG_LABELS).
BAGS = ("backpack", "handbag", "suitcase")
# What each named pose must read as through the correlator's own hand_cues: (reaching, concealing).
POSE_CUES = {"standing": (False, False), "reaching": (True, False), "hand_at_hip": (False, True), "hand_in_bag": (False, True)}
# Inference's tracker forgets a person unseen this long (DetectorStage.track_max_lost_s default).
TRACK_LOST_MS = 2000


@dataclass
class Outgoing:
    """One message to send: `late` ones go in a second round, after the first was consumed."""

    late: bool
    time_ms: int
    order: int
    topic: str
    key: str
    value: bytes



def _pos_message(sc: Scenario, event: PosSpec) -> PosEvent:
    offset = event.clock_offset_s if event.clock_offset_s is not None else sc.spec.pos_clock_offset_s
    return PosEvent(
        event_id=event.id, type=PosEventType.Value(f"POS_EVENT_TYPE_{event.type.upper()}"),
        store_id=sc.pid(sc.store_of(event.store, event.id)), register_id=event.register_id,
        transaction_id=event.transaction, employee_id=sc.pid(event.employee), event_time_ms=sc.start_ms + round((event.t + offset) * 1000),
        currency=event.currency, total_minor=round(event.total * 100), customer_token=sc.pid(event.customer_token),
        card_token=sc.pid(event.card_token), original_transaction_id=event.original_transaction, after_tender=event.after_tender,
    )


def pose_keypoints(box: Box, pose: str, bags: list[Box]) -> list[tuple[str, float, float]]:
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
    """What inference's tracker would say about a camera's tracks: since when each is seen, and (with
    inference's own helper) since when it is in each zone."""

    zones: ZoneVisits
    first_seen: dict[tuple[str, int], int] = field(default_factory=dict)
    last_seen: dict[tuple[str, int], int] = field(default_factory=dict)

    def seen(self, kind: str, track: int, now: int, explicit: int | None) -> int:
        key = (kind, track)
        if explicit is not None:
            self.first_seen[key] = explicit
        elif key not in self.first_seen or now - self.last_seen.get(key, now) > TRACK_LOST_MS:
            self.first_seen[key] = now
        self.last_seen[key] = now
        return self.first_seen[key]

    def lose_unseen(self, now: int) -> None:
        """The tracker forgets a track unseen for TRACK_LOST_MS: seen again, its visits start afresh."""
        self.zones.keep_only({_visit_key(kind, track) for (kind, track), last in self.last_seen.items() if now - last <= TRACK_LOST_MS})


def _sighting(kind: str, track: int, score: float, zones: VisitedZones, start_ms: int) -> Sighting:
    """A scripted person or object as a tracked sighting; zones given with times say when it entered them."""
    entered = {zone: start_ms + round(t * 1000) for zone, t in zones.items()} if isinstance(zones, dict) else {}
    return Sighting(_visit_key(kind, track), kind == "person", score, list(zones), entered_ms=entered)


def _visit_key(kind: str, track: int) -> int:
    """A scenario numbers persons and objects apart (objects from 0); zone visits go by one track id."""
    return track if kind == "person" else -1 - track


def _pose_at(person: PersonSpec, t: float) -> str | None:
    if person.pose:
        return person.pose
    current = None
    for step in sorted(person.poses, key=lambda p: p.t):
        if step.t <= t + 1e-9:
            current = step.pose
    return current


def _set_zone_states(analysis: FrameAnalysis, states: dict[str, ZoneState]) -> None:
    """Zone fields a segment states outright, over what its persons and objects made of them."""
    observed = {zone.zone_id: zone for zone in analysis.zones}
    for zone_id, state in states.items():
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


def frame_messages(sc: Scenario, config: StoreConfig) -> Iterator[tuple[bool, int, str, FrameAnalysis]]:
    """(late, capture time, camera id, FrameAnalysis) for every frame of every camera of a scenario."""
    for cam, segments in sc.spec.video.items():
        store, camera = config.camera(sc.pid(cam))
        zones = {z.id: z for z in camera.zones}
        line_kinds = {line.id: line.kind for line in camera.lines}
        tracks = _Tracks(ZoneVisits(camera.zones))
        seq = 0
        for segment in sorted(segments, key=lambda s: s.t):
            count = int((segment.until - segment.t) * segment.fps + 1e-6)
            for i in range(count):
                t = segment.t + i / segment.fps
                now = sc.start_ms + round(t * 1000)
                seq += 1
                analysis = FrameAnalysis(store_id=store.id, camera_id=camera.id, capture_time_ms=now, frame_sequence=seq, anomaly_score=segment.anomaly)
                analysis.models.add(name="detector", version=1)
                for z in camera.zones:
                    analysis.zones.add(zone_id=z.id, kind=z.kind)
                tracks.lose_unseen(now)
                sightings = [_sighting("object", o.track, o.score, o.zones, sc.start_ms) for o in segment.objects]
                sightings += [_sighting("person", p.track, p.score, p.zones, sc.start_ms) for p in segment.persons]
                placed = tracks.zones.fill(analysis, sightings, now)
                bags = []
                for obj, visits in zip(segment.objects, placed[:len(segment.objects)], strict=True):
                    first = tracks.seen("object", obj.track, now, None if obj.first_seen is None else sc.start_ms + round(obj.first_seen * 1000))
                    x0, y0, x1, y1 = obj.box
                    made = analysis.objects.add(label=obj.label, score=obj.score, track_id=obj.track, first_seen_ms=first,
                                                box={"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}, zones=visits)
                    if obj.label in BAGS:
                        bags.append(made)
                for spec, visits in zip(segment.persons, placed[len(segment.objects):], strict=True):
                    first = tracks.seen("person", spec.track, now, None if spec.first_seen is None else sc.start_ms + round(spec.first_seen * 1000))
                    box = spec.box or (_zone_box(zones[visits[0].zone_id].polygon) if visits else (0.44, 0.3, 0.56, 0.7))
                    x0, y0, x1, y1 = box
                    person = analysis.persons.add(track_id=spec.track, score=spec.score, first_seen_ms=first, detected=True,
                                                  box={"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}, zones=visits)
                    for cross in spec.crosses:  # in the first frame at or after its time
                        if cross.t <= t + 1e-9 < cross.t + 1 / segment.fps:
                            analysis.line_crossings.add(line_id=cross.line, track_id=spec.track, direction=cross.direction, line_kind=line_kinds[cross.line])
                    pose = _pose_at(spec, t)
                    if pose:
                        bag_boxes = [(b.box.xmin, b.box.ymin, b.box.xmax, b.box.ymax) for b in bags]
                        where = f"{sc.path.name}: video of {cam} at t={t:g}, track {spec.track}"
                        try:
                            for name, x, y in pose_keypoints(box, pose, bag_boxes):
                                person.keypoints.add(name=name, x=x, y=y, score=0.9)
                            check_pose(person, pose, bags)
                        except ValueError as exc:
                            raise ScenarioError(f"{where}: {exc}") from None
                _set_zone_states(analysis, segment.zones)
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
