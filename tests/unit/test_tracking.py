"""The tracker keeps a person's id through misses, occlusion and crossings, on synthetic sequences."""

import numpy as np

from services.inference.tracking import Detection, Tracker, TrackerConfig, greedy_match, iou_matrix

FPS = 10


def _box(cx: float, cy: float, w: float = 0.06, h: float = 0.2) -> tuple[float, float, float, float]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def test_iou_and_greedy_matching():
    a = np.array([[0, 0, 1, 1], [2, 2, 3, 3]], float)
    b = np.array([[0, 0, 1, 1], [0.5, 0, 1.5, 1], [10, 10, 11, 11]], float)
    iou = iou_matrix(a, b)
    assert iou[0, 0] == 1.0 and abs(iou[0, 1] - 1 / 3) < 1e-9 and iou[1].max() == 0
    assert greedy_match(iou, 0.3) == [(0, 0)]  # row 0 takes its best column once
    assert greedy_match(np.zeros((0, 3)), 0.3) == []


def test_a_walker_keeps_one_id_and_is_reported_after_two_hits():
    tracker = Tracker()
    ids = []
    for frame in range(30):
        seen = tracker.update([Detection(_box(0.1 + 0.02 * frame, 0.5), 0.9)], frame * 100)
        ids.append([t.track_id for t in seen])
    assert ids[0] == []  # tentative until seen twice
    assert all(i == [1] for i in ids[1:])


def test_occlusion_behind_a_pillar_keeps_the_id():
    """Walking right at 0.02/frame, hidden for 8 frames (0.8 s) behind a pillar, then seen again."""
    tracker = Tracker()
    seen_ids = set()
    for frame in range(40):
        hidden = 15 <= frame < 23
        detections = [] if hidden else [Detection(_box(0.1 + 0.02 * frame, 0.5), 0.85)]
        for track in tracker.update(detections, frame * 100):
            seen_ids.add(track.track_id)
    assert seen_ids == {1}


def test_half_hidden_person_is_held_by_low_score_detections():
    tracker = Tracker()
    for frame in range(10):
        tracker.update([Detection(_box(0.5, 0.5), 0.9)], frame * 100)
    # Partly behind a counter: the detector still sees them, with low confidence.
    for frame in range(10, 40):
        [track] = tracker.update([Detection(_box(0.5, 0.5), 0.2)], frame * 100)
        assert track.track_id == 1
    # Low-score boxes never start a track of their own.
    assert [t.track_id for t in tracker.update([Detection(_box(0.9, 0.5), 0.2), Detection(_box(0.5, 0.5), 0.9)], 4000)] == [1]
    assert len(tracker.tracks) == 1


def test_two_people_crossing_keep_their_ids():
    """One walks right, one walks left, on the same line: their boxes overlap completely mid-way."""
    tracker = Tracker()
    history: dict[int, list[float]] = {}
    for frame in range(41):
        left_to_right = _box(0.1 + 0.02 * frame, 0.5)
        right_to_left = _box(0.9 - 0.02 * frame, 0.52)
        detections = [Detection(left_to_right, 0.9)]
        if not 18 <= frame <= 22:  # hidden behind the other while they pass
            detections.append(Detection(right_to_left, 0.8))
        for track in tracker.update(detections, frame * 100):
            history.setdefault(track.track_id, []).append(float(track.box[0] + track.box[2]) / 2)
    assert set(history) == {1, 2}
    assert np.all(np.diff(history[1]) > 0) and np.all(np.diff(history[2]) < 0)  # each id kept its direction


def test_a_track_lost_too_long_ends_and_a_new_id_starts():
    tracker = Tracker(TrackerConfig(max_lost_s=1.0))
    for frame in range(5):
        tracker.update([Detection(_box(0.5, 0.5), 0.9)], frame * 100)
    tracker.update([], 1000)
    tracker.update([], 1500)  # 1.1 s unseen: ended
    assert tracker.tracks == []
    tracker.update([Detection(_box(0.5, 0.5), 0.9)], 1600)
    [track] = tracker.update([Detection(_box(0.5, 0.5), 0.9)], 1700)
    assert track.track_id == 2


