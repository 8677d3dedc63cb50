"""Model building blocks that need no server: the HOG graph against OpenCV, AUC, version policies."""

import json

import cv2
import numpy as np
import pytest

from devplatform.modelserver.server import ModelEntry, read_model_config
from modeling.evaluate_anomaly import PUBLISHED_CLIPS, comparison_lines, min_max, roc_auc
from modeling.evaluate_anomaly import main as evaluate_anomaly


def test_hog_graph_reproduces_opencv_people_detector():
    import tensorflow as tf

    from modeling.detector import DetectorConfig, HogGraph

    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 255, (200, 160, 3), np.uint8), (5, 5), 0)
    cv2.rectangle(image, (50, 40), (90, 170), (20, 20, 20), -1)
    cv2.circle(image, (70, 30), 12, (200, 200, 200), -1)
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())  # type: ignore[attr-defined]  # in OpenCV, not in its stubs
    locations, weights = hog.detect(image, hitThreshold=-10.0, winStride=(8, 8))
    margins = HogGraph(DetectorConfig()).margins(tf.constant(image[None].astype(np.float32))).numpy()
    assert len(locations) == margins.size  # every window position, same grid
    ours = np.array([margins[y // 8, x // 8] for x, y in locations])
    error = np.abs(ours - np.ravel(weights))
    assert np.median(error) < 0.01 and error.max() < 0.05  # windows on the image border differ most (gradient padding)


def test_roc_auc_matches_hand_computed_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # ties count half
    assert list(min_max(np.array([2.0, 4.0, 3.0]))) == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_version_policies_pick_versions_like_tf_serving(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("""model_config_list {
      config { name: "a" base_path: "/models/a" model_platform: "tensorflow" model_version_policy { latest { num_versions: 2 } } }
      config { name: "b" base_path: "/models/b" model_platform: "tensorflow" model_version_policy { all {} } }
      config { name: "c" base_path: "/models/c" model_platform: "tensorflow" model_version_policy { specific { versions: 3 versions: 5 } }
               version_labels { key: "stable" value: 3 } }
      config { name: "d" base_path: "/models/d" model_platform: "tensorflow" }
    }""")
    entries = read_model_config(config, tmp_path)
    assert entries["a"].base == tmp_path / "a"
    assert entries["a"].wanted([1, 2, 3, 7]) == {3, 7}
    assert entries["b"].wanted([1, 2]) == {1, 2}
    assert entries["c"].wanted([1, 3, 4]) == {3} and entries["c"].labels == {"stable": 3}
    assert entries["d"].wanted([1, 2]) == {2} and ModelEntry("x", tmp_path).wanted([]) == set()
    config.write_text('model_config_list { config { name: "a" base_path: "/a" } config { name: "a" base_path: "/b" } }')
    with pytest.raises(ValueError, match="configured twice"):
        read_model_config(config, tmp_path)


def _clip(folder, frames, seed, fast_from=None):
    """A grey scene with a square walking 1 pixel per frame, or 7 from frame `fast_from` on."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    x = 10
    for i in range(frames):
        image = np.full((96, 144), 90, np.uint8)
        x = (x + (7 if fast_from is not None and i >= fast_from else 1)) % 120
        image[40:60, x : x + 12] = 200
        image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), image)


def test_evaluate_anomaly_on_another_labelled_folder(tmp_path, capsys):
    """--data takes any folder laid out like Ped2; the last line is the JSON the issue names."""
    data = tmp_path / "bench"
    for n in range(2):
        _clip(data / "training" / "frames" / f"{n + 1:02d}", 30, n)
    _clip(data / "testing" / "frames" / "01", 30, 7)
    _clip(data / "testing" / "frames" / "02", 30, 8, fast_from=15)  # running: anomalous
    labels = {"01": [0] * 30, "02": [0] * 15 + [1] * 15}
    (data / "testing" / "frame_labels.json").write_text(json.dumps(labels))
    assert evaluate_anomaly(["--data", str(data), "--epochs", "1", "--max-windows", "40"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert set(result) == {"auc_raw", "auc_normalized", "clips", "train_seconds", "frames_per_second"} and result["clips"] == ["01", "02"]
    assert not any("published" in line and "MemAE" in line for line in out), "2 clips are not set beside 12-clip published figures"
    assert result["auc_raw"] > 80  # even a briefly trained predictor cannot follow the runner
    assert result["train_seconds"] > 0 and result["frames_per_second"] > 0


def test_published_figures_are_set_beside_ours_only_on_the_same_twelve_clips():
    ours = {"auc_raw": 85.7, "auc_normalized": 92.4}
    on_six = comparison_lines({**ours, "clips": PUBLISHED_CLIPS[:6]})
    assert not any("MemAE" in line for line in on_six) and "not compared" in on_six[-1]
    on_twelve = comparison_lines({**ours, "clips": PUBLISHED_CLIPS})
    assert any("Conv-AE" in line and "90.0" in line for line in on_twelve) and "92.4" in on_twelve[-1]
