"""PyTorch checkpoints are read without PyTorch and without running their code, and the YOLO layers
rebuilt in TensorFlow (NHWC) compute what the PyTorch originals (NCHW) compute."""

import collections
import pickle
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from modeling.torch_checkpoint import CheckpointError, PickledObject, read_checkpoint


class _Storage:
    def __init__(self, key: str, data: np.ndarray, numel: int | None = None) -> None:
        self.key, self.data = key, data
        self.numel = data.size if numel is None else numel  # the element count the pickle declares


def _fake_torch(monkeypatch) -> dict:
    """Stand-in modules so that pickle writes the same global names a real checkpoint holds."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    tasks = types.ModuleType("ultralytics.nn.tasks")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    vars(utils)["_rebuild_tensor_v2"] = _rebuild_tensor_v2
    vars(torch).update(HalfStorage=type("HalfStorage", (), {"__module__": "torch", "__qualname__": "HalfStorage"}), _utils=utils)
    vars(tasks)["PoseModel"] = type("PoseModel", (), {"__module__": "ultralytics.nn.tasks", "__qualname__": "PoseModel"})
    for name, module in (("torch", torch), ("torch._utils", utils), ("ultralytics", types.ModuleType("ultralytics")),
                         ("ultralytics.nn", types.ModuleType("ultralytics.nn")), ("ultralytics.nn.tasks", tasks)):
        monkeypatch.setitem(sys.modules, name, module)
    return {"torch": torch, "rebuild": _rebuild_tensor_v2, "PoseModel": vars(tasks)["PoseModel"]}


def _write_checkpoint(path: Path, obj, storages: list[_Storage], fake: dict, reduce_tensors: dict) -> None:
    class Writer(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", vars(fake["torch"])["HalfStorage"], o.key, "cpu", o.numel)
            return None

        def reducer_override(self, o):
            if id(o) in reduce_tensors:
                storage, offset, size, stride = reduce_tensors[id(o)]
                return fake["rebuild"], (storage, offset, size, stride, False, collections.OrderedDict())
            return NotImplemented

    import io

    buffer = io.BytesIO()
    Writer(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", buffer.getvalue())
        archive.writestr("ckpt/byteorder", "little")
        for storage in storages:
            archive.writestr(f"ckpt/data/{storage.key}", storage.data.tobytes())


def test_a_checkpoint_reads_into_numpy_with_its_module_tree(tmp_path, monkeypatch):
    fake = _fake_torch(monkeypatch)
    data = np.arange(12, dtype=np.float16)
    storage = _Storage("0", data)
    weight, transposed = object(), object()  # placeholders the writer turns into tensor rebuilds
    model = fake["PoseModel"]()
    model.__dict__.update({"_parameters": collections.OrderedDict(weight=weight), "_buffers": collections.OrderedDict(), "stride": transposed})
    _write_checkpoint(tmp_path / "m.pt", {"model": model, "license": "AGPL-3.0"}, [storage], fake,
                      {id(weight): (storage, 2, (2, 3), (3, 1)), id(transposed): (storage, 0, (3, 2), (1, 3))})
    monkeypatch.undo()  # the reader must not need the stand-ins (nor PyTorch)

    checkpoint = read_checkpoint(tmp_path / "m.pt")
    read_model = checkpoint["model"]
    assert isinstance(read_model, PickledObject) and read_model.qualname == "ultralytics.nn.tasks.PoseModel" and read_model.kind == "PoseModel"
    np.testing.assert_array_equal(read_model.tensor("weight"), np.arange(2, 8, dtype=np.float32).reshape(2, 3))
    assert read_model.tensor("weight").dtype == np.float32
    np.testing.assert_array_equal(read_model.__dict__["stride"], np.arange(6, dtype=np.float16).reshape(2, 3).T)
    assert checkpoint["license"] == "AGPL-3.0"
    with pytest.raises(CheckpointError, match="no parameter or buffer 'bias'"):
        read_model.tensor("bias")
    with pytest.raises(CheckpointError, match="no sub-module 'model'"):
        read_model.child("model")


def test_a_checkpoint_never_runs_code_it_names(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {target}",)

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"model": Evil()}, protocol=2))
    checkpoint = read_checkpoint(tmp_path / "evil.pt")
    assert not target.exists()
    assert isinstance(checkpoint["model"], PickledObject) and checkpoint["model"].qualname in ("posix.system", "os.system")


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        read_checkpoint(tmp_path / "x.pt")
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as archive:
        archive.writestr("a.txt", "x")
    with pytest.raises(CheckpointError, match=r"expected one \*/data.pkl"):
        read_checkpoint(tmp_path / "empty.pt")


# A crafted file must get a clear error, never a read outside the storage: the reader runs in a child
# process, so that a segfault fails the test instead of ending pytest.
_READ_IN_A_CHILD = """
import sys
from modeling.torch_checkpoint import CheckpointError, read_checkpoint
try:
    read_checkpoint(sys.argv[1])
