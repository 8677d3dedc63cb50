"""What every inference stage plugin gets: the batch's frames, model calls, and per-camera state.

A stage plugin (one file per kind: presence, detector, pose, anomaly) turns one batch of frames of
cameras that share its settings into fields of their FrameAnalysis. State that carries from frame
to frame (the anomaly model's history, the tracker) lives in `CameraState`; a batch works on copies
that the analyzer keeps only once every stage of the batch succeeded, so a batch retried after a
model-server outage sees the same past again.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from confluent_kafka import Message
from prometheus_client import Counter

from services.inference.lines import LineTrack
from services.inference.tracking import Tracker
from services.inference.zones import ZoneMask
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.storeconfig import Camera


class ModelServerError(RuntimeError):
    """The model server rejected the request itself (unknown model, bad input): retrying will not help.

    Defined here, not beside the gRPC client, so that stages (and the evaluation scripts that run
    them in process) can name it without importing TensorFlow's serving stubs."""


STAGE_FAILURES = Counter("sw_inference_stage_failures_total", "Persons or frames an optional stage could not enrich (model refused)", ["stage"])
# A camera silent longer than this (a drop, a restart), or whose time went backwards, starts its
# stages' memory afresh: the anomaly model's frame history and the tracker.
CAMERA_SILENCE_RESET_MS = 5_000


@dataclass
class CameraState:
    """What a camera's stages remember between frames."""

    anomaly_history: deque | None = None
    anomaly_last_ms: int = 0
    tracker: Tracker | None = None
    # (track id, zone id) -> capture time the track's anchor entered the zone.
    visits: dict[tuple[int, str], int] = field(default_factory=dict)
    # (track id, line id) -> the side of the line the track was last clearly on, what it was counted for.
    lines: dict[tuple[int, str], LineTrack] = field(default_factory=dict)
    last_detect_ms: int = -(1 << 62)
    last_frame_ms: int = -(1 << 62)
    # The analysis last published for an image of this camera, and the sequence number last answered
    # (image or heartbeat): a heartbeat repeats that analysis only when it follows on with no frame lost.
    last_analysis: FrameAnalysis | None = None
    last_sequence: int = -1


@dataclass
class FrameWork:
    """One frame on its way through the stages."""

    msg: Message
    frame: Frame
    camera: Camera
    image: np.ndarray  # BGR, as decoded
    analysis: FrameAnalysis
    # Set by the detector stage for the pose stage: (track id, box x0, y0, x1, y1 in 0..1, detected this frame).
    persons: list[tuple[int, tuple[float, float, float, float], bool]] = field(default_factory=list)

    @property
    def rgb(self) -> np.ndarray:
        return self.image[..., ::-1]


def new_analysis(frame: Frame, camera: Camera) -> FrameAnalysis:
    """The FrameAnalysis a frame's stages fill in: the frame's identity, and one entry per zone of its camera."""
    analysis = FrameAnalysis(store_id=frame.store_id, camera_id=frame.camera_id, capture_time_ms=frame.capture_time_ms, frame_sequence=frame.sequence)
    for zone in camera.zones:
        analysis.zones.add(zone_id=zone.id, kind=zone.kind)
    return analysis


def saved_model_predict(serve: Callable, tf: Any) -> Predict:
    """`BatchContext.predict` over a detector SavedModel called in process (evaluations run the stage code this way)."""

    def predict(_model: str, inputs: dict[str, np.ndarray], _expect: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
        return {k: v.numpy() for k, v in serve(input_tensor=tf.constant(inputs["input_tensor"])).items()}, 1

    return predict


Predict = Callable[[str, dict[str, np.ndarray], dict[str, int]], tuple[dict[str, np.ndarray], int]]


class BatchContext:
    """Model calls, zone masks and working copies of camera state for one batch."""

    def __init__(self, predict: Predict, input_shapes: Callable[[str], dict[str, list[int]]], masks_for: Callable[[Camera, int, int], list[ZoneMask]],
                 committed: dict[str, CameraState]) -> None:
        self.predict = predict
        self.input_shapes = input_shapes
        self.masks_for = masks_for
        self._committed = committed
        self.working: dict[str, CameraState] = {}

    def state(self, camera_id: str) -> CameraState:
        if camera_id not in self.working:
            self.working[camera_id] = copy.deepcopy(self._committed.get(camera_id, CameraState()))
        return self.working[camera_id]


class StagePlugin:
    """Base of the stage plugins; `ORDER` runs presence, then detector, pose, anomaly."""

    KIND: ClassVar[str]
    ORDER: ClassVar[int]

    def run(self, items: list[FrameWork], ctx: BatchContext) -> None:
        raise NotImplementedError
