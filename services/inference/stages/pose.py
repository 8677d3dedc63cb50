"""Pose stage: 17 COCO keypoints per tracked person, from a single-person pose model on the person's crop.

Runs after the detector stage, on persons it detected in this frame who are at least
`min_person_px` tall. Each crop is the person's box made square with a margin (what single-person
models such as MoveNet expect), resized to the model's input size read from its signature. The model
answers `keypoints` [N, 17, 3] as (y, x, score) in 0..1 of the crop; they go into the person's
FrameAnalysis entry in 0..1 of the frame, so rules can look at hands against hips and bags.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from services.inference.stages.base import STAGE_FAILURES, BatchContext, FrameWork, ModelServerError, StagePlugin
from services.shared.coco import KEYPOINTS
from services.shared.storeconfig import PoseStage

log = logging.getLogger(__name__)
MARGIN = 0.15


def square_crop(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) in pixels: the box's longer side plus a margin, centred on the box (may leave the frame)."""
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    side = max(x1 - x0, y1 - y0) * (1 + 2 * MARGIN)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return round(cx - side / 2), round(cy - side / 2), max(1, round(side))


def cut(image: np.ndarray, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """The square window of `image` (black outside the frame), resized to size x size."""
    height, width = image.shape[:2]
    canvas = np.zeros((side, side, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


class PosePlugin(StagePlugin):
    KIND = "pose"
    ORDER = 2

    def __init__(self, stage: PoseStage) -> None:
        self.stage = stage

    def run(self, items: list[FrameWork], ctx: BatchContext) -> None:
        shape = ctx.input_shapes(self.stage.model).get("images")
        if not shape or len(shape) != 4 or shape[1] <= 0:
            raise ValueError(f"pose model {self.stage.model}: input `images` should be [batch, size, size, 3], is {shape}")
        size = shape[1]
        jobs = []
        for item in items:
            height, width = item.image.shape[:2]
            posed = {p.track_id for p in item.analysis.persons if p.keypoints}  # a pose detector answered already
            for track_id, box, detected in item.persons:
                if detected and track_id not in posed and (box[3] - box[1]) * height >= self.stage.min_person_px:
                    x0, y0, side = square_crop(box, width, height)
                    jobs.append((item, track_id, x0, y0, side, cut(item.rgb, x0, y0, side, size)))
        if not jobs:
            return
        try:
            result, version = ctx.predict(self.stage.model, {"images": np.stack([j[5] for j in jobs])}, {"keypoints": len(jobs)})
        except ModelServerError as exc:
            # Keypoints enrich the persons; without them the frames still say who is where.
            STAGE_FAILURES.labels(self.KIND).inc(len(jobs))
            log.warning("pose model failed; persons published without keypoints", extra={"model": self.stage.model, "error": str(exc)})
            return
        for (item, track_id, x0, y0, side, _crop), points in zip(jobs, result["keypoints"], strict=True):
            height, width = item.image.shape[:2]
            person = next(p for p in item.analysis.persons if p.track_id == track_id)
            for name, (y, x, score) in zip(KEYPOINTS, points, strict=True):
                person.keypoints.add(name=name, x=float((x0 + x * side) / width), y=float((y0 + y * side) / height), score=float(score))
            if not any(m.name == self.stage.model for m in item.analysis.models):
                item.analysis.models.add(name=self.stage.model, version=version)
