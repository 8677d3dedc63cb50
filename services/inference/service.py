"""Inference: Frames in, FrameAnalysis out, with the models served over gRPC.

Each camera's `stages` (store config) say which models run on its frames; each kind of stage is a
plugin in `services/inference/stages/`. Frames of cameras with the same stages and frame size are
batched together into one request per model.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict

import cv2
import numpy as np
from confluent_kafka import Message
from prometheus_client import Histogram

from services.inference.client import ModelServerError, PredictionClient
from services.inference.stages import BatchContext, CameraState, FrameWork, new_analysis, plugins_for
from services.inference.zones import ZoneMask, zone_masks
from services.shared import topics
from services.shared.contracts.frame_pb2 import Frame
from services.shared.kafka import ConsumeLoop, Output
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import Camera, StoreConfig, StoreConfigWatcher

log = logging.getLogger(__name__)

PREDICT_SECONDS = Histogram("sw_inference_predict_seconds", "Model server Predict latency per batch", ["model"])


class FrameAnalyzer:
    """Turns a batch of Kafka messages holding Frames into FrameAnalysis outputs (or DLQ entries)."""

    def __init__(self, config: StoreConfig, client: PredictionClient, watcher: StoreConfigWatcher | None = None) -> None:
        self.config = config
        self.client = client
        # Cameras added to the store config are picked up live, as ingest does.
        self.watcher = watcher
        self._masks: dict[tuple[str, str, int, int], list[ZoneMask]] = {}
        # Per camera: what its stages carry from frame to frame (anomaly history, tracks, zone visits).
        self.states: dict[str, CameraState] = {}
        self._input_shapes: dict[str, tuple[dict[str, list[int]], int]] = {}
        self.loop: ConsumeLoop | None = None

    def _masks_for(self, camera: Camera, rows: int, cols: int) -> list[ZoneMask]:
        key = (camera.id, camera.model_dump_json(include={"zones"}), rows, cols)  # an edit mid-batch never mixes old and new zones
        if key not in self._masks:
            self._masks[key] = zone_masks(camera, rows, cols)
        return self._masks[key]

    def refresh_config(self, now: bool = False) -> None:
        """Take an edited store config (as often as the watcher looks, or at once with `now`)."""
        config = self.watcher.poll(force=now) if self.watcher is not None else None
        if config is not None:
            self.config = config
            self._masks.clear()

    def decode_frame(self, msg: Message) -> tuple[Frame, Camera, np.ndarray]:
        frame = decode(Frame, msg.value(), required=("store_id", "camera_id", "jpeg"))
        try:
            _, camera = self.config.camera(frame.camera_id)
        except KeyError:
            self.refresh_config(now=True)  # a camera just added: ingest may have read the edit first
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

    def _predict(self, model: str, inputs: dict[str, np.ndarray], expect: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
        """Predict, and check the answer has each `expect`ed output with one row per input."""
        started = time.perf_counter()
        try:
            result, version = self.client.predict(model, inputs)
        except ModelServerError:
            self._input_shapes.pop(model, None)  # the model may have changed under us: ask for its signature again
            raise
        PREDICT_SECONDS.labels(model).observe(time.perf_counter() - started)
        if model in self._input_shapes and self._input_shapes[model][1] != version:
            del self._input_shapes[model]  # a new version was swapped in: its signature is read before the next batch
        for name, rows in expect.items():
            if name not in result or len(result[name]) != rows:
                raise ModelServerError(f"model {model} v{version} answered {sorted(result)}; expected `{name}` with {rows} rows")
        return result, version

    def _shapes(self, model: str) -> dict[str, list[int]]:
        """A model's input shapes from the server, cached until another version answers."""
        if model not in self._input_shapes:
            self._input_shapes[model] = self.client.input_shapes(model)
        return self._input_shapes[model][0]

    def handle(self, messages: list[Message]) -> list[Output]:
        assert self.loop is not None
        self.refresh_config()
        outputs: list[Output] = []
        # Cameras with the same stages (and frame size) share each model request.
        groups: dict[tuple, list[FrameWork]] = defaultdict(list)
        for msg in messages:
            try:
                frame, camera, image = self.decode_frame(msg)
            except PoisonMessage as exc:
                outputs.append(self.loop.dead_letter(msg, str(exc)))
                continue
            groups[(camera.model_dump_json(include={"stages"}), image.shape)].append(FrameWork(msg, frame, camera, image, new_analysis(frame, camera)))
        ctx = BatchContext(self._predict, self._shapes, self._masks_for, self.states)
        for group in groups.values():
            cameras = {item.frame.camera_id for item in group}
            before = {cid: copy.deepcopy(ctx.working[cid]) for cid in cameras if cid in ctx.working}
            try:
                for plugin in plugins_for(group[0].camera):
                    plugin.run(group, ctx)
            except (ModelServerError, ValueError) as exc:
                # The server refuses these frames themselves (wrong model name, wrong input): keep them in the DLQ.
                outputs.extend(self.loop.dead_letter(item.msg, str(exc)) for item in group)
                for cid in cameras:  # what the stages half-learnt from frames now in the DLQ is not kept
                    if cid in before:
                        ctx.working[cid] = before[cid]
                    else:
                        ctx.working.pop(cid, None)
                continue
            outputs.extend(Output(topics.DETECTIONS, item.frame.camera_id, encode(item.analysis)) for item in group)
        # Every stage of the batch is done (a retryable failure raised before here): keep what the stages learnt.
        self.states.update(ctx.working)
        return outputs
