"""The hand-labelled ground truth is well formed and as large as the evaluations claim."""

import json
from pathlib import Path

LABELS = Path(__file__).resolve().parents[2] / "modeling" / "labels"


def _valid_box(box, width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def test_detector_frames_cover_three_scenes_two_indoors_and_sixty_people():
    frames = json.loads((LABELS / "real_frames.json").read_text())["frames"]
    persons = [p for f in frames for p in f["persons"]]
    scenes = {f["scene"] for f in frames}
    assert len(frames) >= 15 and len(persons) >= 60 and len(scenes) >= 3
    assert sum("indoor" in scene for scene in scenes) >= 2
    for frame in frames:
        assert all(_valid_box(b, frame["width"], frame["height"]) for b in frame["persons"] + frame["ambiguous"]), frame["path"]
        if frame["source"] == "pypi":  # fetched by name and checked like a model package
            assert frame["integrity"].startswith("sha256:") and frame["package"] and frame["version"]


def test_tracks_have_one_box_per_identity_per_frame_once_a_second():
    labels = json.loads((LABELS / "vtest_tracks.json").read_text())
    frames = labels["frames"]
    assert [f["frame"] for f in frames] == list(range(0, 301, 10))
    identities = set()
    for frame in frames:
        ids = [p["id"] for p in frame["persons"]]
        assert len(ids) == len(set(ids)), frame["frame"]
        assert all(_valid_box(p["box"], labels["width"], labels["height"]) for p in frame["persons"])
        assert all(_valid_box(b, labels["width"], labels["height"]) for b in frame["ambiguous"])
        identities |= set(ids)
    assert identities == set(range(1, len(identities) + 1)) and len(identities) >= 5
