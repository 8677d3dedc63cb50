"""Checkout bypass and repeat visits on people's journeys through a store, across its cameras (pure rules)."""

from services.correlator import rules
from services.correlator.rules import CameraContext, StoreContext, handover_edges, storewide_rules, track_steps
from services.correlator.state import CameraState, StoreJourneys, TrackStep
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.rulesconfig import RulesConfig
from services.shared.storeconfig import Handover

T0 = 1_800_000_000_000
S = 1000
HANDOVER = Handover.model_validate({"from": {"camera": "floor", "zone": "edge"}, "to": {"camera": "door", "zone": "lobby"}, "within_s": 10})


def ctx(till_cameras=("floor",), **rules_overrides) -> StoreContext:
    """The tests judge visits whether or not a pose stage saw the reach (the default needs it: see its own test)."""
    rules = RulesConfig.model_validate({"checkout_bypass": {"needs_reach": False}} | rules_overrides)
    return StoreContext("store", "Europe/London", rules, handover_edges([HANDOVER]), frozenset(till_cameras))


def enter(camera: str, track: int, zone: str, kind: str, t_s: float, first_seen_s: float | None = None) -> TrackStep:
    at = T0 + int(t_s * S)
    first = at if first_seen_s is None else T0 + int(first_seen_s * S)
    return TrackStep("enter", "store", camera, at, track, zone_id=zone, zone_kind=kind, entered_ms=at, first_seen_ms=first, first_seq=int(t_s))


def leave(camera: str, track: int, zone: str, kind: str, entered_s: float, t_s: float, gone: bool = False, posed: bool = False, reached: bool = False) -> TrackStep:
    return TrackStep("leave", "store", camera, T0 + int(t_s * S), track, zone_id=zone, zone_kind=kind, entered_ms=T0 + int(entered_s * S),
                     first_seq=int(entered_s), last_seq=int(t_s), gone=gone, posed=posed, reached=reached)


def out(camera: str, track: int, t_s: float) -> TrackStep:
    return TrackStep("cross", "store", camera, T0 + int(t_s * S), track, line_id="front-door", direction="out", first_seq=int(t_s), last_seq=int(t_s))


def clock(camera: str, t_s: float) -> TrackStep:
    return TrackStep("clock", "store", camera, T0 + int(t_s * S))


def run(steps: list[TrackStep], context: StoreContext | None = None, state: StoreJourneys | None = None) -> list:
    state = StoreJourneys() if state is None else state
    context = context or ctx()
    return [a for step in steps for a in storewide_rules(state, context, step, 0)]


def shopper(*middle: TrackStep, exit_at: float = 60) -> list[TrackStep]:
    """Track 1 on the floor camera: 20 s at the cabinet, then (middle), then out of the door on the same camera."""
    return [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30), *middle,
            out("floor", 1, exit_at), clock("floor", exit_at + 10)]


def test_a_person_who_leaves_after_the_cabinet_without_the_till_is_a_checkout_bypass():
    [alert] = run(shopper())
    assert alert.rule == rules.CHECKOUT_BYPASS and alert.camera_id == "floor" and alert.facts["track"] == "1"
    assert alert.facts["zone"] == "cabinet" and alert.facts["exit"] == "door line front-door" and alert.facts["visit_s"] == "20.0"
    assert alert.event_time_ms == T0 + 60 * S
    assert [(e.kind, e.camera_id, e.ref) for e in alert.evidence] == [("frames", "floor", "10-30"), ("frame", "floor", "60")]
    assert "without passing a till" in alert.explanation


def test_the_exit_waits_for_every_live_camera_so_a_till_visit_reported_late_still_counts():
    state = StoreJourneys()
    steps = [clock("till-cam", 30), enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30),
             out("floor", 1, 60), clock("floor", 80)]
    assert run(steps, state=state) == []  # the till camera has only reported up to t=30: the exit (60) waits
    assert run([clock("till-cam", 70)], state=state)[0].rule == rules.CHECKOUT_BYPASS
    # Had the till camera reported the person at a till before the exit, nothing would have been raised.
    late_till = [*steps, enter("floor", 1, "till-1", "counter_customer", 45), clock("till-cam", 70)]
    assert run(late_till) == []