def test_classes_never_swap_tracks():
    tracker = Tracker()
    for frame in range(3):
        tracker.update([Detection(_box(0.5, 0.5), 0.9, label=1)], frame * 100)
    seen = tracker.update([Detection(_box(0.5, 0.5), 0.9, label=31)], 300)  # a handbag in the same place
    assert seen == [] and {t.label for t in tracker.tracks} == {1, 31}


def test_a_coasting_box_moves_with_its_centre_and_keeps_its_size():
    # A person walking right is seen half-hidden (a shrinking box) just before being lost: the coasted box
    # keeps the last measured size and moves at the centre's speed; it never grows, shrinks or inverts.
    tracker = Tracker(TrackerConfig(min_hits=1, max_lost_s=2.0))
    boxes = [_box(0.2 + 0.02 * i, 0.5) for i in range(5)] + [_box(0.3, 0.53, w=0.04, h=0.14)]
    for i, box in enumerate(boxes):
        assert len(tracker.update([Detection(box, 0.9)], i * 100)) == 1  # one track throughout
    for t_ms in range(600, 2500, 100):
        [(_, coasted)] = tracker.coast(t_ms)
        x0, y0, x1, y1 = coasted
        assert abs((x1 - x0) - 0.04) < 1e-9 and abs((y1 - y0) - 0.14) < 1e-9
        assert (x0 + x1) / 2 > 0.3  # still heading right


def _look(colour: int) -> np.ndarray:
    """A colour histogram that is all one bin: two different `colour`s look nothing alike."""
    hist = np.zeros(128)
    hist[colour] = 1.0
    return hist


def _meet_and_part(with_appearance: bool) -> tuple[set[int], set[int]]:
    """Two people walk up to the same spot, stand there together, and part the other way round each time;
    returns the track ids that followed each of them."""
    tracker = Tracker(TrackerConfig(min_hits=1))
    ids: tuple[set[int], set[int]] = (set(), set())
    path_a = [0.3 + 0.02 * i for i in range(10)] + [0.5] * 5 + [0.5 - 0.02 * i for i in range(1, 10)]  # left, stays, back left
    path_b = [0.7 - 0.02 * i for i in range(10)] + [0.5] * 5 + [0.5 + 0.02 * i for i in range(1, 10)]
    for i, (xa, xb) in enumerate(zip(path_a, path_b, strict=True)):
        # Detections arrive in an order that says nothing about who is who.
        found = [Detection(_box(xb, 0.5), 0.9, appearance=_look(2) if with_appearance else None),
                 Detection(_box(xa, 0.5), 0.9, appearance=_look(1) if with_appearance else None)]
        tracks = tracker.update(found if i % 2 else found[::-1], i * 100)
        for track in tracks:
            centre = (track.box[0] + track.box[2]) / 2
            if i >= 15:  # apart again: a is left of centre, b right
                ids[0 if centre < 0.5 else 1].add(track.track_id)
    return ids


def test_people_who_stood_together_keep_their_ids_by_how_they_look():
    a, b = _meet_and_part(with_appearance=True)
    assert len(a) == 1 and len(b) == 1 and a != b
    # By boxes alone, standing still on the same spot, who is who is lost: here the ids swap.
    assert _meet_and_part(with_appearance=False) == (b, a)


def test_a_person_whose_box_jumps_is_taken_back_by_the_track_that_lost_them():
    tracker = Tracker(TrackerConfig(min_hits=1))
    for i in range(5):
        [track] = tracker.update([Detection(_box(0.2 + 0.01 * i, 0.5), 0.9, appearance=_look(3))], i * 100)
    # The detector now boxes them a body-width to the right (half hidden, then found whole): no overlap with the prediction.
    [again] = tracker.update([Detection(_box(0.31, 0.5), 0.9, appearance=_look(3))], 500)
    assert again.track_id == track.track_id
    # Someone who looks different, appearing there instead, gets a new id.
    stranger_tracker = Tracker(TrackerConfig(min_hits=1))
    for i in range(5):
        [first] = stranger_tracker.update([Detection(_box(0.2 + 0.01 * i, 0.5), 0.9, appearance=_look(3))], i * 100)
    [stranger] = stranger_tracker.update([Detection(_box(0.31, 0.5), 0.9, appearance=_look(4))], 500)
    assert stranger.track_id != first.track_id
