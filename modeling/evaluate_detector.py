"""Precision, recall and latency of a person detector on the hand-labelled frames.

The frames and their person boxes are in modeling/labels/persons.json: UCSD Ped2 test frames (read
from --data) and sample-store frames (rendered from the generator at the labelled time). The
detector is an exported SavedModel with the Object Detection API signature (--model; by default the
HOG detector is exported to a temporary folder first), run in process through its serving
signature. A detection matches a labelled person at IoU >= --iou; a detection over a box labelled
"ambiguous" counts neither way. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from modeling.evaluate_anomaly import DEFAULT_DATA
from services.shared.tensorflow_runtime import load_tensorflow

LABELS = Path(__file__).resolve().parent / "labels" / "persons.json"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(detections: list[np.ndarray], persons: list[np.ndarray], ambiguous: list[np.ndarray], threshold: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives), greedy by detection order (best first)."""
    unmatched = list(range(len(persons)))
    tp = fp = 0
    for det in detections:
        best = max(unmatched, key=lambda i: iou(det, persons[i]), default=None)
        if best is not None and iou(det, persons[best]) >= threshold:
            unmatched.remove(best)
            tp += 1
        elif not any(iou(det, amb) >= threshold for amb in ambiguous):
            fp += 1
    return tp, fp, len(unmatched)


def load_frame(entry: dict, data: Path) -> np.ndarray:
    if entry["source"] == "sample-store":
        from devplatform.samplestore import clip_frame

        return clip_frame(entry["t"])
    image = cv2.imread(str(data / entry["path"]), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{data / entry['path']}: cannot read the labelled frame")
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="UCSD Ped2 folder for the Ped2 frames")
    parser.add_argument("--model", type=Path, help="an exported detector version folder (default: export the HOG detector)")
    parser.add_argument("--score", type=float, default=0.5, help="detections below this score are ignored")
    parser.add_argument("--iou", type=float, default=0.4)
    parser.add_argument("--min-person-px", type=int, help="export the HOG detector for people this small (default: its own)")
    args = parser.parse_args(argv)
    tf = load_tensorflow()

    labels = json.loads(LABELS.read_text())["frames"]
    if not args.data.exists():
        print(f"  {args.data} not found: Ped2 frames skipped", file=sys.stderr)
        labels = [e for e in labels if e["source"] != "ucsd-ped2"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from modeling.detector import DetectorConfig, build_and_export

            config = DetectorConfig(min_person_px=args.min_person_px) if args.min_person_px else DetectorConfig()
            model_dir = build_and_export(Path(tmp), config=config)
        serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
        totals: dict[str, list[int]] = {}
        latencies = []
        for entry in labels:
            image = load_frame(entry, args.data)
            batch = tf.constant(image[None])
            serve(input_tensor=batch)  # warm-up: the first call of each frame size traces the graph
            started = time.perf_counter()
            out = serve(input_tensor=batch)
            latencies.append(time.perf_counter() - started)
            h, w = image.shape[:2]
            keep = out["detection_scores"][0].numpy() >= args.score
            boxes = out["detection_boxes"][0].numpy()[keep] * [h, w, h, w]
            detections = [np.array([b[1], b[0], b[3], b[2]]) for b in boxes]
            counts = match(detections, [np.asarray(p, float) for p in entry["persons"]], [np.asarray(p, float) for p in entry.get("ambiguous", [])], args.iou)
            name = entry.get("path") or f"sample-store t={entry['t']}"
            print(f"  {name:<32} persons {len(entry['persons']):2d}  tp {counts[0]:2d}  fp {counts[1]:2d}  fn {counts[2]:2d}")
            source = totals.setdefault(entry["source"], [0, 0, 0])
            for i in range(3):
                source[i] += counts[i]

    def pr(tp: int, fp: int, fn: int) -> dict:
        return {"precision": round(tp / (tp + fp), 3) if tp + fp else None, "recall": round(tp / (tp + fn), 3) if tp + fn else None,
                "tp": tp, "fp": fp, "fn": fn}

    result: dict[str, Any] = {source: pr(*counts) for source, counts in totals.items()}
    result["all"] = pr(*(sum(c[i] for c in totals.values()) for i in range(3)))
    result["ms_per_frame"] = round(1000 * float(np.median(latencies)), 1)
    result["score_threshold"], result["iou_threshold"] = args.score, args.iou
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