def test_a_shopper_who_pays_a_walk_past_staff_and_one_who_never_reached_raise_nothing():
    paid = [enter("floor", 1, "till-1", "counter_customer", 40)]
    assert run(shopper(*paid)) == []
    walk_past = [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 13), out("floor", 1, 60), clock("floor", 70)]
    assert run(walk_past) == []
    assert run(shopper(enter("floor", 1, "back", "staff_only", 40))) == []
    never_reached = [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30, posed=True, reached=False),
                     out("floor", 1, 60), clock("floor", 70)]
    assert run(never_reached) == []
    reached = [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30, posed=True, reached=True),
               out("floor", 1, 60), clock("floor", 70)]
    [alert] = run(reached)
    assert alert.facts["reached"] == "True" and alert.severity > run(shopper())[0].severity


def test_by_default_only_a_visit_where_the_pose_stage_saw_a_reach_is_judged():
    defaults = ctx(checkout_bypass={})
    assert run(shopper(), defaults) == []  # no pose stage: looking is not taking
    reached = [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30, posed=True, reached=True),
               out("floor", 1, 60), clock("floor", 70)]
    assert [a.rule for a in run(reached, defaults)] == [rules.CHECKOUT_BYPASS]


def test_only_a_journey_whose_views_lead_to_a_till_is_judged():
    # The tills are on a camera no handover leads to from the shelf: the shopper may have paid there.
    assert run(shopper(), ctx(till_cameras=("counter",))) == []
    # The door camera has the till, and the floor's view continues into it.
    assert len(run(shopper(), ctx(till_cameras=("door",)))) == 1


def test_an_exit_long_after_the_visit_is_not_judged():
    assert run(shopper(exit_at=30 + 901)) == []


def test_a_replayed_step_and_an_exit_seen_twice_raise_one_alert():
    steps = shopper()
    doubled = [*steps, *steps, enter("floor", 1, "exit-zone", "exit", 61), clock("floor", 90)]
    assert len(run(doubled)) == 1


def test_the_journey_continues_across_a_handover_in_either_order_of_reports():
    floor = [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30),
             enter("floor", 1, "edge", "aisle", 31)]
    gone = leave("floor", 1, "edge", "aisle", 31, 40, gone=True)
    at_door = [enter("door", 9, "lobby", "aisle", 43, first_seen_s=42.5), out("door", 9, 50), clock("door", 60), clock("floor", 60)]
    # In time order; the departure reported after the new track's first step; the floor camera's partition
    # consumed a minute ahead of the door camera's.
    for order in ([*floor, gone, *at_door], [*floor, *at_door[:1], gone, *at_door[1:]], [*floor, gone, clock("floor", 100), *at_door, clock("door", 110)]):
        [alert] = run(order)
        assert alert.camera_id == "door" and alert.facts["track"] == "9" and alert.facts["tracks"] == "floor:1,door:9"
        assert alert.facts["zone_camera"] == "floor" and {e.camera_id for e in alert.evidence} == {"floor", "door"}


def test_two_people_walking_out_of_view_together_link_to_nobody():
    steps = [enter("floor", 1, "cabinet", "high_value", 10), leave("floor", 1, "cabinet", "high_value", 10, 30),
             enter("floor", 1, "edge", "aisle", 31), enter("floor", 2, "edge", "aisle", 31),
             leave("floor", 1, "edge", "aisle", 31, 40, gone=True), leave("floor", 2, "edge", "aisle", 31, 40, gone=True),
             enter("door", 9, "lobby", "aisle", 43, first_seen_s=43), out("door", 9, 50), clock("door", 60), clock("floor", 60)]
    assert run(steps) == []
    # The door camera's partition consumed first: the first departure must not link before the second is known.
    door_first = [*steps[:4], *steps[6:9], *steps[4:6], steps[9]]
    assert [s.kind for s in door_first] == ["enter", "leave", "enter", "enter", "enter", "cross", "clock", "leave", "leave", "clock"]
    assert run(door_first) == []


