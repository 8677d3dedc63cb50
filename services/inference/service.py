"""Inference: Frames in, FrameAnalysis out, with the models served over gRPC."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import cv2
import numpy as np
from confluent_kafka import Message
from prometheus_client import Histogram

from services.inference.client import ModelServerError, PredictionClient
from services.inference.zones import ZoneMask, zone_masks, zone_occupancy
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.kafka import ConsumeLoop, Output
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import Camera, StoreConfig

log = logging.getLogger(__name__)

PREDICT_SECONDS = Histogram("sw_inference_predict_seconds", "Model server Predict latency per batch", ["model"])


class FrameAnalyzer:
    """Turns a batch of Kafka messages holding Frames into FrameAnalysis outputs (or DLQ entries)."""

    def __init__(self, config: StoreConfig, client: PredictionClient) -> None:
        self.config = config
        self.client = client
        self._masks: dict[tuple[str, int, int], list[ZoneMask]] = {}
        self.loop: ConsumeLoop | None = None

    def _masks_for(self, camera: Camera, rows: int, cols: int) -> list[ZoneMask]:
        key = (camera.id, rows, cols)
        if key not in self._masks:
            self._masks[key] = zone_masks(camera, rows, cols)
        return self._masks[key]

    def decode_frame(self, msg: Message) -> tuple[Frame, Camera, np.ndarray]:
        frame = decode(Frame, msg.value(), required=("store_id", "camera_id", "jpeg"))
        try:
            _, camera = self.config.camera(frame.camera_id)
        except KeyError:
            raise PoisonMessage(f"camera {frame.camera_id!r} is not in the store config") from None
        try:
            image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV allows
            raise PoisonMessage(f"frame {frame.camera_id}#{frame.sequence}: JPEG payload rejected by the decoder ({exc.err})") from None
        if image is None:
            raise PoisonMessage(f"frame {frame.camera_id}#{frame.sequence}: JPEG payload cannot be decoded ({len(frame.jpeg)} bytes)")
        return frame, camera, image

    def handle(self, messages: list[Message]) -> list[Output]:
        assert self.loop is not None
        outputs: list[Output] = []
        groups: dict[tuple[str, tuple[int, ...]], list[tuple[Message, Frame, Camera, np.ndarray]]] = defaultdict(list)
        for msg in messages:
            try:
                frame, camera, image = self.decode_frame(msg)
            except PoisonMessage as exc:
                outputs.append(self.loop.dead_letter(msg, str(exc)))
                continue
            groups[(camera.presence_model, image.shape)].append((msg, frame, camera, image))
        for (model, _shape), items in groups.items():
            started = time.perf_counter()
            try:
                result, version = self.client.predict(model, {"images": np.stack([it[3] for it in items])})
            except ModelServerError as exc:
                # The server refuses these frames themselves (wrong model name, wrong input): keep them in the DLQ.
                outputs.extend(self.loop.dead_letter(it[0], str(exc)) for it in items)
                continue
            PREDICT_SECONDS.labels(model).observe(time.perf_counter() - started)
            foreground = result.get("foreground")
            if foreground is None or len(foreground) != len(items):
                problem = f"model {model} v{version} answered {sorted(result)} with {0 if foreground is None else len(foreground)} rows for {len(items)} frames; expected `foreground` per frame"
                outputs.extend(self.loop.dead_letter(it[0], problem) for it in items)
                continue
            for (msg, frame, camera, _image), grid in zip(items, foreground):
                analysis = self.analyse(frame, camera, grid, model, version)
                outputs.append(Output(topics.DETECTIONS, frame.camera_id, encode(analysis)))
        return outputs

    def analyse(self, frame: Frame, camera: Camera, grid: np.ndarray, model: str, version: int) -> FrameAnalysis:
        analysis = FrameAnalysis(
            store_id=frame.store_id,
            camera_id=frame.camera_id,
            capture_time_ms=frame.capture_time_ms,
            frame_sequence=frame.sequence,
        )
        for zone, fraction, present in zone_occupancy(grid, self._masks_for(camera, *grid.shape)):
            analysis.zones.add(zone_id=zone.id, kind=zone.kind, person_present=present, presence_score=fraction)
        analysis.models.add(name=model, version=version)
        return analysis
