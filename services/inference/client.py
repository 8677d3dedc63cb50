"""gRPC client for TensorFlow Serving's PredictionService, with the official stubs.

The same code talks to the real TF Serving in production and to the local model server in
development and tests.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from services.inference.stages.base import ModelServerError
from services.shared.kafka import RetryableError

__all__ = ["ModelServerError", "PredictionClient"]

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PredictionClient:
    def __init__(self, address: str, timeout_s: float = 10.0, model_missing_grace_s: float = 120.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        # TF Serving answers NOT_FOUND while it is still loading a model: wait that long before
        # treating a missing model as a configuration error.
        self.model_missing_grace_s = model_missing_grace_s
        self._missing_since: dict[str, float] = {}
        # Responses larger than gRPC's default 4 MiB (big batches of maps) would be rejected otherwise.
        self._channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _error(self, model: str, exc: grpc.RpcError) -> Exception:
        """Retryable for an outage or a model still loading (within the grace period), permanent otherwise."""
        code = exc.code()
        message = f"model server {self.address}: {code.name} {exc.details()}"
        if code in TRANSIENT:
            return RetryableError(message)
        if code == grpc.StatusCode.NOT_FOUND:
            since = self._missing_since.setdefault(model, time.monotonic())
            if time.monotonic() - since < self.model_missing_grace_s:
                return RetryableError(message + " (model may still be loading)")
        return ModelServerError(message)

    def predict(
        self, model: str, inputs: dict[str, np.ndarray], signature: str = "serving_default", version: int | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """Outputs by name and the model version that answered (the newest served, unless `version` pins one)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(array)))
        try:
            response = self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(model, exc) from None
        self._missing_since.pop(model, None)
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return outputs, response.model_spec.version.value

    def input_shapes(self, model: str, signature: str = "serving_default") -> tuple[dict[str, list[int]], int]:
        """The signature's input shapes (-1: any) from GetModelMetadata, and the version that answered,
        so a stage can size its inputs from the served model instead of from training code."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        try:
            response = self._stub.GetModelMetadata(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(model, exc) from None
        self._missing_since.pop(model, None)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if signature not in signatures.signature_def:
            raise ModelServerError(f"model {model} has no signature {signature!r}")
        inputs = signatures.signature_def[signature].inputs
        shapes = {name: [int(d.size) for d in info.tensor_shape.dim] for name, info in inputs.items()}
        return shapes, response.model_spec.version.value

    def close(self) -> None:
        self._channel.close()
