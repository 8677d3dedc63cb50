"""The production model server can load what the project exports.

TensorFlow Serving loads a SavedModel as a graph and a session (its C++ SavedModelBundle), with the
TensorFlow it was released with. The image compose and k8s pin is the release of the TensorFlow the
models are exported with, and every model the project builds is loaded that way in a process of its
own and answers what the local model server answers."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from devplatform.deploycheck import overlays, rendered
from services.inference.client import PredictionClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.compile(r"^tensorflow/serving:(\d+)\.(\d+)\.(\d+)(-gpu)?$")


def _pinned_images() -> set[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    k8s = [c["image"] for overlay in overlays() for doc in rendered(overlay) if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "tf-serving"
           for c in doc["spec"]["template"]["spec"]["containers"]]
    return {compose["services"]["tf-serving"]["image"], *k8s}


def test_the_serving_image_is_the_release_of_the_tensorflow_that_exports_the_models():
    from importlib.metadata import version

    import tensorflow as tf

    images = _pinned_images()
    # One release everywhere: its GPU build (compose, production) and its CPU build (the trial overlay).
    releases = {found.groups()[:3] if (found := IMAGE.match(image)) else image for image in images}
    assert len(releases) == 1 and isinstance(next(iter(releases)), tuple), f"{sorted(images)}: not one tensorflow/serving release"
    served = list(next(iter(releases))[:2])
    exporting = tf.__version__.split(".")[:2]
    assert served == exporting, f"{sorted(images)} serve TensorFlow {'.'.join(served)}; the models are exported with {tf.__version__}"
    assert version("tensorflow-serving-api").split(".")[:2] == exporting


def _inputs(clip: Path) -> dict[str, np.ndarray]:
    """An input per model's signature, as the services send it: frames of the sample clip."""
    from modeling.anomaly import HISTORY, frame_stacks, read_clip
    from modeling.presence import read_frames

    frames = read_frames(clip, limit=2)
    return {
        "presence/images": frames,
        "anomaly/frames": frame_stacks(read_clip(clip)[70:80], HISTORY)[HISTORY:HISTORY + 2],
        "detector/input_tensor": np.ascontiguousarray(frames[..., ::-1]),
        "pose/images": np.ascontiguousarray(frames[:, :192, :192, ::-1]),
    }


def test_every_exported_model_loads_as_tensorflow_serving_loads_it_and_answers_as_served_locally(model_server, models_dir, sample_assets, tmp_path):
    models = sorted(path.name for path in models_dir.iterdir() if path.is_dir() and path.name != "risk")
    assert models == ["anomaly", "detector", "pose", "presence"], "a model was added: give it an input in _inputs()"
    inputs: dict[str, Any] = _inputs(sample_assets["clip"])
    np.savez(tmp_path / "inputs.npz", **inputs)
    versions = [max((models_dir / name).glob("[0-9]*")) for name in models]
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("serving_load.py")), str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz"),
                           *map(str, versions)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = np.load(tmp_path / "outputs.npz")
    client = PredictionClient(model_server)
    for name in models:
        feed = {key.split("/", 1)[1]: value for key, value in inputs.items() if key.startswith(f"{name}/")}
        served, _ = client.predict(name, feed)
        for key, value in served.items():
            np.testing.assert_allclose(loaded[f"{name}/{key}"], value, rtol=1e-4, atol=1e-5, err_msg=f"{name}/{key}")
