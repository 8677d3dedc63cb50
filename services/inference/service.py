"""Inference: Frames in, FrameAnalysis out, with the models served over gRPC.

Each camera's `stages` (store config) say which models run on its frames; each kind of stage is a
plugin in `services/inference/stages/`. Frames of cameras with the same stages and frame size are
batched together into one request per model. A heartbeat Frame (no image: the scene has not
changed) is answered without a model, from the camera's last analysis.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter, defaultdict

import cv2
import numpy as np
from confluent_kafka import Message
from prometheus_client import Counter as MetricCounter
from prometheus_client import Histogram

from services.inference.client import ModelServerError, PredictionClient
from services.inference.stages import BatchContext, CameraState, FrameWork, new_analysis, plugins_for
from services.inference.zones import ZoneMask, zone_masks
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.kafka import Outcome, Output, Poison
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import Camera, StoreConfig, StoreConfigWatcher

log = logging.getLogger(__name__)

PREDICT_SECONDS = Histogram("sw_inference_predict_seconds", "Model server Predict latency per batch", ["model"])
LINE_CROSSINGS = MetricCounter("sw_line_crossings_total", "Tracked people crossing a camera's counting line (store config `lines`)",
                               ["store", "camera", "line", "direction"])


def heartbeat_analysis(frame: Frame, camera: Camera, state: CameraState) -> FrameAnalysis:
    """The answer to a heartbeat: the camera's last analysis, still holding at the heartbeat's time.

    Only an analysis that surely still holds is repeated; after a restart, a frame lost or
    dead-lettered since, time gone backwards or zones edited, the answer has no zones, which the
    correlator reads as coverage unknown, never as nobody there.
    """
    answer = FrameAnalysis(store_id=frame.store_id, camera_id=frame.camera_id, capture_time_ms=frame.capture_time_ms,
                           frame_sequence=frame.sequence, heartbeat=True)
    last = state.last_analysis
    if (last is None or frame.sequence != state.last_sequence + 1 or frame.capture_time_ms < last.capture_time_ms
            or [(z.zone_id, z.kind) for z in last.zones] != [(z.id, z.kind) for z in camera.zones]):
        return answer
    answer.CopyFrom(last)
    answer.capture_time_ms, answer.frame_sequence, answer.heartbeat = frame.capture_time_ms, frame.sequence, True
    del answer.line_crossings[:]  # crossed in the frame it repeats, counted there
    # Everyone still stands where they stood, for longer; objects may have stopped counting as new.
    elapsed = frame.capture_time_ms - last.capture_time_ms
    new_within_ms = {z.id: z.new_object_s * 1000 for z in camera.zones}
    new_objects = Counter(v.zone_id for o in answer.objects for v in o.zones if frame.capture_time_ms - v.entered_ms <= new_within_ms[v.zone_id])
    for zone in answer.zones:
        if zone.person_count:
            zone.max_dwell_ms += elapsed
        zone.new_object_count = new_objects[zone.zone_id]
    return answer


class FrameAnalyzer:
    """Turns a batch of Kafka messages holding Frames into FrameAnalysis outputs (or poison verdicts)."""

    def __init__(self, config: StoreConfig, client: PredictionClient, watcher: StoreConfigWatcher | None = None) -> None:
        self.config = config
        self.client = client
        # Cameras added to the store config are picked up live, as ingest does.
        self.watcher = watcher
        self._masks: dict[tuple[str, str, int, int], list[ZoneMask]] = {}
        # Per camera: what its stages carry from frame to frame (anomaly history, tracks, zone visits).
        self.states: dict[str, CameraState] = {}
        self._input_shapes: dict[str, tuple[dict[str, list[int]], int]] = {}

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

    def decode_frame(self, msg: Message) -> tuple[Frame, Camera, np.ndarray | None]:
        """The Frame, its camera and its decoded image; a heartbeat has no image (None)."""
        frame = decode(Frame, msg.value(), required=("store_id", "camera_id"))
        if not frame.heartbeat and not frame.jpeg:
            raise PoisonMessage(f"{Frame.DESCRIPTOR.full_name}: missing required field(s) jpeg")
        try:
            _, camera = self.config.camera(frame.camera_id)
        except KeyError:
            self.refresh_config(now=True)  # a camera just added: ingest may have read the edit first
            try:
                _, camera = self.config.camera(frame.camera_id)
            except KeyError:
                raise PoisonMessage(f"camera {frame.camera_id!r} is not in the store config") from None
        if frame.heartbeat:
            return frame, camera, None
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

    def handle(self, messages: list[Message]) -> Outcome:
        self.refresh_config()
        # One answer per usable message, in the batch's order: a camera's analyses keep their order,
        # and a heartbeat repeats the analysis published just before it.
        answers: list[FrameWork | tuple[Frame, Camera]] = []
        poison: list[Poison] = []
        # Cameras with the same stages (and frame size) share each model request.
        groups: dict[tuple, list[FrameWork]] = defaultdict(list)
        for msg in messages:
            try:
                frame, camera, image = self.decode_frame(msg)
            except PoisonMessage as exc:
                poison.append(Poison(msg, str(exc)))
                continue
            if image is None:
                answers.append((frame, camera))
                continue
            item = FrameWork(msg, frame, camera, image, new_analysis(frame, camera))
            answers.append(item)
            groups[(camera.model_dump_json(include={"stages"}), image.shape)].append(item)
        ctx = BatchContext(self._predict, self._shapes, self._masks_for, self.states)
        refused: set[int] = set()
        for group in groups.values():
            cameras = {item.frame.camera_id for item in group}
            before = {cid: copy.deepcopy(ctx.working[cid]) for cid in cameras if cid in ctx.working}
            try:
                for plugin in plugins_for(group[0].camera):
                    plugin.run(group, ctx)
            except (ModelServerError, ValueError) as exc:
                # The server refuses these frames themselves (wrong model name, wrong input): keep them in the DLQ.
                refused.update(id(item) for item in group)
                poison += [Poison(item.msg, str(exc)) for item in group]
                for cid in cameras:  # what the stages half-learnt from frames now in the DLQ is not kept
                    if cid in before:
                        ctx.working[cid] = before[cid]
                    else:
                        ctx.working.pop(cid, None)
        outputs: list[Output] = []
        for answer in answers:
            if isinstance(answer, FrameWork):
                if id(answer) in refused:
                    continue
                state = ctx.state(answer.frame.camera_id)
                state.last_analysis, state.last_sequence = answer.analysis, answer.frame.sequence
                for crossing in answer.analysis.line_crossings:
                    LINE_CROSSINGS.labels(answer.frame.store_id, answer.frame.camera_id, crossing.line_id, crossing.direction).inc()
                outputs.append(Output(topics.DETECTIONS, answer.frame.camera_id, encode(answer.analysis)))
            else:
                frame, camera = answer
                state = ctx.state(frame.camera_id)
                outputs.append(Output(topics.DETECTIONS, frame.camera_id, encode(heartbeat_analysis(frame, camera, state))))
                state.last_sequence = frame.sequence
        # Every stage of the batch is done (a retryable failure raised before here): keep what the stages learnt.
        self.states.update(ctx.working)
        return Outcome(outputs, poison)