except CheckpointError as exc:
    print(exc)
    sys.exit(3)
print("read without an error")
"""


def _crafted(tmp_path: Path, monkeypatch, offset, size, stride, storage: _Storage | None = None) -> Path:
    fake = _fake_torch(monkeypatch)
    storage = storage or _Storage("0", np.arange(12, dtype=np.float16))
    tensor = object()
    _write_checkpoint(tmp_path / "crafted.pt", {"weight": tensor}, [storage], fake, {id(tensor): (storage, offset, size, stride)})
    monkeypatch.undo()
    return tmp_path / "crafted.pt"


def _error_read_in_a_child(path: Path) -> str:
    child = subprocess.run([sys.executable, "-c", _READ_IN_A_CHILD, str(path)], capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 3, f"the reader ended with {child.returncode} (negative: killed by that signal): {child.stdout}{child.stderr[-2000:]}"
    return child.stdout


@pytest.mark.parametrize(("offset", "size", "stride", "reason"), [
    (0, (1 << 20, 64), (1 << 20, 1), r"size \(1048576, 64\) with stride \(1048576, 1\) from offset 0 reaches element 1099510579263, past the storage's last element 11"),
    (8, (2, 3), (3, 1), r"from offset 8 reaches element 13, past the storage's last element 11"),
    (1 << 40, (), (), r"from offset 1099511627776 reaches element 1099511627776"),
    (0, (3,), (-1,), r"stride \(-1,\) holds something other than integers"),
    (0, (-2, 3), (3, 1), r"size \(-2, 3\) .* holds something other than integers"),
    (0, (2,), (1.5,), r"holds something other than integers"),
    (-4, (2,), (1,), r"storage offset -4 is not an integer"),
    (0, (2, 3), (3,), r"2 sizes and 1 strides"),
    (0, (1,) * 40, (1,) * 40, r"40 sizes and 40 strides \(at most 32 dimensions"),
    (0, (1 << 47,), (0,), r"repeats its storage into 140737488355328 elements"),
], ids=["far-past-the-end", "rows-past-the-end", "scalar-past-the-end", "negative-stride", "negative-size", "float-stride",
        "negative-offset", "fewer-strides", "too-many-dims", "expanded-beyond-any-memory"])
def test_a_tensor_reaching_outside_its_storage_is_a_clear_error_not_a_crash(tmp_path, monkeypatch, offset, size, stride, reason):
    message = _error_read_in_a_child(_crafted(tmp_path, monkeypatch, offset, size, stride))
    assert "tensor on storage '0' (12 elements of float16)" in message
    assert re.search(reason, message), message


def test_a_storage_shorter_than_it_declares_is_refused_by_key(tmp_path, monkeypatch):
    short = _Storage("7", np.arange(3, dtype=np.float16), numel=1 << 30)  # 6 bytes in the archive, 2 GiB declared
    message = _error_read_in_a_child(_crafted(tmp_path, monkeypatch, 0, (1 << 30,), (1,), storage=short))
    assert "tensor data 7: the archive holds 6 bytes, the checkpoint declares 1073741824 elements of float16 (2147483648 bytes)" in message


def test_the_checks_leave_real_layouts_alone(tmp_path, monkeypatch):
    """A size-1 dimension's stride is never used, an expanded (stride 0) tensor repeats its element,
    and an empty tensor may start at the storage's end: all as PyTorch writes them."""
    fake = _fake_torch(monkeypatch)
    storage = _Storage("0", np.arange(12, dtype=np.float16))
    column, expanded, empty, scalar = object(), object(), object(), object()
    _write_checkpoint(tmp_path / "m.pt", {"column": column, "expanded": expanded, "empty": empty, "scalar": scalar}, [storage], fake,
                      {id(column): (storage, 9, (3, 1), (1, 1000)), id(expanded): (storage, 11, (2, 3), (0, 0)),
                       id(empty): (storage, 12, (0, 4), (4, 1)), id(scalar): (storage, 11, (), ())})
    monkeypatch.undo()
    checkpoint = read_checkpoint(tmp_path / "m.pt")
    np.testing.assert_array_equal(checkpoint["column"], [[9], [10], [11]])
    np.testing.assert_array_equal(checkpoint["expanded"], np.full((2, 3), 11, np.float16))
    assert checkpoint["empty"].shape == (0, 4) and checkpoint["scalar"] == 11


# --- the YOLO layers against NCHW references written the PyTorch way --------------------------------------------


def _module(kind: str, modules: dict | None = None, params: dict | None = None, buffers: dict | None = None, **attrs) -> PickledObject:
    obj = type(kind, (PickledObject,), {"qualname": f"torch.nn.{kind}"})()
    obj.__dict__.update({"_modules": collections.OrderedDict(modules or {}), "_parameters": collections.OrderedDict(params or {}),
                         "_buffers": collections.OrderedDict(buffers or {}), **attrs})
    return obj


