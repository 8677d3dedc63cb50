"""Local stand-in for TensorFlow Serving: the PredictionService gRPC API over the same models/.

LOCAL STAND-IN ONLY. Production runs the `tensorflow/serving` image with the same models.config
(docker-compose.yml, k8s/). This server implements what our clients call (Predict,
GetModelMetadata, ModelService.GetModelStatus) with the official tensorflow-serving-api messages,
so a client cannot tell the two apart. It loads the newest version of each configured model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from services.shared.logs import configure_logging

log = logging.getLogger("modelserver")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class LoadedModel:
    name: str
    version: int
    path: Path
    signatures: dict
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]


def read_model_config(config_file: Path, models_dir: Path) -> dict[str, Path]:
    """Model name -> folder of versions, from a TF Serving model config file.

    base_path is the container path production uses (/models/<name>); locally its last folder name
    is looked up under models_dir, unless base_path exists as given.
    """
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(config_file.read_text(), config)
    models = {}
    for entry in config.model_config_list.config:
        base = Path(entry.base_path)
        models[entry.name] = base if base.exists() else models_dir / base.name
    return models


def load_latest(name: str, base: Path) -> LoadedModel:
    versions = sorted((int(p.name) for p in base.glob("*") if p.name.isdigit() and (p / "saved_model.pb").exists()), reverse=True)
    if not versions:
        raise FileNotFoundError(f"model {name}: no version with a saved_model.pb under {base}")
    path = base / str(versions[0])
    loaded = tf.saved_model.load(str(path))
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}
    return LoadedModel(name, versions[0], path, dict(loaded.signatures), signature_defs)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self.models = models

    def _model(self, spec, context) -> LoadedModel:
        model = self.models.get(spec.name)
        if model is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version") and spec.version.value != model.version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec.name}, {spec.version.value})")
        return model

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:  # noqa: N802 (gRPC API)
        model = self._model(request.model_spec, context)
        signature_name = request.model_spec.signature_name or "serving_default"
        fn = model.signatures.get(signature_name)
        if fn is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature name: \"{signature_name}\" not found in signature def")
        expected = set(model.signature_defs[signature_name].inputs)
        given = set(request.inputs)
        if given != expected:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input names {sorted(given)} do not match the signature's {sorted(expected)}")
        try:
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            outputs = fn(**inputs)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}".splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature_name
        wanted = set(request.output_filter) or set(outputs)
        for key in wanted:
            if key not in outputs:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias {key} not found in signature")
            response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(outputs[key])))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802 (gRPC API)
        model = self._model(request.model_spec, context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in model.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC API)
        model = self._model(request.model_spec, context)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = model.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def serve(config_file: Path, models_dir: Path, host: str, port: int) -> tuple[grpc.Server, int, dict[str, LoadedModel]]:
    models = {name: load_latest(name, base) for name, base in read_model_config(config_file, models_dir).items()}
    service = PredictionService(models)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"model server: cannot listen on {host}:{port} (port taken?)")
    server.start()
    return server, bound, models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local PredictionService model server (stand-in for TF Serving).")
    parser.add_argument("--model-config-file", type=Path, default=Path("models/models.config"))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    configure_logging("modelserver", os.environ.get("SW_LOG_LEVEL", "INFO"))
    try:
        server, port, models = serve(args.model_config_file, args.models_dir, args.host, args.port)
    except (OSError, ValueError, text_format.ParseError) as exc:
        log.error("model server failed to start", extra={"error": str(exc)})
        return 1
    info = {"address": f"{args.host}:{port}", "models": {m.name: m.version for m in models.values()}, "pid": os.getpid()}
    log.info("serving", extra=info)
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(args.ready_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
