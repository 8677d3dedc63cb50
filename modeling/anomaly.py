"""Anomaly model: a future-frame prediction CNN that learns what normal looks like for one camera.

It is trained on the camera's own normal footage, so a store needs no labelled theft videos. A small
U-Net sees the last HISTORY frames and predicts the next one (as a change to the last frame); where
the prediction fails, something moved in a way the camera never saw during training: a cart where
people walk, somebody running, a bicycle. Errors are averaged over 16x16 patches and expressed in
units of the normal level (the 99th percentile, over the normal training frames, of a frame's worst
patch), so 1.0 reads "as bad as the worst normal" on every camera; the frame score is the worst
patch. Scoring is causal: a frame is judged only from the frames before it, as the live service
sees them. (Dividing each place by its own normal error was tried and lost 5 AUC points on Ped2's test clips 01-06:
the places where people never walk became the loudest.)

Serving signature `serving_default` (TF Serving layout, `models/<name>/<version>/`):
  input  `frames`:        uint8 [batch, HISTORY+1, height, width, channels]: the last HISTORY frames
                          then the frame to score; any size (resized inside), 1 or 3 channels
  output `anomaly_map`:   float32 [batch, rows, cols]: patch error over the normal level, one cell
                          per CELL x CELL pixels of the model's input size
  output `anomaly_score`: float32 [batch]: the worst patch, the frame's score
Reducing `anomaly_map` over a zone polygon (max over its cells) gives that zone's score.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from devplatform.progress import Progress
from modeling.versions import publish
from services.shared.tensorflow_runtime import load_tensorflow

HISTORY = 4
CELL = 8
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm"}


@dataclass
class TrainConfig:
    """Hyperparameters; recorded in the exported model's metadata."""

    height: int = 128
    width: int = 192
    history: int = HISTORY
    base_channels: int = 16
    patch: int = 16
    epochs: int = 12
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 1
    max_windows: int | None = None