def _conv_module(rng, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: str = "SiLU") -> PickledObject:
    conv = _module("Conv2d", params={"weight": rng.normal(0, 0.3, (c_out, c_in // groups, k, k)).astype(np.float16), "bias": None},
                   stride=(stride, stride), padding=(k // 2, k // 2), groups=groups, dilation=(1, 1))
    bn = _module("BatchNorm2d", params={"weight": rng.uniform(0.5, 1.5, c_out), "bias": rng.normal(0, 0.1, c_out)},
                 buffers={"running_mean": rng.normal(0, 0.1, c_out), "running_var": rng.uniform(0.5, 2, c_out)}, eps=1e-3)
    return _module("Conv", {"conv": conv, "bn": bn, "act": _module(act)})


def _conv_reference(x: np.ndarray, module: PickledObject) -> np.ndarray:
    """Conv2d (zero padding both sides, groups) + BatchNorm + activation on NCHW, as PyTorch computes them."""
    conv, bn = module.child("conv"), module.child("bn")
    w = conv.tensor("weight")
    stride, pad, groups = conv.__dict__["stride"][0], conv.__dict__["padding"][0], conv.__dict__["groups"]
    n, _, h, width = x.shape
    c_out, per_group, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    y = np.zeros((n, c_out, oh, ow), np.float64)
    out_per_group = c_out // groups
    for o in range(c_out):
        g = o // out_per_group
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * per_group:(g + 1) * per_group, i * stride:i * stride + k, j * stride:j * stride + k]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
    shape = (1, -1, 1, 1)
    y = (y - bn.tensor("running_mean").reshape(shape)) / np.sqrt(bn.tensor("running_var").reshape(shape) + 1e-3)
    y = y * bn.tensor("weight").reshape(shape) + bn.tensor("bias").reshape(shape)
    return y * (1 / (1 + np.exp(-y))) if module.child("act").kind == "SiLU" else y


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(np.float32)


@pytest.mark.parametrize(("k", "stride", "groups"), [(3, 2, 1), (3, 1, 4), (1, 1, 1)])
def test_conv_with_batch_norm_matches_pytorch(k, stride, groups):
    import tensorflow as tf

    from modeling.yolo_pose import _Builder

    rng = np.random.default_rng(k + stride + groups)
    module = _conv_module(rng, 4, 4, k, stride, groups)
    x = rng.normal(0, 1, (1, 4, 7, 6))  # odd height: PyTorch pads both sides where TF's SAME would not
    got = _Builder(tf).conv(module)(tf.constant(_nhwc(x))).numpy()
    np.testing.assert_allclose(got, _nhwc(_conv_reference(x, module)), atol=1e-4)


def test_position_sensitive_attention_matches_pytorch():
    """Ultralytics' Attention: qkv viewed per head over H*W positions, softmax over keys, plus a depthwise conv of v."""
    import tensorflow as tf

    from modeling.yolo_pose import _Builder

    rng = np.random.default_rng(7)
    dim, heads = 8, 2
    head_dim, key_dim = dim // heads, dim // heads // 2
    module = _module("Attention", {"qkv": _conv_module(rng, dim, dim + 2 * key_dim * heads, 1, act="Identity"),
                                   "proj": _conv_module(rng, dim, dim, 1, act="Identity"),
                                   "pe": _conv_module(rng, dim, dim, 3, groups=dim, act="Identity")},
                     num_heads=heads, key_dim=key_dim, head_dim=head_dim, scale=key_dim ** -0.5)
    x = rng.normal(0, 1, (2, dim, 3, 4))
    b, c, h, w = x.shape
    qkv = _conv_reference(x, module.child("qkv")).reshape(b, heads, 2 * key_dim + head_dim, h * w)
    q, k, v = qkv[:, :, :key_dim], qkv[:, :, key_dim:2 * key_dim], qkv[:, :, 2 * key_dim:]
    attn = (q.transpose(0, 1, 3, 2) @ k) * key_dim ** -0.5
    attn = np.exp(attn - attn.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (v @ attn.transpose(0, 1, 3, 2)).reshape(b, c, h, w) + _conv_reference(v.reshape(b, c, h, w), module.child("pe"))
    expected = _conv_reference(out, module.child("proj"))
    got = _Builder(tf).block(module)(tf.constant(_nhwc(x))).numpy()
    np.testing.assert_allclose(got, _nhwc(expected), atol=1e-4)


def test_unknown_layers_are_refused_by_name():
    import tensorflow as tf

    from modeling.yolo_pose import _Builder

    with pytest.raises(CheckpointError, match=r"layer torch.nn.Mystery is not supported"):
        _Builder(tf).block(_module("Mystery"))
