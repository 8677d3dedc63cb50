"""The zone-visit helper that inference's detector stage, the scenario runner and the correlator
benchmark share: visits and dwell kept between frames, and the per-zone fields they make."""

from __future__ import annotations

import pytest

from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.storeconfig import Zone
from services.shared.zonevisits import Sighting, ZoneVisits

SQUARE = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
ZONES = [Zone(id="counter", kind="counter_merchandise", polygon=SQUARE, new_object_s=2.0), Zone(id="shelf", kind="high_value", polygon=SQUARE)]


def _frame(visits: ZoneVisits, now_ms: int, *sightings: Sighting) -> tuple[FrameAnalysis, list[list[tuple[str, int]]]]:
    analysis = FrameAnalysis(capture_time_ms=now_ms)
    for zone in ZONES:
        analysis.zones.add(zone_id=zone.id, kind=zone.kind)
    placed = visits.fill(analysis, list(sightings), now_ms)
    return analysis, [[(v.zone_id, v.entered_ms) for v in zones] for zones in placed]


def _zone(analysis: FrameAnalysis, zone_id: str):
    return next(z for z in analysis.zones if z.zone_id == zone_id)


def test_a_visit_lasts_while_the_track_stays_and_ends_when_it_is_seen_elsewhere():
    visits = ZoneVisits(ZONES)
    _frame(visits, 1000, Sighting(1, True, 0.6, ["counter"]))
    analysis, [[*placed]] = _frame(visits, 1500, Sighting(1, True, 0.8, ["counter", "shelf"]))
    assert placed == [("counter", 1000), ("shelf", 1500)]
    counter = _zone(analysis, "counter")
    assert (counter.person_count, list(counter.track_ids), counter.max_dwell_ms, counter.person_present, counter.presence_score) == (1, [1], 500, True, pytest.approx(0.8))
    analysis, [placed] = _frame(visits, 2000, Sighting(1, True, 0.8, ["shelf"]))
    assert placed == [("shelf", 1500)] and not _zone(analysis, "counter").person_present
    _, [placed] = _frame(visits, 2500, Sighting(1, True, 0.8, ["counter"]))
    assert placed == [("counter", 2500)]  # back in: a new visit


def test_a_newly_reported_track_entered_when_first_seen_unless_a_visit_is_under_way():
    visits = ZoneVisits(ZONES)
    _, [placed] = _frame(visits, 1100, Sighting(7, True, 0.9, ["counter"], new_track_first_seen_ms=1000))
    assert placed == [("counter", 1000)]
    _, [placed] = _frame(visits, 1200, Sighting(7, True, 0.9, ["counter", "shelf"], new_track_first_seen_ms=1000))
    assert placed == [("counter", 1000), ("shelf", 1200)]


def test_known_entry_times_replace_what_was_remembered():
    visits = ZoneVisits(ZONES)
    _frame(visits, 5000, Sighting(3, True, 0.9, ["shelf"]))
    analysis, [placed] = _frame(visits, 5100, Sighting(3, True, 0.9, ["shelf"], entered_ms={"shelf": 2000}))
    assert placed == [("shelf", 2000)] and _zone(analysis, "shelf").max_dwell_ms == 3100
    _, [placed] = _frame(visits, 5200, Sighting(3, True, 0.9, ["shelf"]))
    assert placed == [("shelf", 2000)]


def test_objects_are_counted_and_new_only_within_their_zone_s_new_object_s():
    visits = ZoneVisits(ZONES)
    _frame(visits, 0, Sighting(10, False, 0.7, ["counter", "shelf"]))
    analysis, _ = _frame(visits, 1500, Sighting(10, False, 0.7, ["counter", "shelf"]), Sighting(11, False, 0.7, ["counter"]))
    counter, shelf = _zone(analysis, "counter"), _zone(analysis, "shelf")
    assert (counter.object_count, counter.new_object_count, counter.newest_object_entered_ms) == (2, 2, 1500)
    assert counter.person_count == 0 and not counter.track_ids
    analysis, _ = _frame(visits, 2500, Sighting(10, False, 0.7, ["counter", "shelf"]), Sighting(11, False, 0.7, ["counter"]))
    counter, shelf = _zone(analysis, "counter"), _zone(analysis, "shelf")
    assert (counter.object_count, counter.new_object_count) == (2, 1)  # the first lies there 2.5 s: part of the scene
    assert (shelf.object_count, shelf.new_object_count) == (1, 1)  # the shelf keeps the default 300 s


def test_a_zone_nobody_is_in_is_empty_whatever_an_earlier_stage_said():
    analysis = FrameAnalysis(capture_time_ms=100)
    analysis.zones.add(zone_id="counter", person_present=True, presence_score=0.7)
    analysis.zones.add(zone_id="shelf", person_present=True, presence_score=0.7)
    ZoneVisits(ZONES).fill(analysis, [Sighting(1, True, 0.5, ["shelf"])], 100)
    assert (_zone(analysis, "counter").person_present, _zone(analysis, "counter").presence_score) == (False, 0.0)
    assert _zone(analysis, "shelf").person_present and _zone(analysis, "shelf").presence_score == pytest.approx(0.7)  # the highest, earlier stage's included


def test_tracks_no_longer_followed_leave_every_zone_and_the_caller_s_dict_is_the_state():
    starts: dict[tuple[int, str], int] = {}
    visits = ZoneVisits(ZONES, starts)
    _frame(visits, 0, Sighting(1, True, 0.9, ["counter"]), Sighting(2, True, 0.9, ["shelf"]))
    assert starts == {(1, "counter"): 0, (2, "shelf"): 0}
    visits.keep_only({2})
    assert starts == {(2, "shelf"): 0}
    _, [placed] = _frame(ZoneVisits(ZONES, starts), 900, Sighting(1, True, 0.9, ["counter"]))
    assert placed == [("counter", 900)]
