"""TF.js graph models (a `model.json` plus `.bin` weight shards) as TensorFlow functions.

Weights that ship inside a registry package are what a store's machine can install offline, and
npm carries converted TF.js graph models of detectors and pose estimators. Their `modelTopology`
is a TensorFlow GraphDef written as JSON, with the weights outside it, so the path back is:

1. parse `modelTopology` into a GraphDef (protobuf's json_format);
2. read each weight from the shards in manifest order, dequantise it where `quantization` says
   (float16, or uint8/uint16 affine with scale and min), and put it into its Const node;
3. split the ops that only TF.js has (`_FusedConv2D`, `FusedDepthwiseConv2dNative`, `_FusedMatMul`
   with attribute `fused_ops`) back into the base op, BiasAdd and the activation;
4. import the GraphDef into a wrapped function and prune it to the signature's inputs and outputs.

The result is a plain concrete function that `tf.saved_model.save` can keep, so TF Serving serves it
like any other model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.shared.tensorflow_runtime import load_tensorflow

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "int64": np.int64}
_QUANTISED = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
# What a fused op's `fused_ops` may hold after BiasAdd, and the plain op it becomes.
_ACTIVATIONS = {"Relu": "Relu", "Relu6": "Relu6", "Elu": "Elu", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "LeakyRelu": "LeakyRelu"}
_FUSED_BASE = {"_FusedConv2D": "Conv2D", "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative", "_FusedMatMul": "MatMul"}
_FUSION_ATTRS = {"fused_ops", "num_args", "epsilon", "leakyrelu_alpha", "num_host_args"}


class TfjsModelError(ValueError):
    """The TF.js model files are missing, truncated or use something this converter cannot rebuild."""


@dataclass
class GraphModel:
    """A TF.js graph model read back into TensorFlow terms."""

    graph_def: Any  # tf.compat.v1.GraphDef
    inputs: dict[str, str]  # signature name -> tensor name ("input_1:0")
    outputs: dict[str, str]
    output_shapes: dict[str, tuple[int, ...]]  # signature name -> shape as the model.json declares it (-1: any)
    metadata: dict[str, Any]  # format, generatedBy, convertedBy, as the model.json says

    def function(self) -> Callable:
        """A concrete function from the signature's input tensors to its output tensors, in signature order."""
        tf = load_tensorflow()
        graph_def = self.graph_def

        def imported() -> None:
            tf.compat.v1.import_graph_def(graph_def, name="")

        wrapped = tf.compat.v1.wrap_function(imported, [])
        graph = wrapped.graph
        feeds = [graph.get_tensor_by_name(name) for name in self.inputs.values()]
        fetches = [graph.get_tensor_by_name(name) for name in self.outputs.values()]
        return wrapped.prune(feeds, fetches)


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def read_weights(model_json: Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    """Every weight of the manifest as a numpy array, dequantised to its original dtype."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        shards = []
        for relative in group["paths"]:
            shard = model_json.parent / relative
            if not shard.is_file():
                raise TfjsModelError(f"{model_json.name}: weight shard {relative} is missing")
            shards.append(shard.read_bytes())
        data, offset = b"".join(shards), 0
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], [int(d) for d in spec["shape"]], spec["dtype"]
            count = int(np.prod(shape)) if shape else 1
            quantization = spec.get("quantization")
            stored = _QUANTISED.get(quantization["dtype"]) if quantization else _DTYPES.get(dtype)
            if stored is None:
                raise TfjsModelError(f"{model_json.name}: weight {name} has unsupported dtype {quantization or dtype}")
            size = count * np.dtype(stored).itemsize
            if offset + size > len(data):
                raise TfjsModelError(f"{model_json.name}: weight shards end before weight {name} (truncated download?)")
            array: np.ndarray = np.frombuffer(data, stored, count, offset).reshape(shape)
            offset += size
            if quantization and quantization["dtype"] != "float16":
                array = array.astype(np.float32) * float(quantization["scale"]) + float(quantization["min"])
            weights[name] = array.astype(_DTYPES.get(quantization.get("original_dtype", dtype) if quantization else dtype, np.float32))
        if offset != len(data):
            raise TfjsModelError(f"{model_json.name}: {len(data) - offset} bytes left over after the last weight of a shard group")
    return weights


def _split_fused(graph_def: Any) -> int:
    """Replace each TF.js fused op by its base op, BiasAdd and activation; returns how many were split."""
    tf = load_tensorflow()
    kept, split = [], 0
    names = {node.name for node in graph_def.node}

    def fresh(name: str) -> str:
        """A node name the graph does not use yet."""
        candidate, n = name, 1
        while candidate in names:
            candidate, n = f"{name}_{n}", n + 1
        names.add(candidate)
        return candidate

    for node in graph_def.node:
        if node.op not in _FUSED_BASE:
            kept.append(node)
            continue
        fused = [op.decode() for op in node.attr["fused_ops"].list.s]
        if not fused or fused[0] != "BiasAdd" or len(fused) > 2 or (len(fused) == 2 and fused[1] not in _ACTIVATIONS):
            raise TfjsModelError(f"node {node.name}: {node.op} with fused_ops {fused} is not supported (BiasAdd, then one of {sorted(_ACTIVATIONS)})")
        data_inputs = [i for i in node.input if not i.startswith("^")]
        controls = [i for i in node.input if i.startswith("^")]
        if len(data_inputs) < 3:
            raise TfjsModelError(f"node {node.name}: {node.op} needs input, weights and bias, has {data_inputs}")
        base = tf.compat.v1.NodeDef(name=fresh(f"{node.name}/unfused_{_FUSED_BASE[node.op]}"), op=_FUSED_BASE[node.op], input=[*data_inputs[:2], *controls])
        for key, value in node.attr.items():
            if key not in _FUSION_ATTRS:
                base.attr[key].CopyFrom(value)
        bias = tf.compat.v1.NodeDef(name=node.name if len(fused) == 1 else fresh(f"{node.name}/unfused_BiasAdd"), op="BiasAdd", input=[base.name, data_inputs[2]])
        bias.attr["T"].CopyFrom(node.attr["T"])
        if "data_format" in node.attr:
            bias.attr["data_format"].CopyFrom(node.attr["data_format"])
        kept += [base, bias]
        if len(fused) == 2:
            activation = tf.compat.v1.NodeDef(name=node.name, op=_ACTIVATIONS[fused[1]], input=[bias.name])
            activation.attr["T"].CopyFrom(node.attr["T"])
            if fused[1] == "LeakyRelu":
                activation.attr["alpha"].f = node.attr["leakyrelu_alpha"].f
            kept.append(activation)
        split += 1
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return split


def load_graph_model(model_json: Path) -> GraphModel:
    """Read a TF.js graph model (json and shards beside it) into a GraphDef with its weights."""
    tf = load_tensorflow()
    from google.protobuf import json_format

    if not model_json.is_file():
        raise TfjsModelError(f"{model_json}: no such TF.js model file")
    try:
        spec = json.loads(model_json.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TfjsModelError(f"{model_json}: not a TF.js model.json ({exc})") from exc
    if spec.get("format") != "graph-model" or "modelTopology" not in spec or "weightsManifest" not in spec:
        raise TfjsModelError(f"{model_json}: not a TF.js graph model (format {spec.get('format')!r})")
    graph_def = json_format.ParseDict(spec["modelTopology"], tf.compat.v1.GraphDef(), ignore_unknown_fields=True)
    weights = read_weights(model_json, spec["weightsManifest"])
    for node in graph_def.node:
        if node.op == "Const" and node.name in weights:
            # TF.js has no int64: such constants were stored as int32 and go back to the node's own dtype.
            declared = tf.dtypes.as_dtype(node.attr["dtype"].type) if node.attr["dtype"].type else None
            value = weights.pop(node.name)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(declared.as_numpy_dtype) if declared is not None else value))
            node.attr["dtype"].type = node.attr["value"].tensor.dtype
    if weights:
        raise TfjsModelError(f"{model_json.name}: weights without a Const node: {sorted(weights)[:5]}")
    _split_fused(graph_def)
    signature = spec.get("signature") or {}
    inputs = {key: _tensor_name(value["name"]) for key, value in signature.get("inputs", {}).items()}
    outputs = {key: _tensor_name(value["name"]) for key, value in signature.get("outputs", {}).items()}
    shapes = {key: tuple(int(d.get("size", -1)) for d in value.get("tensorShape", {}).get("dim", [])) for key, value in signature.get("outputs", {}).items()}
    if not inputs or not outputs:
        raise TfjsModelError(f"{model_json.name}: the model.json has no signature naming its inputs and outputs")
    metadata = {key: spec[key] for key in ("format", "generatedBy", "convertedBy") if key in spec}
    return GraphModel(graph_def, inputs, outputs, shapes, metadata)


def save_serving_module(module: Any, out_dir: Path) -> None:
    """Save a tf.Module wrapping a converted graph, its `serve` as the `serving_default` signature."""
    load_tensorflow().saved_model.save(module, str(out_dir), signatures={"serving_default": module.serve})
