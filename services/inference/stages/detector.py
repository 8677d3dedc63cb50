"""Detector stage: persons and objects, tracked, placed in zones, with how long each has been there.

The detector has the TF Object Detection API signature (RGB uint8 in; boxes, scores, COCO class
ids out), so any such model serves. Per camera:
- it runs at most `detect_fps` times a second; between runs the tracker carries people on their
  motion (reported with `detected = false`), which is how a 2-core store box keeps up;
- with `tiles`, each frame is also cut into overlapping tiles at the same size, all sent in one
  request, and the boxes are merged back with per-class non-maximum suppression, so people far
  from the camera are large enough for the detector;
- tracks (ByteTrack-style, `services/inference/tracking.py`) give each person an id, and the
  person's anchor point (feet, or centre) says which zones they are in and since when;
- a detected person's foot point against the camera's counting lines (`services/inference/lines.py`)
  gives the frame's line crossings.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from services.inference.lines import LineCounter
from services.inference.stages.base import CAMERA_SILENCE_RESET_MS, BatchContext, CameraState, FrameWork, StagePlugin
from services.inference.tracking import Detection, Tracker, TrackerConfig, iou_matrix
from services.inference.zones import anchor_point, zones_at
from services.shared.coco import KEYPOINTS, PERSON, coco_names
from services.shared.storeconfig import DetectorStage, TileGrid
from services.shared.zonevisits import Sighting, ZoneVisits

OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
MERGE_IOU = 0.5


def tile_windows(width: int, height: int, grid: TileGrid) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) pixel windows of equal size covering the frame, neighbours overlapping by `overlap`."""
    tile_w = min(width, math.ceil(width / (grid.cols - (grid.cols - 1) * grid.overlap)))
    tile_h = min(height, math.ceil(height / (grid.rows - (grid.rows - 1) * grid.overlap)))
    windows = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            # The last column and row sit on the frame's edge, whatever the rounding.
            x0 = width - tile_w if c == grid.cols - 1 else min(round(c * tile_w * (1 - grid.overlap)), width - tile_w)
            y0 = height - tile_h if r == grid.rows - 1 else min(round(r * tile_h * (1 - grid.overlap)), height - tile_h)
            windows.append((x0, y0, x0 + tile_w, y0 + tile_h))
    return windows


