"""Benchmark: each model's frames/s in process, and through the model server, in the same run.

The in-process figure is the model's own limit on this machine (its serving signature called
directly); the served figure adds what production adds: tensor serialisation, gRPC, the server's
thread pool. ratio = served frames/s over in-process frames/s (the worst model's, on the last line).
Models are exported fresh into a temporary folder: NanoDet (detector) and MoveNet (pose) from their
pinned package, the HOG detector for comparison, and the anomaly CNN with its real architecture but
barely trained (speed does not depend on the weights); with `--yolo11n-pose`, the opt-in AGPL-3.0
detector too (its weights are fetched only then). Each at batch 1 and 8 by default. With a GPU
visible to TensorFlow, both sides run on it and the JSON says so.

    make bench-models ARGS="--seconds 10 --batches 1,8 --clients 2"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devplatform import samplestore
from devplatform.launcher import Platform
from devplatform.progress import Progress
from modeling import detector as hog
from modeling import movenet, nanodet
from modeling.anomaly import HISTORY, TrainConfig, frame_stacks, read_clip, train_and_export
from services.shared.tensorflow_runtime import load_tensorflow

CONFIG = """model_config_list {
  config { name: "anomaly" base_path: "/models/anomaly" model_platform: "tensorflow" }
  config { name: "detector" base_path: "/models/detector" model_platform: "tensorflow" }
  config { name: "pose" base_path: "/models/pose" model_platform: "tensorflow" }
  config { name: "hog" base_path: "/models/hog" model_platform: "tensorflow" }
}
"""


def rate(call, batch: int, seconds: float, clients: int = 1) -> float:
    """Frames per second while `clients` threads call `call()` back to back for `seconds`."""
    call()  # warm-up (tracing, connection)
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            call()
            done[i] += batch

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per model, batch size and path")
    parser.add_argument("--batches", default="1,8", help="frames per Predict call, comma-separated")
    parser.add_argument("--clients", type=int, default=1, help="concurrent callers (both paths)")
    parser.add_argument("--yolo11n-pose", action="store_true", help="also the opt-in YOLO11n-pose detector (AGPL-3.0 weights, fetched only with this flag)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    tf = load_tensorflow()

    from services.inference.client import PredictionClient
    from services.inference.stages.pose import cut, square_crop

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    tmp = Path(tempfile.mkdtemp(prefix="sw-bench-models-"))
    try:
        sample = samplestore.generate(tmp / "sample")
        models = tmp / "models"
        models.mkdir()
        config = CONFIG
        if args.yolo11n_pose:
            config = config.rstrip().removesuffix("}") + '  config { name: "yolo11n-pose" base_path: "/models/yolo11n-pose" model_platform: "tensorflow" }\n}\n'
        (models / "models.config").write_text(config)
        folders = {
            "anomaly": train_and_export(sample["clip"], models, config=TrainConfig(epochs=1, max_windows=16))[0],
            "detector": nanodet.build_and_export(models),
            "pose": movenet.build_and_export(models),
            "hog": hog.build_and_export(models, name="hog"),
        }
        if args.yolo11n_pose:
            from modeling import yolo_pose

            folders["yolo11n-pose"] = yolo_pose.build_and_export(models, name="yolo11n-pose")
        clip = read_clip(sample["clip"])
        colour = np.ascontiguousarray(samplestore.clip_frame(8.0)[..., ::-1])  # RGB; cashier and customer in view
        customer = samplestore.visible_box(samplestore.CUSTOMER, 8.0)
        assert customer is not None, "the customer is at the counter 8 s in"
        x0, y0, side = square_crop(customer, samplestore.WIDTH, samplestore.HEIGHT)
        crop = cut(colour, x0, y0, side, movenet.INPUT_SIZE)

        def inputs(name: str, batch: int) -> dict[str, np.ndarray]:
            if name == "anomaly":
                return {"frames": frame_stacks(clip[:64], HISTORY)[HISTORY : HISTORY + batch]}
            if name == "pose":
                return {"images": np.repeat(crop[None], batch, axis=0)}
            return {"input_tensor": np.repeat(colour[None], batch, axis=0)}

        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as run_dir:
            platform = Platform(run_dir=Path(run_dir), models_dir=models)
            try:
                platform.start_model_server()
                client = PredictionClient(platform.env["SW_MODEL_SERVER"], timeout_s=60)
                progress = Progress("measuring", 2 * len(folders) * len(batches) * args.seconds, "s", every_s=5)
                for name, folder in folders.items():
                    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
                    for batch in batches:
                        given = inputs(name, batch)
                        tensors = {k: tf.constant(v) for k, v in given.items()}
                        progress.update(progress.done, note=f"{name} batch {batch} in process")
                        in_process = rate(lambda serve=serve, tensors=tensors: serve(**tensors), batch, args.seconds, args.clients)
                        progress.advance(args.seconds, note=f"{name} batch {batch} through the model server")
                        served = rate(lambda name=name, given=given: client.predict(name, given), batch, args.seconds, args.clients)
                        progress.advance(args.seconds)
                        shape = "x".join(str(d) for d in next(iter(given.values())).shape)
                        results[f"{name}@{batch}"] = {"in_process_fps": round(in_process, 1), "served_fps": round(served, 1),
                                                       "ratio": round(served / in_process, 3), "input": shape}
                        print(f"  {name:<9} batch {batch:<2} in process {in_process:8.1f} frames/s   through the model server {served:8.1f} frames/s"
                              f"   ratio {served / in_process:.3f}   ({shape})", flush=True)
                progress.close()
            finally:
                platform.down(echo=lambda *_: None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {"ratio": min(r["ratio"] for r in results.values()), "device": gpus[0] if gpus else "cpu", "batches": batches, "clients": args.clients, **results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
