"""Default person detector: OpenCV's HOG people detector, rebuilt as a TensorFlow graph.

Why this one: it must work offline, from weights that ship inside a registry package, and it must be
served by TensorFlow Serving like every other model. The linear SVM of Dalal and Triggs' HOG people
detector ships inside the opencv-python wheel (`cv2.HOGDescriptor_getDefaultPeopleDetector()`), and
HOG is convolutions, so the whole detector (gradients, orientation votes, block histograms with
OpenCV's Gaussian and trilinear weights, L2-Hys normalisation, the SVM as a sliding convolution over
an image pyramid, non-maximum suppression) exports as an ordinary SavedModel: TF Serving runs it on
CPU or GPU with no custom ops. A TF2 Detection Zoo SavedModel has the same signature and replaces it
as a new version folder (models/README.md).

Serving signature `serving_default`, the TensorFlow Object Detection API's:
  input  `input_tensor`:      uint8 [batch, height, width, 3]
  output `detection_boxes`:   float32 [batch, MAX_DETECTIONS, 4] ymin, xmin, ymax, xmax in 0..1
         `detection_scores`:  float32 [batch, MAX_DETECTIONS], 0..1 (sigmoid of the SVM margin)
         `detection_classes`: float32 [batch, MAX_DETECTIONS], 1 = person (COCO label map)
         `num_detections`:    float32 [batch]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from modeling.versions import publish
from services.shared.tensorflow_runtime import load_tensorflow

WINDOW_H, WINDOW_W = 128, 64
CELL, BLOCK, BINS = 8, 16, 9
BLOCKS_Y, BLOCKS_X = WINDOW_H // CELL - 1, WINDOW_W // CELL - 1  # 15 x 7 blocks per window
MAX_DETECTIONS = 100
PERSON_CLASS = 1.0
# Where the person stands inside a 64x128 detection window (INRIA training crops): the reported box.
PERSON_IN_WINDOW = 96
PERSON_BOX = (16, 12, 112, 52)  # ymin, xmin, ymax, xmax in window pixels


@dataclass
class DetectorConfig:
    """Pyramid and decision settings; recorded in the exported model's metadata."""

    # People between these heights (pixels of the frame as sent) are searched for. HOG sees a
    # person as ~96 px of its 64x128 window, so small people mean enlarging the frame (and cost).
    min_person_px: int = 48
    max_person_px: int = 400
    scale_step: float = 1.2
    # Frames are first resized so their longer side is at most this many pixels (bounds the cost).
    max_side: int = 960
    # Windows whose SVM margin is below this are dropped before NMS (OpenCV's hitThreshold).
    min_margin: float = 0.0
    margin_scale: float = 1.5
    nms_iou: float = 0.3

    def scales(self) -> list[float]:
        """Image scale factors, largest first: from 96/min_person_px down to 96/max_person_px."""
        scales: list[float] = []
        scale = PERSON_IN_WINDOW / self.min_person_px
        while scale >= PERSON_IN_WINDOW / self.max_person_px and len(scales) < 16:
            scales.append(round(scale, 4))
            scale /= self.scale_step
        return scales


def block_kernels() -> np.ndarray:
    """[16, 16, BINS, 4*BINS] conv kernel: each pixel's votes into its block's four cell histograms.

    Pixel weights follow OpenCV's HOGCache: a Gaussian over the block (sigma 4) times bilinear
    weights between the cell centres; histogram layout is cell-major, x before y, as OpenCV lays it.
    """
    sigma = 0.25 * BLOCK
    idx = np.arange(BLOCK, dtype=np.float64)
    gauss_1d = idx - BLOCK * 0.5
    gauss = np.exp(-(gauss_1d[:, None] ** 2 + gauss_1d[None, :] ** 2) / (2 * sigma * sigma))
    pos = (idx + 0.5) / CELL - 0.5
    cell_weight = np.stack([np.clip(1 - np.abs(pos - c), 0, 1) for c in (0, 1)], axis=1)  # [16, 2]
    kernel = np.zeros((BLOCK, BLOCK, BINS, 4 * BINS), np.float32)
    for cx in (0, 1):
        for cy in (0, 1):
            spatial = gauss * cell_weight[:, cy][:, None] * cell_weight[:, cx][None, :]
            cell = cx * 2 + cy
            for b in range(BINS):
                kernel[:, :, b, cell * BINS + b] = spatial
    return kernel


