"""Evaluate the anomaly model on a labelled benchmark laid out like UCSD Ped2.

    DATA/training/frames/<clip>/*.jpg      normal footage only: what the model trains on
    DATA/testing/frames/<clip>/*.jpg       test clips
    DATA/testing/frame_labels.json         {"<clip>": [0|1 per frame, 1 = anomalous], ...}

It trains on the training clips (or takes an exported model with --model), scores every test frame
through the exported SavedModel's serving signature, the same graph TF Serving runs, and reports the
frame-level ROC AUC over all test frames concatenated, two ways:
  auc_raw         the scores exactly as the live service emits them (causal, no per-clip rescaling)
  auc_normalized  scores min-max normalised within each clip, as the published tables do
The published figures are frame AUC over all 12 of Ped2's test clips: they are set beside ours only
when the same 12 clips were scored; otherwise the output says which clips were scored and that the
two cannot be compared. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from devplatform.progress import Progress
from modeling.anomaly import TrainConfig, find_clips, frame_stacks, read_clip, train_and_export
from modeling.versions import METADATA_FILE, read_metadata, write_metadata
from services.shared.tensorflow_runtime import load_tensorflow

# Frame AUC over all 12 of UCSD Ped2's test clips, as each paper reports it.
PUBLISHED = {"Conv-AE (Hasan 2016)": 90.0, "MemAE (Gong 2019)": 94.1, "Future-frame prediction (Liu 2018)": 95.4, "MNAD (Park 2020)": 97.0}
PUBLISHED_CLIPS = [f"{n:02d}" for n in range(1, 13)]


def default_data() -> Path:
    """UCSD Ped2's folder: $SW_UCSD_PED2, else datasets/ucsd-ped2 here (the data set does not ship with the project)."""
    return Path(os.environ.get("SW_UCSD_PED2", "datasets/ucsd-ped2"))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that an anomalous frame outscores a normal one (ties count half)."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both normal and anomalous frames")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def min_max(scores: np.ndarray) -> np.ndarray:
    span = scores.max() - scores.min()
    return (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)


def load_labels(data: Path) -> dict[str, np.ndarray]:
    path = data / "testing" / "frame_labels.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no frame labels (expected {{clip: [0/1 per frame]}})")
    return {clip: np.asarray(v, np.int8) for clip, v in json.loads(path.read_text()).items()}


def score_clips(model_dir: Path, data: Path, batch: int = 16) -> tuple[dict[str, np.ndarray], float]:
    """Frame scores per test clip from the exported SavedModel, and the frames/s it ran at."""
    tf = load_tensorflow()

    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    history = int(serve.structured_input_signature[1]["frames"].shape[1]) - 1
    labels = load_labels(data)
    scores, frames, seconds = {}, 0, 0.0
    clip_dirs = [c for c in find_clips(data / "testing" / "frames") if c.name in labels]
    progress = Progress(f"scoring {len(clip_dirs)} test clips", sum(len(v) for c, v in labels.items() if c in {d.name for d in clip_dirs}), "frames")
    for clip_dir in clip_dirs:
        clip = read_clip(clip_dir)
        if len(clip) != len(labels[clip_dir.name]):
            raise ValueError(f"clip {clip_dir.name}: {len(clip)} frames but {len(labels[clip_dir.name])} labels")
        stacks = frame_stacks(clip, history)
        serve(frames=tf.constant(stacks[:batch]))  # warm up outside the clock
        out = []
        started = time.perf_counter()
        for i in range(0, len(stacks), batch):
            out.append(serve(frames=tf.constant(stacks[i : i + batch]))["anomaly_score"].numpy())
            progress.advance(len(out[-1]), note=f"clip {clip_dir.name}")
        seconds += time.perf_counter() - started
        frames += len(stacks)
        scores[clip_dir.name] = np.concatenate(out)
    progress.close()
    missing = sorted(set(labels) - set(scores))
    if missing:
        raise FileNotFoundError(f"labelled clips without frames under {data / 'testing' / 'frames'}: {missing}")
    return scores, frames / seconds


def evaluate(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    clips = sorted(scores)
    y = np.concatenate([labels[c] for c in clips])
    raw = np.concatenate([scores[c] for c in clips])
    normalized = np.concatenate([min_max(scores[c]) for c in clips])
    return {"auc_raw": round(100 * roc_auc(y, raw), 2), "auc_normalized": round(100 * roc_auc(y, normalized), 2), "clips": clips}


def comparison_lines(result: dict) -> list[str]:
    """Ours, and the published figures only where they were measured on the same clips."""
    ours = f"ShrinkWatch anomaly on clips {', '.join(result['clips'])}: normalised {result['auc_normalized']:5.1f}, raw (causal, live) {result['auc_raw']:5.1f}"
    if result["clips"] != PUBLISHED_CLIPS:
        return [f"  {ours}", f"  (published Ped2 figures are over all 12 test clips; {len(result['clips'])} were scored here, so they are not compared)"]
    return [f"  published {name:<38} {auc:5.1f}   (all 12 test clips)" for name, auc in PUBLISHED.items()] + [f"  {ours}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data(), help="benchmark folder (default: $SW_UCSD_PED2, else datasets/ucsd-ped2)")
    parser.add_argument("--model", type=Path, help="evaluate this exported model version folder instead of training one")
    parser.add_argument("--out", type=Path, help="models folder to publish the trained model into, with these figures in its metadata (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help=f"training epochs (default {TrainConfig.epochs})")
    parser.add_argument("--max-windows", type=int, help="train on at most this many frame windows (quick smoke runs)")
    args = parser.parse_args(argv)

    if not args.data.exists():
        print(f"error: no benchmark at {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    train_seconds = None  # unknown for a model without our metadata file
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            config = TrainConfig(epochs=args.epochs, max_windows=args.max_windows)
            model_dir, _ = train_and_export(args.data / "training" / "frames", args.out or Path(tmp), name="anomaly", config=config)
        if (model_dir / METADATA_FILE).exists():
            train_seconds = read_metadata(model_dir).get("train_seconds")
        scores, fps = score_clips(model_dir, args.data)
        result = evaluate(scores, load_labels(args.data))
        result.update(train_seconds=train_seconds, frames_per_second=round(fps, 1))
        if args.out and args.model is None:  # record the figures in the model it trained
            metadata = read_metadata(model_dir)
            metadata.setdefault("metrics", {})[args.data.name] = result
            write_metadata(model_dir, metadata)
    for line in comparison_lines(result):
        print(line)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
