"""Anomaly stage: the camera's own future-frame prediction model, a score per frame and per zone.

The model sees the camera's last frames before the one it scores; how many it wants is read from
the served model's signature (GetModelMetadata), so a model trained with another history just works.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from services.inference.stages.base import CAMERA_SILENCE_RESET_MS, BatchContext, FrameWork, StagePlugin
from services.inference.zones import zone_maxima
from services.shared.storeconfig import AnomalyStage


def history_length(input_shapes: dict[str, list[int]], model: str) -> int:
    """Past frames the model wants: its `frames` input is [batch, history + 1, height, width, channels]."""
    shape = input_shapes.get("frames")
    if not shape or len(shape) != 5 or shape[1] < 2:
        raise ValueError(f"model {model}: input `frames` should be [batch, history+1, height, width, channels], is {shape}")
    return shape[1] - 1


class AnomalyPlugin(StagePlugin):
    KIND = "anomaly"
    ORDER = 3

    def __init__(self, stage: AnomalyStage) -> None:
        self.stage = stage

    def stack(self, item: FrameWork, ctx: BatchContext, history: int) -> np.ndarray:
        """[history+1, H, W, 1]: this camera's previous frames, then this one (causal, as trained)."""
        grey = cv2.cvtColor(item.image, cv2.COLOR_BGR2GRAY)[..., None]
        state = ctx.state(item.frame.camera_id)
        past = state.anomaly_history
        gap = item.frame.capture_time_ms - state.anomaly_last_ms
        if past is None or past.maxlen != history or not 0 < gap <= CAMERA_SILENCE_RESET_MS or past[-1].shape != grey.shape:
            past = deque([grey] * history, maxlen=history)
        stack = np.stack([*past, grey])
        past.append(grey)
        state.anomaly_history, state.anomaly_last_ms = past, item.frame.capture_time_ms
        return stack

    def run(self, items: list[FrameWork], ctx: BatchContext) -> None:
        history = history_length(ctx.input_shapes(self.stage.model), self.stage.model)
        stacks = np.stack([self.stack(item, ctx, history) for item in items])
        result, version = ctx.predict(self.stage.model, {"frames": stacks}, {"anomaly_map": len(items), "anomaly_score": len(items)})
        for item, score_map, score in zip(items, result["anomaly_map"], result["anomaly_score"], strict=True):
            item.analysis.anomaly_score = float(score)
            worst = {zone.id: value for zone, value in zone_maxima(score_map, ctx.masks_for(item.camera, *score_map.shape))}
            for zone in item.analysis.zones:
                zone.anomaly_score = worst[zone.zone_id]
            item.analysis.models.add(name=self.stage.model, version=version)