def to_frame(window: tuple[int, int, int, int], width: int, height: int, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detector boxes (ymin, xmin, ymax, xmax in 0..1 of the crop `window`) as x0, y0, x1, y1 in 0..1 of
    the frame, and which to keep: a box touching an edge the tile shares with a neighbour is a person
    cut in two, left to the neighbouring tile (they overlap) or to the whole frame."""
    x0, y0, x1, y1 = window
    ymin, xmin, ymax, xmax = boxes.T if len(boxes) else np.zeros((4, 0))
    frame = np.stack([(x0 + xmin * (x1 - x0)) / width, (y0 + ymin * (y1 - y0)) / height,
                      (x0 + xmax * (x1 - x0)) / width, (y0 + ymax * (y1 - y0)) / height], -1).reshape(-1, 4)
    edge = 0.01
    cut = ((xmin < edge) & (x0 > 0)) | ((ymin < edge) & (y0 > 0)) | ((xmax > 1 - edge) & (x1 < width)) | ((ymax > 1 - edge) & (y1 < height))
    return frame, ~cut


def appearance_of(image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """A person's colour histogram (HSV, 8x4x4 bins, normalised) over the torso: the middle of the box,
    away from the background at its sides and the floor and hair at its ends."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box * [width, height, width, height]
    w, h = x1 - x0, y1 - y0
    crop = image[int(max(0, y0 + 0.15 * h)):int(min(height, y0 + 0.6 * h)), int(max(0, x0 + 0.2 * w)):int(min(width, x1 - 0.2 * w))]
    if crop.size < 3 * 16:
        return None
    hist = cv2.calcHist([cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = MERGE_IOU) -> list[int]:
    """Indices kept by per-class non-maximum suppression, best first (boxes x0, y0, x1, y1)."""
    keep: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        overlaps = iou_matrix(boxes[idx], boxes[idx])
        suppressed = np.zeros(len(idx), bool)
        for i in range(len(idx)):
            if not suppressed[i]:
                keep.append(int(idx[i]))
                suppressed |= overlaps[i] > iou
    return sorted(keep, key=lambda k: -scores[k])


def _in_frame(box: np.ndarray | tuple[float, ...]) -> tuple[float, float, float, float]:
    """A track's box (x0, y0, x1, y1) clipped to the frame: a coasting box may drift past its edge."""
    x0, y0, x1, y1 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    return x0, y0, x1, y1


class DetectorPlugin(StagePlugin):
    KIND = "detector"
    ORDER = 1

    def __init__(self, stage: DetectorStage) -> None:
        self.stage = stage
        names = coco_names()
        self.wanted = {PERSON} | {cid for cid, name in names.items() if name in stage.objects}
        self.names = names

    def _due(self, item: FrameWork, ctx: BatchContext) -> bool:
        if self.stage.detect_fps is None:
            return True
        state = ctx.state(item.frame.camera_id)
        if item.frame.capture_time_ms - state.last_detect_ms >= 1000 / self.stage.detect_fps or item.frame.capture_time_ms < state.last_detect_ms:
            state.last_detect_ms = item.frame.capture_time_ms
            return True
        return False

    def detect(self, items: list[FrameWork], ctx: BatchContext) -> tuple[list[list[Detection]], int]:
        """Each frame's detections (boxes 0..1 of the frame), whole frame and tiles in as few requests as shapes allow."""
        crops: dict[tuple[int, ...], list[tuple[int, tuple[int, int, int, int], np.ndarray]]] = {}
        for i, item in enumerate(items):
            height, width = item.image.shape[:2]
            windows = [(0, 0, width, height)]
            if self.stage.tiles is not None:
                windows = tile_windows(width, height, self.stage.tiles) + (windows if self.stage.tiles.whole_frame else [])
            for window in windows:
                x0, y0, x1, y1 = window
                crop = np.ascontiguousarray(item.rgb[y0:y1, x0:x1])
                crops.setdefault(crop.shape, []).append((i, window, crop))
        found: list[tuple[list, list, list, list]] = [([], [], [], []) for _ in items]
        version = 0
        for group in crops.values():
            result, version = ctx.predict(self.stage.model, {"input_tensor": np.stack([c[2] for c in group])}, dict.fromkeys(OUTPUTS, len(group)))
            # A pose detector (the opt-in YOLO11n-pose profile) also answers keypoints per detection: y, x in 0..1 of its input.
            points, point_scores = result.get("detection_keypoints"), result.get("detection_keypoint_scores")
            for j, ((i, (x0, y0, x1, y1), _crop), boxes, scores, classes, count) in enumerate(zip(
                    group, result["detection_boxes"], result["detection_scores"], result["detection_classes"], result["num_detections"], strict=True)):
                height, width = items[i].image.shape[:2]
                n = int(count)
                frame_boxes, whole = to_frame((x0, y0, x1, y1), width, height, boxes[:n])
                if self.stage.tiles is not None and not self.stage.tiles.whole_frame:
                    whole[:] = True  # no whole-frame pass to fall back on: keep halves, NMS merges what overlaps
                keep = whole & (scores[:n] >= self.stage.min_score / 4) & np.isin(classes[:n].astype(int), list(self.wanted))
                found[i][0].extend(frame_boxes[keep])
                found[i][1].extend(scores[:n][keep])
                found[i][2].extend(classes[:n][keep].astype(int))
                if points is not None and point_scores is not None:
                    kx = (x0 + points[j][:n][keep][..., 1] * (x1 - x0)) / width
                    ky = (y0 + points[j][:n][keep][..., 0] * (y1 - y0)) / height
                    found[i][3].extend(np.stack([kx, ky, point_scores[j][:n][keep]], -1))
                else:
                    found[i][3].extend([None] * int(keep.sum()))
        detections: list[list[Detection]] = []
        for item, (boxes, scores, labels, keypoints) in zip(items, found, strict=True):
            if not boxes:
                detections.append([])
                continue
            b, s, lab = np.array(boxes, float), np.array(scores, float), np.array(labels, int)
            detections.append([Detection((float(b[k, 0]), float(b[k, 1]), float(b[k, 2]), float(b[k, 3])), float(s[k]), int(lab[k]),
                                         appearance_of(item.image, b[k]) if lab[k] == PERSON else None, keypoints[k]) for k in nms(b, s, lab)])
        return detections, version

    def tracker_for(self, state: CameraState, t_ms: int) -> Tracker:
        """The camera's tracker, started afresh after a silence or when time went backwards (a replay):
        a person seen before an outage is not assumed to be the one seen after it. Ids keep counting up,
        from the capture time of the camera's first tracker, so they never repeat across restarts."""
        config = TrackerConfig(high_score=self.stage.min_score, low_score=self.stage.min_score / 4, max_lost_s=self.stage.track_max_lost_s)
        silent = not 0 <= t_ms - state.last_frame_ms <= CAMERA_SILENCE_RESET_MS
        if state.tracker is None or state.tracker.config != config or silent:
            first_id = state.tracker.next_id if state.tracker is not None else max(1, t_ms) * 100
            state.tracker = Tracker(config, first_id=first_id)
            state.visits.clear()
            state.lines.clear()
        state.last_frame_ms = t_ms
        return state.tracker

    def run(self, items: list[FrameWork], ctx: BatchContext) -> None:
        due = [item for item in items if self._due(item, ctx)]
        detections, version = self.detect(due, ctx) if due else ([], 0)
        by_item = {id(item): found for item, found in zip(due, detections, strict=True)}
        for item in items:
            state = ctx.state(item.frame.camera_id)
            t_ms = item.frame.capture_time_ms
            tracker = self.tracker_for(state, t_ms)
            seen = []
            if id(item) in by_item:
                seen = [(track, track.box, True) for track in tracker.update(by_item[id(item)], t_ms)]
            matched = {track.track_id for track, _, _ in seen}
            # Confirmed tracks missed this frame (or not looked for) are carried on their motion until lost.
            seen += [(track, box, False) for track, box in tracker.coast(t_ms) if track.track_id not in matched]
            self.fill(item, state, seen, t_ms)
            if id(item) in by_item:
                item.analysis.models.add(name=self.stage.model, version=version)

    def fill(self, item: FrameWork, state: CameraState, seen: list, t_ms: int) -> None:
        """Persons and objects from this frame's tracks, placed in zones with per-zone counts and dwell."""
        boxes = [_in_frame(box) for _track, box, _detected in seen]
        min_hits = state.tracker.config.min_hits if state.tracker is not None else None
        sightings = [Sighting(track.track_id, track.label == PERSON, track.score,
                              sorted(zone.id for zone in zones_at(anchor_point(box, self.stage.anchor), item.camera.zones)),
                              new_track_first_seen_ms=track.first_seen_ms if detected and track.hits == min_hits else None)
                     for (track, _box, detected), box in zip(seen, boxes, strict=True)]
        visits = ZoneVisits(item.camera.zones, state.visits)
        placed = visits.fill(item.analysis, sightings, t_ms)
        for (track, _box, detected), box, zones in zip(seen, boxes, placed, strict=True):
            x0, y0, x1, y1 = box
            bbox = {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
            if track.label == PERSON:
                person = item.analysis.persons.add(track_id=track.track_id, box=bbox, score=track.score, first_seen_ms=track.first_seen_ms, detected=detected,
                                                   zones=zones)
                if detected and track.keypoints is not None:  # from a pose detector, this frame
                    for name, (x, y, score) in zip(KEYPOINTS, track.keypoints, strict=True):
                        person.keypoints.add(name=name, x=float(x), y=float(y), score=float(score))
                item.persons.append((track.track_id, box, detected))
            else:
                item.analysis.objects.add(label=self.names.get(track.label, f"class-{track.label}"), score=track.score, box=bbox, class_id=track.label,
                                          track_id=track.track_id, first_seen_ms=track.first_seen_ms, zones=zones)
        # Detected foot points only: a track coasting behind a shelf may be predicted across a line it never crossed.
        counter = LineCounter(item.camera.lines, state.lines)
        for (track, _box, detected), box in zip(seen, boxes, strict=True):
            if detected and track.label == PERSON:
                for crossing in counter.observe(track.track_id, anchor_point(box, "foot")):
                    item.analysis.line_crossings.add(line_id=crossing.line.id, track_id=track.track_id, direction=crossing.direction,
                                                     line_kind=crossing.line.kind)
        # A person the tracker gave up on leaves every zone and every line.
        tracked = {track.track_id for track in state.tracker.tracks} if state.tracker is not None else set()
        visits.keep_only(tracked)
        counter.keep_only(tracked)
