"""People counting across a line, against a hand count, through inference's own detector stage.

The clip is OpenCV's plaza footage (Debian's opencv-doc vtest.avi, 768x576, 10 fps, all 795
frames). A vertical line across the path was drawn and every crossing of it by a person's foot point
counted by hand, with its frame and direction (`modeling/labels/vtest_lines.json`): 28 crossings,
six of them by people turning back on the line. Each frame goes through the same `DetectorPlugin`
inference runs (the sample store counter camera's detector settings, but detecting on every frame as
a door camera should, or `--min-score` / `--detect-fps`), whose line counter reports the crossings.

Reported per direction: the hand count, the automatic count and the error in percent of the hand
count, and how many automatic crossings fall within `--tolerance-s` of a hand-counted crossing in
the same direction (matched), so an error that cancels out in the totals still shows. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modeling.evaluate_tracking import OPENCV_DOC, ROOT, read_video, track_clip
from services.inference.stages import saved_model_predict
from services.shared.storeconfig import Camera, DetectorStage, Line, load_store_config
from services.shared.tensorflow_runtime import load_tensorflow

LABELS = Path(__file__).resolve().parent / "labels" / "vtest_lines.json"
# The labels name directions in the picture; the line's inside point is to its right.
DIRECTIONS = {"left_to_right": "in", "right_to_left": "out"}


def line_camera(labels: dict[str, Any], stage: DetectorStage, margin: float) -> Camera:
    width, height = labels["width"], labels["height"]
    points = [(x / width, y / height) for x, y in labels["line"]["points_px"]]
    mid_x = sum(x for x, _ in points) / len(points)
    line = {"id": labels["line"]["id"], "kind": "count", "points": points, "inside": (min(1.0, mid_x + 0.2), 0.5), "margin": margin}
    return Camera(id="vtest", source="file:vtest.avi", fps=labels["fps"], width=width, height=height, stages=[stage.model_dump()], lines=[line])


def score(labels: dict[str, Any], counted: list[tuple[int, str, int]], tolerance_frames: int) -> dict[str, Any]:
    """Totals per direction against the hand count, and crossing-level matches within the tolerance."""
    truth = [(c["frame"], DIRECTIONS[c["direction"]]) for c in labels["crossings"]]
    result: dict[str, Any] = {}
    for direction in ("in", "out"):
        hand = sorted(f for f, d in truth if d == direction)
        auto = sorted(f for f, d, _track in counted if d == direction)
        unmatched = list(hand)
        matched = 0
        for frame in auto:
            near = [h for h in unmatched if abs(h - frame) <= tolerance_frames]
            if near:
                unmatched.remove(min(near, key=lambda h: abs(h - frame)))
                matched += 1
        result[direction] = {"hand": len(hand), "counted": len(auto), "error_pct": round(100 * (len(auto) - len(hand)) / max(1, len(hand)), 1),
                             "matched": matched, "missed_frames": unmatched, "extra": len(auto) - matched}
    hand_total = sum(result[d]["hand"] for d in ("in", "out"))
    counted_total = sum(result[d]["counted"] for d in ("in", "out"))
    result["total"] = {"hand": hand_total, "counted": counted_total, "error_pct": round(100 * (counted_total - hand_total) / max(1, hand_total), 1),
                       "matched": sum(result[d]["matched"] for d in ("in", "out"))}
    return result


VTEST = OPENCV_DOC / "examples" / "data" / "vtest.avi"


def evaluate(predict: Callable, stage: DetectorStage, margin: float, tolerance_s: float) -> dict[str, Any]:
    """The plaza clip through the detector stage with the hand-counted line; the scored result."""
    labels = json.loads(LABELS.read_text())
    camera = line_camera(labels, stage, margin)
    counted = [(index, c.direction, c.track_id) for index, analysis in track_clip("vtest (line)", camera, read_video(VTEST), labels["fps"], predict)
               for c in analysis.line_crossings]
    result = score(labels, counted, round(tolerance_s * labels["fps"]))
    return result | {"clip": "vtest.avi", "min_score": stage.min_score, "detect_fps": stage.detect_fps, "margin": margin, "tolerance_s": tolerance_s,
                     "crossings": [{"frame": f, "direction": d, "track": t} for f, d, t in counted]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="detector SavedModel version folder (default: export NanoDet to a temporary folder)")
    parser.add_argument("--min-score", type=float, help="override the sample store's detector min_score")
    parser.add_argument("--detect-fps", type=float, default=0.0, help="detector runs per second (default 0: every frame; the sample store's counter runs 5)")
    parser.add_argument("--margin", type=float, default=Line.model_fields["margin"].default, help="the line's margin (store config `lines`)")
    parser.add_argument("--tolerance-s", type=float, default=1.5, help="an automatic crossing matches a hand-counted one this close in time")
    args = parser.parse_args(argv)
    if not VTEST.exists():
        print(f"{VTEST} not found (Debian package opencv-doc): nothing to count", file=sys.stderr)
        print(json.dumps({"skipped": "vtest.avi not found"}))
        return 0
    stage = load_store_config(ROOT / "config" / "sample-store.yaml").stores[0].cameras[0].stage("detector")
    assert isinstance(stage, DetectorStage), "the sample store's camera has no detector stage"
    if args.min_score is not None:
        stage = stage.model_copy(update={"min_score": args.min_score})
    stage = stage.model_copy(update={"detect_fps": args.detect_fps or None})
    tf = load_tensorflow()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from modeling import nanodet

            model = nanodet.build_and_export(Path(tmp), name="detector")
        result = evaluate(saved_model_predict(tf.saved_model.load(str(model)).signatures["serving_default"], tf), stage, args.margin, args.tolerance_s)
    for direction in ("in", "out"):
        r = result[direction]
        print(f"{direction:>4} ({'left to right' if direction == 'in' else 'right to left'}): hand {r['hand']}, counted {r['counted']} "
              f"({r['error_pct']:+.1f} %), matched {r['matched']}, missed at frames {r['missed_frames']}, extra {r['extra']}")
    total = result["total"]
    print(f"total: hand {total['hand']}, counted {total['counted']} ({total['error_pct']:+.1f} %), matched {total['matched']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