def _to_gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def read_clip(source: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Grey frames [N, H, W] uint8 from a folder of images (sorted by name) or a video file."""
    frames = []
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"{path}: not a readable image")
            frames.append(_to_gray(image))
    else:
        cap = cv2.VideoCapture(str(source))
        if not cap.isOpened():
            raise ValueError(f"{source}: OpenCV cannot open this video")
        while True:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(_to_gray(image))
        cap.release()
    if not frames:
        raise ValueError(f"{source}: no frames found")
    if size is not None:
        frames = [cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack(frames)


def find_clips(root: Path) -> list[Path]:
    """The clips under `root`: itself if it holds frames or is a video, else its sub-folders and videos."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder or video")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return [root]
    clips = sorted(p for p in root.iterdir() if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise ValueError(f"{root}: no clips (folders of frames or videos) inside")
    return clips


def build_predictor(history: int, base: int):
    """U-Net that maps HISTORY frames in [-1, 1] to the next frame, predicted as a change to the last one."""
    tf = load_tensorflow()
    from tensorflow import keras
    from tensorflow.keras import layers

    def block(x, channels):
        for _ in range(2):
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input((None, None, history))
    skips, x = [], inputs
    for level in range(3):
        x = block(x, base * 2**level)
        skips.append(x)
        x = layers.MaxPool2D()(x)
    x = block(x, base * 8)
    for level in reversed(range(3)):
        x = layers.UpSampling2D(interpolation="bilinear")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = block(x, base * 2**level)
    change = layers.Conv2D(1, 1, activation="tanh")(x)
    last = layers.Lambda(lambda t: t[..., -1:])(inputs)
    outputs = layers.Lambda(lambda t: tf.clip_by_value(t[0] + t[1], -1.0, 1.0))([last, change])
    return keras.Model(inputs, outputs, name="frame_predictor")


def _windows(clips: list[np.ndarray], history: int) -> np.ndarray:
    """(clip index, first frame) of every HISTORY+1 run of consecutive frames."""
    return np.array([(c, s) for c, clip in enumerate(clips) for s in range(len(clip) - history)], np.int64)


def _batch(clips: list[np.ndarray], index: np.ndarray, history: int) -> tuple[np.ndarray, np.ndarray]:
    stacks = np.stack([clips[c][s : s + history + 1] for c, s in index]).astype(np.float32) / 127.5 - 1.0
    stacks = np.moveaxis(stacks, 1, -1)  # [B, H, W, history+1]
    return stacks[..., :history], stacks[..., history:]


def _prediction_loss(target, predicted):
    tf = load_tensorflow()

    intensity = tf.reduce_mean(tf.square(target - predicted))

    def gradients(t):
        return tf.abs(t[:, 1:, :, :] - t[:, :-1, :, :]), tf.abs(t[:, :, 1:, :] - t[:, :, :-1, :])

    (ty, tx), (py, px) = gradients(target), gradients(predicted)
    edges = tf.reduce_mean(tf.abs(ty - py)) + tf.reduce_mean(tf.abs(tx - px))
    return intensity + edges


def train(clips: list[np.ndarray], config: TrainConfig, description: str = "training anomaly model"):
    """Fit the predictor on normal clips (grey, already at the model's size); returns the Keras model.

    Shows its progress (steps, loss, ETA): a bar on a terminal, a line every 10 s elsewhere."""
    tf = load_tensorflow()
    tf.keras.utils.set_random_seed(config.seed)
    model = build_predictor(config.history, config.base_channels)
    index = _windows(clips, config.history)
    rng = np.random.default_rng(config.seed)
    if config.max_windows and len(index) > config.max_windows:
        index = index[rng.choice(len(index), config.max_windows, replace=False)]
    steps = max(1, len(index) // config.batch_size)
    schedule = tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, steps * config.epochs, alpha=0.05)
    optimizer = tf.keras.optimizers.Adam(schedule)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = _prediction_loss(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True))
        return loss

    with Progress(f"{description} ({len(index)} windows, {config.epochs} epoch{'' if config.epochs == 1 else 's'})", steps * config.epochs, "steps") as progress:
        for epoch in range(config.epochs):
            losses = []
            order = rng.permutation(len(index))
            for b in range(steps):
                x, y = _batch(clips, index[order[b * config.batch_size : (b + 1) * config.batch_size]], config.history)
                if rng.random() < 0.5:  # mirror: people walk both ways
                    x, y = x[:, :, ::-1], y[:, :, ::-1]
                losses.append(float(step(tf.constant(x), tf.constant(y))))
                progress.advance(note=f"epoch {epoch + 1}/{config.epochs}, loss {np.mean(losses):.5f}")
    return model


class Scorer:
    """The scoring graph shared by calibration, evaluation and the exported SavedModel."""

    def __init__(self, model, config: TrainConfig, normal_level: float = 1.0) -> None:
        tf = load_tensorflow()

        self.model = model
        self.config = config
        self.normal_level = tf.Variable(normal_level, dtype=tf.float32, trainable=False, name="normal_level")

    def raw_error(self, frames):
        """Patch mean squared prediction error [B, rows, cols] for uint8 frames [B, history+1, H, W, C]."""
        tf = load_tensorflow()

        cfg = self.config
        frames = tf.convert_to_tensor(frames)
        shape = tf.shape(frames)
        flat = tf.reshape(frames, tf.concat([[-1], shape[2:]], axis=0))
        flat = tf.cond(tf.shape(flat)[-1] == 3, lambda: tf.image.rgb_to_grayscale(flat), lambda: flat[..., :1])
        flat = tf.image.resize(tf.cast(flat, tf.float32), (cfg.height, cfg.width), method="area") / 127.5 - 1.0
        stack = tf.reshape(flat, [-1, cfg.history + 1, cfg.height, cfg.width])
        stack = tf.transpose(stack, [0, 2, 3, 1])
        predicted = self.model(stack[..., : cfg.history], training=False)
        error = tf.square(predicted - stack[..., cfg.history :])
        return tf.squeeze(tf.nn.avg_pool2d(error, ksize=cfg.patch, strides=CELL, padding="SAME"), -1)

    def score(self, frames) -> dict:
        tf = load_tensorflow()

        relative = self.raw_error(frames) / self.normal_level
        return {"anomaly_map": relative, "anomaly_score": tf.reduce_max(relative, axis=[1, 2])}


