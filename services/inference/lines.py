"""Counting lines: which tracked people crossed a camera's lines, in which direction, counted once.

A line is a polyline on the picture (store config `lines`) with an `inside` point that says which
side is "in". Each tracked person's foot point is placed on a side of the line; a track that was
clearly on one side and is now clearly on the other crossed it, and that crossing is counted once.
Three things keep the count honest on real tracks:

- a band of `margin` either side of the line changes no side, so a foot point that jitters on the
  line (a person standing in the doorway, a box that breathes) is not a crossing each frame;
- the new side must hold for `confirm_frames` detections in a row, so one box that jumps across
  the line and back (a detection merged with a neighbour for a frame) is no crossing either;
- a point beyond the line's ends forgets the side, so walking round the end of a line is no crossing.

A person who really crosses back (turns round in the doorway) is counted again, each way: on the
hand-counted plaza clip, capping a track at one crossing per direction lost 3 of 28 real crossings
by people who turned back on the line, and saved nothing the band and the confirmation did not
(`make eval-lines`).

Pure logic on normalised coordinates; the detector stage feeds it detected foot points (never
coasted ones: a track carried on its motion behind a shelf may be predicted across a line it never
crossed).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from services.shared.storeconfig import Line, distance_to_segment

Point = tuple[float, float]


def _signed(a: Point, b: Point, p: Point) -> float:
    """Signed distance of p from the infinite line through a and b (positive on the left of a->b in
    image coordinates, y down)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return ((dx * (p[1] - a[1])) - (dy * (p[0] - a[0]))) / max((dx * dx + dy * dy) ** 0.5, 1e-12)


def _along(a: Point, b: Point, p: Point) -> float:
    """Where p projects on a->b: 0 at a, 1 at b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / max(dx * dx + dy * dy, 1e-12)


def _nearest_segment(points: Sequence[Point], p: Point) -> int:
    return min(range(len(points) - 1), key=lambda i: distance_to_segment(points[i], points[i + 1], p))


def side_of(line: Line, p: Point) -> int | None:
    """+1 clearly on the inside, -1 clearly on the outside, 0 on the line (within its margin), None
    beyond its ends (the side is not the line's business there)."""
    points = line.points
    i = _nearest_segment(points, p)
    a, b = points[i], points[i + 1]
    t = _along(a, b, p)
    if (i == 0 and t < 0) or (i == len(points) - 2 and t > 1):
        return None
    j = _nearest_segment(points, line.inside)
    inward = 1.0 if _signed(points[j], points[j + 1], line.inside) > 0 else -1.0
    distance = _signed(a, b, p) * inward
    if abs(distance) <= line.margin:
        return 0
    return 1 if distance > 0 else -1


@dataclass
class LineTrack:
    """One track against one line: the side it was last confirmed on, and a side it is being seen on
    now, for how many detections in a row."""

    side: int | None = None
    candidate: int = 0
    seen: int = 0


@dataclass(frozen=True)
class Crossing:
    line: Line
    track_id: int
    direction: str  # "in" or "out"


class LineCounter:
    """A camera's lines against its tracks. `tracks` may be a dict the caller keeps (inference keeps it
    in the camera's state, which a retried batch works on a copy of); it is changed in place."""

    def __init__(self, lines: Sequence[Line], tracks: dict[tuple[int, str], LineTrack] | None = None) -> None:
        self.lines = lines
        self.tracks: dict[tuple[int, str], LineTrack] = {} if tracks is None else tracks

    def observe(self, track_id: int, foot: Point) -> list[Crossing]:
        """The crossings a track's foot point, seen now, completes."""
        crossings = []
        for line in self.lines:
            side = side_of(line, foot)
            state = self.tracks.setdefault((track_id, line.id), LineTrack())
            if side is None:
                state.side, state.candidate, state.seen = None, 0, 0
                continue
            if side == 0:
                continue
            if state.side is None:
                state.side = side
            if side == state.side:
                state.candidate, state.seen = 0, 0
                continue
            state.seen = state.seen + 1 if side == state.candidate else 1
            state.candidate = side
            if state.seen >= line.confirm_frames:
                crossings.append(Crossing(line, track_id, "in" if side > 0 else "out"))
                state.side, state.candidate, state.seen = side, 0, 0
        return crossings

    def keep_only(self, tracked: Collection[int]) -> None:
        """A track the tracker gave up on is forgotten (a person seen again later is a new track)."""
        for key in [k for k in self.tracks if k[0] not in tracked]:
            del self.tracks[key]
