"""Counting lines: sides, the margin band, confirmation, the line's ends, people turning back."""

import pytest
from pydantic import ValidationError

from services.inference.lines import LineCounter, side_of
from services.shared.storeconfig import Camera, Line, Store

# A door across the bottom of the picture; the shop floor (in) is above it.
DOOR = Line(id="door", kind="door", points=[(0.2, 0.8), (0.8, 0.8)], inside=(0.5, 0.5), margin=0.02, confirm_frames=2)


def walk(counter: LineCounter, track: int, ys: list[float], x: float = 0.5) -> list[str]:
    return [c.direction for y in ys for c in counter.observe(track, (x, y))]


def test_side_of_a_line_follows_the_inside_point_whichever_end_was_drawn_first():
    reversed_door = DOOR.model_copy(update={"points": [(0.8, 0.8), (0.2, 0.8)]})
    for line in (DOOR, reversed_door):
        assert side_of(line, (0.5, 0.6)) == 1
        assert side_of(line, (0.5, 0.95)) == -1
        assert side_of(line, (0.5, 0.81)) == 0  # within the margin
        assert side_of(line, (0.1, 0.6)) is None  # beyond the line's end


def test_walking_in_and_out_counts_one_each():
    counter = LineCounter([DOOR])
    assert walk(counter, 1, [0.95, 0.9, 0.85, 0.79, 0.75, 0.6]) == ["in"]
    assert walk(counter, 2, [0.5, 0.7, 0.9, 0.95]) == ["out"]


def test_a_foot_point_jittering_on_the_line_is_not_a_crossing():
    counter = LineCounter([DOOR])
    jitter = [0.79, 0.81, 0.795, 0.805, 0.79, 0.81] * 5
    assert walk(counter, 1, [0.6, *jitter, 0.6]) == []
    # ...and is counted once when it finally goes across (and stays: two detections in a row).
    assert walk(counter, 1, [*jitter, 0.9, 0.9, 0.92]) == ["out"]


def test_one_box_jumping_across_the_line_and_back_is_not_a_crossing():
    counter = LineCounter([DOOR])
    assert walk(counter, 1, [0.6, 0.6, 0.9, 0.6, 0.6, 0.9, 0.6]) == []


def test_a_person_who_turns_back_is_counted_each_way():
    counter = LineCounter([DOOR])
    assert walk(counter, 1, [0.95, 0.6, 0.6, 0.95, 0.95, 0.6, 0.6]) == ["in", "out", "in"]


def test_walking_round_the_end_of_the_line_is_not_a_crossing():
    counter = LineCounter([DOOR])
    path = [(0.5, 0.95), (0.1, 0.95), (0.1, 0.6), (0.5, 0.6), (0.5, 0.6)]
    assert [c.direction for p in path for c in counter.observe(1, p)] == []


def test_a_polyline_counts_across_any_of_its_segments():
    bend = Line(id="bend", points=[(0.1, 0.5), (0.5, 0.5), (0.5, 0.9)], inside=(0.2, 0.8))
    counter = LineCounter([bend])
    assert [c.direction for p in [(0.3, 0.3), (0.3, 0.7), (0.3, 0.7)] for c in counter.observe(1, p)] == ["in"]
    assert [c.direction for p in [(0.8, 0.7), (0.4, 0.7), (0.4, 0.7)] for c in counter.observe(2, p)] == ["in"]


def test_tracks_given_up_are_forgotten():
    counter = LineCounter([DOOR])
    walk(counter, 1, [0.95])
    walk(counter, 2, [0.95])
    counter.keep_only({2})
    assert {k[0] for k in counter.tracks} == {2}


def test_config_rejects_an_inside_point_on_the_line_and_lines_without_a_detector():
    with pytest.raises(ValidationError, match="lies on the line"):
        Line(id="x", points=[(0.2, 0.8), (0.8, 0.8)], inside=(0.5, 0.8))
    with pytest.raises(ValidationError, match="consecutive points"):
        Line(id="x", points=[(0.2, 0.8), (0.2, 0.8)], inside=(0.5, 0.5))
    with pytest.raises(ValidationError, match="need a detector stage"):
        Camera(id="cam", source="file:x.mp4", stages=[{"kind": "presence"}], lines=[DOOR.model_dump()])


def test_handovers_name_cameras_and_zones_of_the_store():
    cameras = [{"id": "floor", "source": "file:a.mp4", "zones": [{"id": "edge", "kind": "aisle", "polygon": [[0, 0], [1, 0], [1, 1]]}]},
               {"id": "door", "source": "file:b.mp4", "zones": [{"id": "lobby", "kind": "aisle", "polygon": [[0, 0], [1, 0], [1, 1]]}]}]
    store = Store(id="s", timezone="UTC", cameras=cameras, handovers=[{"from": {"camera": "floor", "zone": "edge"}, "to": {"camera": "door", "zone": "lobby"}}])
    assert store.handovers[0].from_.camera == "floor" and store.handovers[0].within_s == 10
    with pytest.raises(ValidationError, match=r"handovers.0.to: zone 'hall' is not a zone of camera door"):
        Store(id="s", timezone="UTC", cameras=cameras, handovers=[{"from": {"camera": "floor", "zone": "edge"}, "to": {"camera": "door", "zone": "hall"}}])