def cabinet_visits(track: int, starts: list[float], stay_s: float = 10, camera: str = "floor") -> list[TrackStep]:
    return [s for t in starts for s in (enter(camera, track, "cabinet", "high_value", t), leave(camera, track, "cabinet", "high_value", t, t + stay_s))]


def test_four_returns_to_a_high_value_zone_within_the_period_raise_repeat_visits_once():
    alerts = run(cabinet_visits(1, [0, 100, 200, 300, 400, 500]))
    assert [a.rule for a in alerts] == [rules.REPEAT_VISITS]
    assert alerts[0].facts["visits"] == "4" and alerts[0].facts["track"] == "1" and len(alerts[0].evidence) == 4
    assert run(cabinet_visits(1, [0, 100, 200])) == []
    assert run(cabinet_visits(1, [0, 700, 1400, 2100])) == []  # four visits, but over 35 minutes


def test_a_foot_point_jittering_on_the_zone_edge_is_one_visit():
    jitter = cabinet_visits(1, [0, 11, 22, 33, 44, 55], stay_s=10)  # back within a second each time
    assert run(jitter) == []


def test_repeat_visits_follow_the_person_across_cameras():
    steps = [*cabinet_visits(1, [0, 100]), enter("floor", 1, "edge", "aisle", 120), leave("floor", 1, "edge", "aisle", 120, 125, gone=True),
             enter("door", 9, "lobby", "aisle", 127, first_seen_s=127), *cabinet_visits(9, [200, 300], camera="door")]
    assert run(steps) == []  # the floor camera has not reported past the moment track 9 appeared: someone else may have left too
    [alert] = run([*steps, clock("floor", 320)])
    assert alert.rule == rules.REPEAT_VISITS and "across cameras door, floor" in alert.explanation


def test_disabled_rules_follow_no_zones():
    zones = {"cabinet": "high_value", "aisle": "aisle", "edge": "aisle"}
    assert rules.followed_zones(zones, [HANDOVER], "floor", RulesConfig()) == {"cabinet": "high_value", "edge": "aisle"}
    off = RulesConfig.model_validate({"checkout_bypass": {"enabled": False}, "repeat_visits": {"enabled": False}})
    assert rules.followed_zones(zones, [HANDOVER], "floor", off) == {}


def camera_ctx() -> CameraContext:
    followed = {"cabinet": "high_value", "till": "counter_customer"}
    return CameraContext("store", "floor", "UTC", None, (), {"cabinet": "high_value", "till": "counter_customer", "aisle": "aisle"}, {}, RulesConfig(),
                         followed=followed, door_lines=True)


def frame(t_s: float, seq: int, persons: list[tuple[int, list[tuple[str, float]]]], heartbeat: bool = False, crossings=()) -> FrameAnalysis:
    analysis = FrameAnalysis(store_id="store", camera_id="floor", capture_time_ms=T0 + int(t_s * S), frame_sequence=seq, heartbeat=heartbeat)
    for track, zones in persons:
        analysis.persons.add(track_id=track, first_seen_ms=T0, zones=[{"zone_id": z, "entered_ms": T0 + int(e * S)} for z, e in zones])
    for track, direction, kind in crossings:
        analysis.line_crossings.add(line_id="front-door", track_id=track, direction=direction, line_kind=kind)
    return analysis


def test_a_camera_reports_followed_zones_entered_and_left_and_door_lines_crossed():
    state, context = CameraState(), camera_ctx()
    seen = []
    for analysis in (frame(1, 1, [(1, [("cabinet", 1), ("aisle", 1)])]), frame(2, 2, [(1, [("cabinet", 1)])]),
                     frame(3, 3, [(1, [("cabinet", 1)])], heartbeat=True),
                     frame(4, 4, [(1, [("till", 4)])], crossings=[(1, "in", "count")]),
                     frame(5, 5, [], crossings=[(1, "out", "door")])):
        steps, _ = track_steps(state, context, analysis)
        seen += [(s.kind, s.zone_id or s.line_id, (s.time_ms - T0) // S, s.gone) for s in steps]
    assert seen == [("enter", "cabinet", 1, False), ("enter", "till", 4, False), ("leave", "cabinet", 2, False),
                    ("leave", "till", 4, True), ("cross", "front-door", 5, False)]
    assert state.stays == {}
