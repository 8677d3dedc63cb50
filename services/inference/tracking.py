"""Multi-object tracking per camera, ByteTrack-style: detections in, stable track ids out.

Rules ask "how long has this person been in the zone", which needs the same id for the same person
from frame to frame, also when the detector misses them for a moment (a shelf, another shopper, a
low score). The approach is ByteTrack's (Zhang et al. 2022):

1. every track predicts where its box is now from the velocity of its centre (the box keeps its last
   measured size: a size "velocity" from one cut-off or half-hidden detection would grow or invert
   the box within a second of coasting);
2. confident detections are matched to all tracks by overlap (IoU), best pairs first, where "best"
   weighs the overlap by how alike track and detection look (a colour histogram of the torso, when
   the caller gives one): two people who stood together part with their own ids;
3. the leftover tracks get a second chance with the low-score detections, which are often the same
   person half hidden, rather than being dropped;
4. a confident detection nobody claims is first offered to the confirmed tracks that lost someone
   nearby and look alike (the detector boxed a half-hidden person elsewhere); otherwise it starts a
   tentative track, confirmed after `min_hits` frames;
5. a track unseen for `max_lost_s` is ended; until then it keeps its id and coasts on its velocity,
   so a person who walks behind a pillar comes back under the same id.

Pure numpy and no model: unit-tested on synthetic sequences, fed by whatever detector a camera uses;
measured on hand-labelled real footage by `make eval-tracking`.
Boxes are (x0, y0, x1, y1) in any consistent unit (inference uses 0..1 of the frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]
    score: float
    label: int = 1  # COCO id; tracks never switch class
    appearance: np.ndarray | None = None  # a normalised colour histogram (`appearance_of`), when the caller has the image
    keypoints: np.ndarray | None = None  # [17, 3] x, y, score, when the detector is a pose detector (carried, not used)


@dataclass
class Track:
    track_id: int
    box: np.ndarray  # x0, y0, x1, y1 as last corrected
    label: int
    score: float
    first_seen_ms: int
    last_seen_ms: int
    hits: int = 1
    confirmed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # of the box's centre, box units per second
    appearance: np.ndarray | None = None  # running average of its detections' colour histograms
    keypoints: np.ndarray | None = None  # from its latest detection, when the detector gives them

    def predicted(self, t_ms: int) -> np.ndarray:
        dt = max(0.0, (t_ms - self.last_seen_ms) / 1000)
        return self.box + np.tile(self.velocity * dt, 2)


@dataclass
class TrackerConfig:
    high_score: float = 0.5  # detections that may start or extend a track in the first pass
    low_score: float = 0.1  # below this a detection is ignored; between the two: second pass only
    match_iou: float = 0.3  # first pass
    low_match_iou: float = 0.5  # second pass: a low-score box must overlap well to be trusted
    min_hits: int = 2  # frames before a new track is reported
    max_lost_s: float = 2.0  # a track not seen this long is ended
    velocity_smoothing: float = 0.5  # weight of the newest velocity estimate
    appearance_smoothing: float = 0.1  # weight of the newest colour histogram
    reattach_similarity: float = 0.75  # a lost track takes back a detection that looks this alike...
    reattach_reach: float = 1.5  # ...within this many of its box heights of where it expects the person


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_match(iou: np.ndarray, threshold: float, affinity: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(row, column) pairs with IoU at least `threshold`, each row and column used once, best first
    (by `affinity` where given, else by IoU)."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    rank = iou if affinity is None else affinity
    rows, cols = np.nonzero(iou >= threshold)
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    for k in np.argsort(-rank[rows, cols], kind="stable"):
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            pairs.append((r, c))
            used_rows.add(r)
            used_cols.add(c)
    return pairs


def similarity(tracks: list[Track], detections: list[Detection]) -> np.ndarray:
    """Bhattacharyya coefficient of colour histograms, track x detection (1 where either has none)."""
    out = np.ones((len(tracks), len(detections)))
    for i, track in enumerate(tracks):
        for j, detection in enumerate(detections):
            if track.appearance is not None and detection.appearance is not None:
                out[i, j] = float(np.sqrt(track.appearance * detection.appearance).sum())
    return out


class Tracker:
    """One camera's tracks. `update()` takes one frame's detections and returns the confirmed tracks seen in it."""

    def __init__(self, config: TrackerConfig | None = None, first_id: int = 1) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.next_id = first_id

    def _correct(self, track: Track, detection: Detection, t_ms: int) -> None:
        box = np.asarray(detection.box, float)
        dt = (t_ms - track.last_seen_ms) / 1000
        if dt > 0:
            alpha = self.config.velocity_smoothing
            moved = (box[:2] + box[2:]) / 2 - (track.box[:2] + track.box[2:]) / 2
            track.velocity = alpha * moved / dt + (1 - alpha) * track.velocity
        track.box, track.score, track.last_seen_ms, track.keypoints = box, detection.score, t_ms, detection.keypoints
        if detection.appearance is not None:
            beta = self.config.appearance_smoothing
            track.appearance = detection.appearance if track.appearance is None else (1 - beta) * track.appearance + beta * detection.appearance
        track.hits += 1
        track.confirmed = track.confirmed or track.hits >= self.config.min_hits

    def update(self, detections: list[Detection], t_ms: int) -> list[Track]:
        cfg = self.config
        kept = [d for d in detections if d.score >= cfg.low_score]
        high = [d for d in kept if d.score >= cfg.high_score]
        low = [d for d in kept if d.score < cfg.high_score]
        predicted = np.array([t.predicted(t_ms) for t in self.tracks]).reshape(-1, 4)

        def boxes(items: list[Detection]) -> np.ndarray:
            return np.array([d.box for d in items], float).reshape(-1, 4)

        def same_label(track_rows: list[int], items: list[Detection]) -> np.ndarray:
            return np.array([[self.tracks[r].label == d.label for d in items] for r in track_rows], bool).reshape(len(track_rows), len(items))

        all_rows = list(range(len(self.tracks)))
        looks = similarity(self.tracks, high)
        iou = iou_matrix(predicted, boxes(high)) * same_label(all_rows, high)
        matched_rows: set[int] = set()
        matched_high: set[int] = set()
        for r, c in greedy_match(iou, cfg.match_iou, iou * looks):
            self._correct(self.tracks[r], high[c], t_ms)
            matched_rows.add(r)
            matched_high.add(c)
        # Second chance: tracks seen in the previous frames, against the low-score boxes.
        rest = [r for r in all_rows if r not in matched_rows]
        if rest and low:
            iou_low = iou_matrix(predicted[rest], boxes(low)) * same_label(rest, low)
            for i, c in greedy_match(iou_low, cfg.low_match_iou):
                self._correct(self.tracks[rest[i]], low[c], t_ms)
                matched_rows.add(rest[i])
        # A person whose box jumped (crossing behind someone, a detector that lost them for a while) is
        # taken back by a confirmed track that lost them, when they look alike and are near where it expects them.
        orphans = [c for c in range(len(high)) if c not in matched_high and high[c].appearance is not None]
        lost = [r for r in all_rows if r not in matched_rows and self.tracks[r].confirmed and self.tracks[r].appearance is not None]
        if orphans and lost:
            expected = predicted[lost]
            found = boxes([high[c] for c in orphans])
            distance = np.linalg.norm(((found[:, :2] + found[:, 2:]) / 2)[None] - ((expected[:, :2] + expected[:, 2:]) / 2)[:, None], axis=-1)
            close = (distance <= cfg.reattach_reach * (expected[:, 3:4] - expected[:, 1:2])) & same_label(lost, [high[c] for c in orphans])
            near = np.where(close, looks[np.ix_(lost, orphans)], 0.0)
            for i, j in greedy_match(near, cfg.reattach_similarity):
                self._correct(self.tracks[lost[i]], high[orphans[j]], t_ms)
                matched_rows.add(lost[i])
                matched_high.add(orphans[j])
        for c, detection in enumerate(high):
            if c not in matched_high:
                self.tracks.append(Track(self.next_id, np.asarray(detection.box, float), detection.label, detection.score, t_ms, t_ms,
                                         confirmed=cfg.min_hits <= 1, appearance=detection.appearance, keypoints=detection.keypoints))
                self.next_id += 1
        # End tracks that have been lost too long, and tentative ones that were not seen again.
        self.tracks = [t for t in self.tracks if t.last_seen_ms == t_ms or (t.confirmed and t_ms - t.last_seen_ms <= cfg.max_lost_s * 1000)]
        return [t for t in self.tracks if t.confirmed and t.last_seen_ms == t_ms]

    def coast(self, t_ms: int) -> list[tuple[Track, np.ndarray]]:
        """Confirmed tracks and where their motion puts them at `t_ms`, for frames the detector skips."""
        return [(t, t.predicted(t_ms)) for t in self.tracks if t.confirmed and t_ms - t.last_seen_ms <= self.config.max_lost_s * 1000]
