"""Local stand-in for TensorFlow Serving: the PredictionService gRPC API over the same models/.

LOCAL STAND-IN ONLY. Production runs the `tensorflow/serving` image with the same models.config
(docker-compose.yml, k8s/). This server implements what our clients call (Predict,
GetModelMetadata, ModelService.GetModelStatus) with the official tensorflow-serving-api messages,
so a client cannot tell the two apart, and it manages versions the way TF Serving does:

- each model's `model_version_policy` (latest N, all, specific) picks the versions to serve from the
  numbered folders under its base path, and `version_labels` name versions ("stable", "canary");
- the folders and the config file are polled, so a new version written under a model's base path is
  loaded and swapped in without a restart, and an old one unloaded only after its successor serves;
- a version that is missing its saved_model.pb or fails to load is reported (log, GetModelStatus)
  and skipped: the previous version keeps serving. It is retried when its files change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

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
State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class LoadedModel:
    name: str
    version: int
    path: Path
    signatures: dict
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]


@dataclass
class ModelEntry:
    """One model of the config file: where its versions live and which of them to serve."""

    name: str
    base: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    specific: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def wanted(self, candidates: list[int]) -> set[int]:
        if self.policy == "all":
            return set(candidates)
        if self.policy == "specific":
            return set(candidates) & set(self.specific)
        return set(sorted(candidates, reverse=True)[: self.num_versions])


def read_model_config(config_file: Path, models_dir: Path) -> dict[str, ModelEntry]:
    """Model entries from a TF Serving model config file (text protobuf).

    base_path is the container path production uses (/models/<name>); locally its last folder name
    is looked up under models_dir, unless base_path exists as given.
    """
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(config_file.read_text(), config)
    entries = {}
    for item in config.model_config_list.config:
        if not item.name:
            raise ValueError(f"{config_file}: a model entry has no name")
        if item.name in entries:
            raise ValueError(f"{config_file}: model {item.name!r} is configured twice")
        base = Path(item.base_path)
        entry = ModelEntry(item.name, base if base.exists() else models_dir / base.name, labels=dict(item.version_labels))
        choice = item.model_version_policy.WhichOneof("policy_choice")
        if choice == "all":
            entry.policy = "all"
        elif choice == "specific":
            entry.policy, entry.specific = "specific", tuple(item.model_version_policy.specific.versions)
        elif choice == "latest":
            entry.num_versions = max(1, item.model_version_policy.latest.num_versions)
        entries[item.name] = entry
    return entries


def version_folders(base: Path) -> dict[int, Path]:
    if not base.is_dir():
        return {}
    return {int(p.name): p for p in base.iterdir() if p.is_dir() and p.name.isdigit()}


def fingerprint(path: Path) -> tuple:
    """Changes whenever a file in the version folder is added, removed or rewritten."""
    return tuple(sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()))


def load_version(name: str, version: int, path: Path) -> LoadedModel:
    """Load one version folder; any problem is an error naming the folder and the cause."""
    pb = path / "saved_model.pb"
    if not pb.exists():
        raise FileNotFoundError(f"model {name} version {version}: no saved_model.pb in {path}")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(pb.read_bytes())
        if not proto.meta_graphs:
            raise ValueError("saved_model.pb holds no MetaGraph")
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"model {name} version {version}: cannot load {path}: {type(exc).__name__}: {first}") from None
    signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}
    if not signature_defs:
        raise ValueError(f"model {name} version {version}: {path} has no serving signatures")
    return LoadedModel(name, version, path, dict(loaded.signatures), signature_defs)


class ModelRegistry:
    """Which model versions are served, kept in step with the config file and the version folders."""

    def __init__(self, config_file: Path, models_dir: Path) -> None:
        self.config_file = config_file
        self.models_dir = models_dir
        self.entries: dict[str, ModelEntry] = {}
        self.served: dict[str, dict[int, LoadedModel]] = {}
        self.failed: dict[tuple[str, int], tuple[tuple, str]] = {}  # (name, version) -> (fingerprint, error)
        self.unloaded: set[tuple[str, int]] = set()
        self._config_stamp: int | None = None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()

    def refresh(self) -> None:
        """Re-read the config file if it changed, then load and unload versions to match it."""
        with self._refresh_lock:
            stamp = self.config_file.stat().st_mtime_ns
            if stamp != self._config_stamp:
                try:
                    entries = read_model_config(self.config_file, self.models_dir)
                except (OSError, ValueError, text_format.ParseError) as exc:
                    if self._config_stamp is None:
                        raise
                    log.error("model config not reloaded; the previous one stays in force", extra={"error": str(exc)})
                else:
                    self.entries = entries
                    log.info("model config loaded", extra={"models": sorted(entries)})
                self._config_stamp = stamp
            for name in set(self.served) - set(self.entries):
                self._swap(name, keep=set())
            for entry in self.entries.values():
                self._sync(entry)

    def _sync(self, entry: ModelEntry) -> None:
        folders = version_folders(entry.base)
        prints = {v: fingerprint(p) for v, p in folders.items()}
        while True:
            broken = {v for v in folders if self.failed.get((entry.name, v), (None,))[0] == prints[v]}
            wanted = entry.wanted([v for v in folders if v not in broken])
            served = self.served.get(entry.name, {})
            new = sorted(wanted - set(served), reverse=True)
            if not new:
                break
            for version in new:
                try:
                    model = load_version(entry.name, version, folders[version])
                except (OSError, ValueError) as exc:
                    with self._lock:
                        self.failed[(entry.name, version)] = (prints[version], str(exc))
                    log.error("model version rejected; earlier versions keep serving", extra={"model": entry.name, "version": version, "error": str(exc)})
                    continue
                with self._lock:
                    self.failed.pop((entry.name, version), None)
                    self.served.setdefault(entry.name, {})[version] = model
                    self.unloaded.discard((entry.name, version))
                log.info("model version available", extra={"model": entry.name, "version": version, "path": str(folders[version])})
        # Unload only what is no longer wanted, once what is wanted serves (availability first).
        self._swap(entry.name, keep=wanted)

    def _swap(self, name: str, keep: set[int]) -> None:
        with self._lock:
            served = self.served.get(name, {})
            for version in sorted(set(served) - keep):
                del served[version]
                self.unloaded.add((name, version))
                log.info("model version unloaded", extra={"model": name, "version": version})
            if not served:
                self.served.pop(name, None)

    def resolve(self, spec) -> LoadedModel:
        """The version a request's ModelSpec names, or LookupError with TF Serving's wording."""
        with self._lock:
            versions = self.served.get(spec.name, {})
            entry = self.entries.get(spec.name)
            if spec.HasField("version"):
                wanted = spec.version.value
                label = f"Specific({spec.name}, {wanted})"
            elif spec.version_label:
                wanted = entry.labels.get(spec.version_label) if entry else None
                label = f"Specific({spec.name}, {spec.version_label})"
                if wanted is None:
                    raise LookupError(f"Unrecognized servable version label: {spec.version_label}")
            else:
                wanted = max(versions) if versions else None
                label = f"Latest({spec.name})"
            if wanted is None or wanted not in versions:
                reason = ""
                if (spec.name, wanted) in self.failed:
                    reason = f" ({self.failed[(spec.name, wanted)][1]})"
                elif entry and not versions:
                    errors = [e for (n, _), (_, e) in self.failed.items() if n == spec.name]
                    reason = f" ({errors[-1]})" if errors else f" (no version under {entry.base})"
                raise LookupError(f"Servable not found for request: {label}{reason}")
            return versions[wanted]

    def status(self, name: str, version: int | None) -> list[tuple[int, int, str]]:
        """(version, state, error message) for the versions of a model that the server knows of."""
        with self._lock:
            if name not in self.entries and name not in self.served:
                raise LookupError(f"Servable not found for request: Latest({name})")
            rows = {v: (v, State.AVAILABLE, "") for v in self.served.get(name, {})}
            for (n, v), (_, error) in self.failed.items():
                if n == name and v not in rows:
                    rows[v] = (v, State.END, error)
            for n, v in self.unloaded:
                if n == name and v not in rows:
                    rows[v] = (v, State.END, "")
        if version is not None:
            if version not in rows:
                raise LookupError(f"Servable not found for request: Specific({name}, {version})")
            return [rows[version]]
        return [rows[v] for v in sorted(rows, reverse=True)]

    def summary(self) -> dict[str, list[int]]:
        with self._lock:
            return {name: sorted(self.served.get(name, {}), reverse=True) for name in self.entries}


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """grpc's `context.abort` ends the call by raising; said here so the type checker knows it."""
    context.abort(code, message)
    raise AssertionError("grpc context.abort returned")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def _model(self, spec, context) -> LoadedModel:
        try:
            return self.registry.resolve(spec)
        except LookupError as exc:
            _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        model = self._model(request.model_spec, context)
        signature_name = request.model_spec.signature_name or "serving_default"
        fn = model.signatures.get(signature_name)
        if fn is None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature name: \"{signature_name}\" not found in signature def")
        expected = set(model.signature_defs[signature_name].inputs)
        given = set(request.inputs)
        if given != expected:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"input names {sorted(given)} do not match the signature's {sorted(expected)}")
        try:
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            outputs = fn(**inputs)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}".splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature_name
        wanted = set(request.output_filter) or set(outputs)
        for key in wanted:
            if key not in outputs:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias {key} not found in signature")
            response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(outputs[key])))
        return response

    def GetModelMetadata(self, request, context):
        model = self._model(request.model_spec, context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in model.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        try:
            rows = self.registry.status(spec.name, spec.version.value if spec.HasField("version") else None)
        except LookupError as exc:
            _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error in rows:
            status = response.model_version_status.add(version=version, state=state)
            if error:
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = error
        return response


def serve(registry: ModelRegistry, host: str, port: int, workers: int = 8) -> tuple[grpc.Server, int]:
    service = PredictionService(registry)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"model server: cannot listen on {host}:{port} (port taken?)")
    server.start()
    return server, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local PredictionService model server (stand-in for TF Serving).")
    parser.add_argument("--model-config-file", type=Path, default=Path("models/models.config"))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often version folders and the config file are re-read (TF Serving: --file_system_poll_wait_seconds)")
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    configure_logging("modelserver", os.environ.get("SW_LOG_LEVEL", "INFO"))
    registry = ModelRegistry(args.model_config_file, args.models_dir)
    try:
        registry.refresh()
        server, port = serve(registry, args.host, args.port)
    except (OSError, ValueError, text_format.ParseError) as exc:
        log.error("model server failed to start", extra={"error": str(exc)})
        return 1
    info = {"address": f"{args.host}:{port}", "models": registry.summary(), "pid": os.getpid(),
            "errors": {f"{n}/{v}": e for (n, v), (_, e) in registry.failed.items()}}
    log.info("serving", extra=info)
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(args.ready_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(args.poll_seconds):
        try:
            registry.refresh()
        except Exception:
            log.exception("model poll failed")
    server.stop(grace=5).wait()
    return 0

