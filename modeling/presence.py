"""Presence model: who is standing where, learned from a camera's own empty-scene footage.

A deliberately simple but real model for the walking skeleton: it learns the camera's background
(per-pixel median of footage with nobody in view) and its sensor noise, and scores each 8x8 cell of
a frame by the fraction of pixels that differ from that background by more than the noise allows.
The inference service reduces that grid over each zone polygon. It runs as a TensorFlow SavedModel
served by TF Serving (or the local model server), like every model here; the models issue replaces
it with a person detector.

Serving signature `serving_default`:
  input  `images`:     uint8 [batch, height, width, 3], BGR or RGB alike (any size; resized inside)
  output `foreground`: float32 [batch, height/8, width/8], fraction of changed pixels per cell, 0..1
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from modeling.versions import publish
from services.shared.tensorflow_runtime import load_tensorflow

CELL = 8


def read_frames(video: Path, limit: int = 600) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    while len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise ValueError(f"no frames could be read from {video}")
    return np.stack(frames)


def fit(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """Background (median) and per-pixel difference threshold from empty-scene frames."""
    background = np.median(frames, axis=0).astype(np.float32)
    residual = np.abs(frames.astype(np.float32) - background).max(axis=-1)
    # Well above the noise of this camera: a changed pixel must exceed 99.9% of empty-scene residuals.
    threshold = float(max(12.0, 1.5 * np.percentile(residual, 99.9)))
    return background, threshold


def export(background: np.ndarray, threshold: float, out_dir: Path) -> None:
    load_tensorflow()
    import tensorflow as tf

    height, width = background.shape[:2]
    if height % CELL or width % CELL:
        raise ValueError(f"frame size {width}x{height} must be a multiple of {CELL}")

    class Presence(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.background = tf.constant(background, tf.float32)
            self.threshold = tf.constant(threshold, tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve(self, images: tf.Tensor) -> dict:
            frames = tf.image.resize(tf.cast(images, tf.float32), (height, width))
            diff = tf.reduce_max(tf.abs(frames - self.background), axis=-1, keepdims=True)
            changed = tf.cast(diff > self.threshold, tf.float32)
            cells = tf.nn.avg_pool2d(changed, ksize=CELL, strides=CELL, padding="VALID")
            return {"foreground": tf.squeeze(cells, axis=-1)}

    module = Presence()
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve})


def train_and_export(video: Path, models_dir: Path, name: str = "presence", version: int | None = None) -> Path:
    """Fit on `video` (empty scene) and publish `models_dir/name/version/`; returns that folder."""
    started = time.time()
    frames = read_frames(video)
    background, threshold = fit(frames)
    metadata = {
        "kind": "presence/background-difference",
        "training_data": {"video": str(video), "frames": len(frames)},
        "hyperparameters": {"cell": CELL, "threshold": threshold},
        "input": {"images": "uint8 [batch, height, width, 3]"},
        "output": {"foreground": f"float32 [batch, height/{CELL}, width/{CELL}] fraction of changed pixels"},
        "frame_size": [int(background.shape[1]), int(background.shape[0])],
        "train_seconds": round(time.time() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return publish(models_dir, name, lambda folder: export(background, threshold, folder), metadata, version)