def svm_kernel() -> tuple[np.ndarray, float]:
    """OpenCV's default people SVM as a [15, 7, 36, 1] conv kernel over the block grid, and its bias."""
    weights = np.asarray(cv2.HOGDescriptor_getDefaultPeopleDetector(), np.float32).ravel()  # type: ignore[attr-defined]  # missing from OpenCV's stubs
    coefficients, bias = weights[:-1], float(weights[-1])
    # OpenCV orders a window's blocks x-major: block (bx, by) sits at (bx * BLOCKS_Y + by) * 36.
    grid = coefficients.reshape(BLOCKS_X, BLOCKS_Y, 4 * BINS).transpose(1, 0, 2)
    return grid[..., None].copy(), bias


class HogGraph:
    """The detector's TensorFlow ops; `descriptor_map` is also what the tests compare with OpenCV."""

    def __init__(self, config: DetectorConfig) -> None:
        tf = load_tensorflow()

        self.config = config
        self.block_kernel = tf.constant(block_kernels())
        svm, bias = svm_kernel()
        self.svm_kernel = tf.constant(svm)
        self.bias = tf.constant(bias, tf.float32)

    def descriptor_map(self, image):
        """Normalised block histograms [1, rows, cols, 36] for one float image [1, H, W, 3] in 0..255."""
        tf = load_tensorflow()

        gamma = tf.sqrt(image)
        padded = tf.pad(gamma, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        dx = padded[:, 1:-1, 2:, :] - padded[:, 1:-1, :-2, :]
        dy = padded[:, 2:, 1:-1, :] - padded[:, :-2, 1:-1, :]
        magnitude2 = dx * dx + dy * dy
        strongest = tf.argmax(magnitude2, axis=-1)  # OpenCV keeps the channel with the largest gradient
        dx = tf.gather(dx, strongest, axis=-1, batch_dims=3)
        dy = tf.gather(dy, strongest, axis=-1, batch_dims=3)
        magnitude = tf.sqrt(dx * dx + dy * dy)
        angle = tf.math.floormod(tf.atan2(dy, dx), np.pi)  # unsigned orientation, 0..pi
        position = angle * (BINS / np.pi) - 0.5
        low = tf.floor(position)
        upper_share = position - low
        low_bin = tf.cast(tf.math.floormod(low, BINS), tf.int32)
        high_bin = tf.math.floormod(low_bin + 1, BINS)
        votes = tf.one_hot(low_bin, BINS) * (magnitude * (1 - upper_share))[..., None] + tf.one_hot(high_bin, BINS) * (magnitude * upper_share)[..., None]
        blocks = tf.nn.conv2d(votes, self.block_kernel, strides=CELL, padding="VALID")
        # L2-Hys, with OpenCV's constants.
        norm = tf.sqrt(tf.reduce_sum(blocks * blocks, axis=-1, keepdims=True))
        blocks = tf.minimum(blocks / (norm + 4 * BINS * 0.1), 0.2)
        norm = tf.sqrt(tf.reduce_sum(blocks * blocks, axis=-1, keepdims=True))
        return blocks / (norm + 1e-3)

    def margins(self, image):
        """SVM margin of every 64x128 window at an 8-pixel stride: [rows, cols]."""
        tf = load_tensorflow()

        return tf.nn.conv2d(self.descriptor_map(image), self.svm_kernel, strides=1, padding="VALID")[0, :, :, 0] + self.bias

    def detect(self, image):
        """Boxes (normalised), scores and count for one uint8 image [H, W, 3]."""
        tf = load_tensorflow()

        cfg = self.config
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        fit = tf.minimum(1.0, cfg.max_side / tf.reduce_max(size))
        base = tf.cast(image, tf.float32)[None]
        boxes, margins = [], []
        for scale in cfg.scales():
            scaled = tf.cast(tf.round(size * fit * scale), tf.int32)
            big_enough = tf.logical_and(scaled[0] >= WINDOW_H, scaled[1] >= WINDOW_W)
            scaled = tf.maximum(scaled, [WINDOW_H, WINDOW_W])
            resized = tf.image.resize(base, scaled, method="bilinear", antialias=True)
            margin = self.margins(resized)
            keep = tf.logical_and(margin > cfg.min_margin, big_enough)
            where = tf.cast(tf.where(keep), tf.float32)  # [k, 2] rows, cols
            height, width = tf.cast(scaled[0], tf.float32), tf.cast(scaled[1], tf.float32)
            top, left = where[:, 0] * CELL, where[:, 1] * CELL
            ymin, xmin, ymax, xmax = PERSON_BOX
            boxes.append(tf.stack([(top + ymin) / height, (left + xmin) / width, (top + ymax) / height, (left + xmax) / width], axis=1))
            margins.append(tf.gather_nd(margin, tf.cast(where, tf.int64)))
        boxes = tf.clip_by_value(tf.concat(boxes, 0), 0.0, 1.0)
        scores = tf.sigmoid(cfg.margin_scale * tf.concat(margins, 0))
        chosen = tf.image.non_max_suppression(boxes, scores, MAX_DETECTIONS, iou_threshold=cfg.nms_iou)
        count = tf.shape(chosen)[0]
        pad = MAX_DETECTIONS - count
        out_boxes = tf.pad(tf.gather(boxes, chosen), [[0, pad], [0, 0]])
        out_scores = tf.pad(tf.gather(scores, chosen), [[0, pad]])
        return out_boxes, out_scores, tf.cast(count, tf.float32)


def export(config: DetectorConfig, out_dir: Path) -> None:
    load_tensorflow()
    import tensorflow as tf

    graph = HogGraph(config)

    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            boxes, scores, counts = tf.map_fn(
                graph.detect, input_tensor,
                fn_output_signature=(tf.TensorSpec([MAX_DETECTIONS, 4], tf.float32), tf.TensorSpec([MAX_DETECTIONS], tf.float32), tf.TensorSpec([], tf.float32)),
            )
            classes = tf.where(scores > 0, PERSON_CLASS, 0.0)
            return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes, "num_detections": counts}

    module = Detector()
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve})


def build_and_export(models_dir: Path, name: str = "detector", config: DetectorConfig | None = None, version: int | None = None) -> Path:
    """Publish the HOG people detector as `models_dir/name/version/`."""
    config = config or DetectorConfig()
    started = time.time()
    metadata = {
        "kind": "detector/hog-people-svm",
        "training_data": {"weights": f"cv2.HOGDescriptor_getDefaultPeopleDetector() from opencv {cv2.__version__} (Dalal-Triggs, INRIA Person)"},
        "hyperparameters": asdict(config),
        "signature": {
            "inputs": {"input_tensor": "uint8 [batch, height, width, 3]"},
            "outputs": {
                "detection_boxes": f"float32 [batch, {MAX_DETECTIONS}, 4] ymin, xmin, ymax, xmax in 0..1",
                "detection_scores": f"float32 [batch, {MAX_DETECTIONS}]",
                "detection_classes": f"float32 [batch, {MAX_DETECTIONS}], 1 = person",
                "num_detections": "float32 [batch]",
            },
        },
        "label_map": {"1": "person"},
        "metrics": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return publish(models_dir, name, lambda folder: export(config, folder), {**metadata, "train_seconds": round(time.time() - started, 1)}, version)
