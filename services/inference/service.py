"""Inference: Frames in, FrameAnalysis out, with the models served over gRPC."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque

import cv2
import numpy as np
from confluent_kafka import Message
from prometheus_client import Histogram

from modeling.anomaly import HISTORY as ANOMALY_HISTORY
from services.inference.client import ModelServerError, PredictionClient
from services.inference.zones import ZoneMask, zone_masks, zone_maxima, zone_occupancy
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.kafka import ConsumeLoop, Output
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import Camera, StoreConfig, StoreConfigWatcher

log = logging.getLogger(__name__)

PREDICT_SECONDS = Histogram("sw_inference_predict_seconds", "Model server Predict latency per batch", ["model"])
# A longer silence than this (camera drop, restart) starts a camera's history afresh.
HISTORY_MAX_GAP_MS = 5_000
# COCO label map ids the TF Object Detection API models (and our HOG detector) answer with.
DETECTOR_LABELS = {1: "person"}
DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


class FrameAnalyzer:
    """Turns a batch of Kafka messages holding Frames into FrameAnalysis outputs (or DLQ entries)."""

    def __init__(self, config: StoreConfig, client: PredictionClient, watcher: StoreConfigWatcher | None = None) -> None:
        self.config = config
        self.client = client
        # Cameras added to the store config are picked up live, as ingest does.
        self.watcher = watcher
        self._masks: dict[tuple[str, int, int], list[ZoneMask]] = {}
        # Per camera: the last frames (grey) and the capture time of the newest, for the anomaly model.
        self._history: dict[str, tuple[deque, int]] = {}
        self.loop: ConsumeLoop | None = None

    def _masks_for(self, camera: Camera, rows: int, cols: int) -> list[ZoneMask]:
        key = (camera.id, rows, cols)
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

    def anomaly_input(self, frame: Frame, image: np.ndarray, history: dict[str, tuple[deque, int]]) -> np.ndarray:
        """[HISTORY+1, H, W, 1]: this camera's previous frames, then this one (causal, as trained).

        Updates `history`, a working copy that `handle` keeps only once the batch succeeded, so a
        batch retried after a model-server outage sees the same past again.
        """
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[..., None]
        if frame.camera_id not in history and frame.camera_id in self._history:
            kept, kept_ms = self._history[frame.camera_id]
            history[frame.camera_id] = (deque(kept, maxlen=ANOMALY_HISTORY), kept_ms)
        past, last_ms = history.get(frame.camera_id, (None, 0))
        gap = frame.capture_time_ms - last_ms
        if past is None or not 0 < gap <= HISTORY_MAX_GAP_MS or past[-1].shape != grey.shape:
            past = deque([grey] * ANOMALY_HISTORY, maxlen=ANOMALY_HISTORY)
        stack = np.stack([*past, grey])
        past.append(grey)
        history[frame.camera_id] = (past, frame.capture_time_ms)
        return stack

    def _predict(self, model: str, inputs: dict[str, np.ndarray], expect: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
        """Predict, and check the answer has each `expect`ed output with one row per frame."""
        started = time.perf_counter()
        result, version = self.client.predict(model, inputs)
        PREDICT_SECONDS.labels(model).observe(time.perf_counter() - started)
        for name, rows in expect.items():
            if name not in result or len(result[name]) != rows:
                raise ModelServerError(f"model {model} v{version} answered {sorted(result)}; expected `{name}` with {rows} rows")
        return result, version

    def handle(self, messages: list[Message]) -> list[Output]:
        assert self.loop is not None
        self.refresh_config()
        outputs: list[Output] = []
        items: list[tuple[Message, Frame, Camera, np.ndarray, np.ndarray | None]] = []
        history: dict[str, tuple[deque, int]] = {}
        for msg in messages:
            try:
                frame, camera, image = self.decode_frame(msg)
            except PoisonMessage as exc:
                outputs.append(self.loop.dead_letter(msg, str(exc)))
                continue
            stack = self.anomaly_input(frame, image, history) if camera.anomaly_model else None
            items.append((msg, frame, camera, image, stack))
        groups: dict[tuple[str, str | None, str | None, tuple[int, ...]], list] = defaultdict(list)
        for item in items:
            camera = item[2]
            groups[(camera.presence_model, camera.anomaly_model, camera.detector_model, item[3].shape)].append(item)
        for (presence_model, anomaly_model, detector_model, _shape), group in groups.items():
            rows = len(group)
            images = np.stack([it[3] for it in group])
            try:
                presence, presence_version = self._predict(presence_model, {"images": images}, {"foreground": rows})
                anomaly: dict[str, np.ndarray] = {}
                anomaly_version = 0
                if anomaly_model:
                    anomaly, anomaly_version = self._predict(
                        anomaly_model, {"frames": np.stack([it[4] for it in group])}, {"anomaly_map": rows, "anomaly_score": rows}
                    )
                detections: dict[str, np.ndarray] = {}
                detector_version = 0
                if detector_model:
                    detections, detector_version = self._predict(detector_model, {"input_tensor": images}, dict.fromkeys(DETECTION_OUTPUTS, rows))
            except ModelServerError as exc:
                # The server refuses these frames themselves (wrong model name, wrong input): keep them in the DLQ.
                outputs.extend(self.loop.dead_letter(it[0], str(exc)) for it in group)
                continue
            for i, (_msg, frame, camera, _image, _stack) in enumerate(group):
                analysis = self.analyse(frame, camera, presence["foreground"][i], presence_model, presence_version)
                if anomaly_model:
                    self.add_anomaly(analysis, camera, anomaly["anomaly_map"][i], float(anomaly["anomaly_score"][i]), anomaly_model, anomaly_version)
                if detector_model:
                    self.add_objects(analysis, camera, {k: v[i] for k, v in detections.items()}, detector_model, detector_version)
                outputs.append(Output(topics.DETECTIONS, frame.camera_id, encode(analysis)))
        self._history.update(history)
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

    def add_anomaly(self, analysis: FrameAnalysis, camera: Camera, score_map: np.ndarray, score: float, model: str, version: int) -> None:
        analysis.anomaly_score = score
        worst = dict((zone.id, value) for zone, value in zone_maxima(score_map, self._masks_for(camera, *score_map.shape)))
        for zone in analysis.zones:
            zone.anomaly_score = worst[zone.zone_id]
        analysis.models.add(name=model, version=version)

    def add_objects(self, analysis: FrameAnalysis, camera: Camera, detections: dict[str, np.ndarray], model: str, version: int) -> None:
        """The detector's boxes at or above the camera's score, best first (boxes are 0..1, ymin first)."""
        count = int(detections["num_detections"])
        for box, score, label in zip(detections["detection_boxes"][:count], detections["detection_scores"][:count], detections["detection_classes"][:count], strict=True):
            if score < camera.detector_min_score:
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in box)
            name = DETECTOR_LABELS.get(int(label), f"class-{int(label)}")
            analysis.objects.add(label=name, score=float(score), box=dict(ymin=ymin, xmin=xmin, ymax=ymax, xmax=xmax))
        analysis.models.add(name=model, version=version)
