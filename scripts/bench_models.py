"""Benchmark: each model's frames/s in process, and through the model server, in the same run.

The in-process figure is the model's own limit on this machine (its serving signature called
directly); the served figure adds what production adds: tensor serialisation, gRPC, the server's
thread pool. ratio = served frames/s over in-process frames/s (the worst model's, on the last line).
Models are exported fresh into a temporary folder (the anomaly CNN with its real architecture but
barely trained: speed does not depend on the weights). With a GPU visible to TensorFlow, both sides
run on it and the JSON says so.

    make bench-models ARGS="--seconds 10 --batch 8 --clients 2"
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
from modeling.anomaly import HISTORY, TrainConfig, frame_stacks, read_clip, train_and_export
from modeling.detector import build_and_export
from services.shared.progress import Progress
from services.shared.tensorflow_runtime import load_tensorflow

CONFIG = """model_config_list {
  config { name: "anomaly" base_path: "/models/anomaly" model_platform: "tensorflow" }
  config { name: "detector" base_path: "/models/detector" model_platform: "tensorflow" }
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
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per model and path")
    parser.add_argument("--batch", type=int, default=8, help="frames per Predict call")
    parser.add_argument("--clients", type=int, default=1, help="concurrent callers (both paths)")
    args = parser.parse_args(argv)
    tf = load_tensorflow()

    from services.inference.client import PredictionClient

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    tmp = Path(tempfile.mkdtemp(prefix="sw-bench-models-"))
    try:
        sample = samplestore.generate(tmp / "sample")
        models = tmp / "models"
        models.mkdir()
        (models / "models.config").write_text(CONFIG)
        anomaly_dir, _ = train_and_export(sample["clip"], models, config=TrainConfig(epochs=1, max_windows=16))
        detector_dir = build_and_export(models)

        clip = read_clip(sample["clip"])
        colour = samplestore.clip_frame(8.0)  # cashier and customer in view
        inputs = {
            "anomaly": {"frames": frame_stacks(clip[:64], HISTORY)[HISTORY : HISTORY + args.batch]},
            "detector": {"input_tensor": np.repeat(colour[None], args.batch, axis=0)},
        }
        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as run_dir:
            platform = Platform(run_dir=Path(run_dir), models_dir=models)
            try:
                platform.start_model_server()
                client = PredictionClient(platform.env["SW_MODEL_SERVER"], timeout_s=60)
                progress = Progress("measuring", 4 * args.seconds, "s", every_s=5)
                for name, folder in (("anomaly", anomaly_dir), ("detector", detector_dir)):
                    progress.update(progress.done, note=f"{name} in process")
                    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
                    tensors = {k: tf.constant(v) for k, v in inputs[name].items()}
                    in_process = rate(lambda serve=serve, tensors=tensors: serve(**tensors), args.batch, args.seconds, args.clients)
                    progress.advance(args.seconds, note=f"{name} through the model server")
                    served = rate(lambda name=name: client.predict(name, inputs[name]), args.batch, args.seconds, args.clients)
                    progress.advance(args.seconds)
                    shape = "x".join(str(d) for d in next(iter(inputs[name].values())).shape)
                    results[name] = {"in_process_fps": round(in_process, 1), "served_fps": round(served, 1), "ratio": round(served / in_process, 3), "input": shape}
                    print(f"  {name:<9} in process {in_process:8.1f} frames/s   through the model server {served:8.1f} frames/s   ratio {served / in_process:.3f}   ({shape})")
                progress.close()
            finally:
                platform.down(echo=lambda *_: None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {"ratio": min(r["ratio"] for r in results.values()), "device": gpus[0] if gpus else "cpu", "batch": args.batch, "clients": args.clients, **results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