def frame_stacks(clip: np.ndarray, history: int) -> np.ndarray:
    """Causal inputs for every frame of a clip: [N, history+1, H, W, 1]; the start repeats frame 0."""
    padded = np.concatenate([np.repeat(clip[:1], history, axis=0), clip])
    idx = np.arange(len(clip))[:, None] + np.arange(history + 1)[None, :]
    return padded[idx][..., None]


def calibrate(scorer: Scorer, clips: list[np.ndarray], batch: int = 32) -> float:
    """The normal level: 99th percentile of the worst patch error per frame on normal footage."""
    worst = []
    for clip in clips:
        stacks = frame_stacks(clip, scorer.config.history)[scorer.config.history :]
        for i in range(0, len(stacks), batch):
            worst.append(scorer.raw_error(stacks[i : i + batch]).numpy().max(axis=(1, 2)))
    return float(np.percentile(np.concatenate(worst), 99))


def export(scorer: Scorer, out_dir: Path) -> None:
    load_tensorflow()
    import tensorflow as tf

    cfg = scorer.config

    class AnomalyModule(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            # The weights, not the Keras model: Keras would add its own serving function, which
            # cannot trace this U-Net with unknown image sizes. Keras' own variables wrap the
            # TensorFlow ones the function reads: tracked as they are, the SavedModel's restore op
            # filled copies, and TF Serving's loader (a graph and a session, not Python objects)
            # ran the function on variables never restored. Tracking the TensorFlow variables
            # themselves makes the restored ones the read ones (tests/integration/test_model_serving.py).
            self.weights = [weight.value for weight in scorer.model.weights]
            self.normal_level = scorer.normal_level

        @tf.function(input_signature=[tf.TensorSpec([None, cfg.history + 1, None, None, None], tf.uint8, name="frames")])
        def serve(self, frames):
            return scorer.score(frames)

    module = AnomalyModule()
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve})


def train_and_export(data: Path, models_dir: Path, name: str = "anomaly", config: TrainConfig | None = None, version: int | None = None) -> tuple[Path, Scorer]:
    """Train on the normal clips under `data`, calibrate, and publish `models_dir/name/version/`."""
    config = config or TrainConfig()
    started = time.time()
    sources = find_clips(data)
    clips = [read_clip(p, (config.height, config.width)) for p in sources]
    model = train(clips, config, description=f"training {name} model")
    scorer = Scorer(model, config)
    scorer.normal_level.assign(calibrate(scorer, clips))
    metadata = {
        "kind": "anomaly/future-frame-prediction",
        "training_data": {"source": str(data), "clips": [p.name for p in sources], "frames": int(sum(len(c) for c in clips))},
        "hyperparameters": asdict(config),
        "signature": {
            "inputs": {"frames": f"uint8 [batch, {config.history + 1}, height, width, 1|3]: {config.history} past frames, then the frame to score"},
            "outputs": {
                "anomaly_map": f"float32 [batch, {config.height // CELL}, {config.width // CELL}]: patch error over the normal level",
                "anomaly_score": "float32 [batch]: max of anomaly_map",
            },
        },
        "normal_level": float(scorer.normal_level.numpy()),
        "metrics": {},
        "train_seconds": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return publish(models_dir, name, lambda folder: export(scorer, folder), metadata, version), scorer
