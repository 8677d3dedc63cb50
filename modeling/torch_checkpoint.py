"""Read a PyTorch checkpoint (`.pt`, zip format) into numpy, without PyTorch and without running its code.

A `.pt` file is a zip: `data.pkl` pickles the module tree (ultralytics' models pickle whole module
objects), and each tensor's bytes lie in `data/<key>`. PyTorch itself is a 700 MB+ install (several
GB with the CUDA libraries PyPI's wheel pulls in), and unpickling with it would run whatever
callables the file names. This reader allows a short list of harmless callables (containers, the
tensor and parameter rebuilders); every other class the pickle names becomes a `PickledObject`
that only records its name and state. Tensors become numpy arrays.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {"HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64,
                   "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_SAFE_BUILTINS = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set, ("__builtin__", "set"): set,
                  ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice}


class CheckpointError(ValueError):
    """The file is not a PyTorch zip checkpoint this reader understands."""


class PickledObject:
    """A pickled object of a class we do not import: its qualified name, constructor arguments and state."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})

    @property
    def kind(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def child(self, name: str) -> PickledObject:
        """A torch.nn.Module's sub-module."""
        try:
            return self.__dict__["_modules"][name]
        except KeyError as exc:
            raise CheckpointError(f"{self.qualname} has no sub-module {name!r}") from exc

    def children(self) -> list[PickledObject]:
        return list(self.__dict__.get("_modules", {}).values())

    def tensor(self, name: str) -> np.ndarray:
        """A torch.nn.Module's parameter or buffer, as float32 where it is floating point."""
        for table in ("_parameters", "_buffers"):
            value = self.__dict__.get(table, {}).get(name)
            if value is not None:
                return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
        raise CheckpointError(f"{self.qualname} has no parameter or buffer {name!r}")

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


class _StorageType:
    def __init__(self, name: str) -> None:
        if name not in _STORAGE_DTYPES:
            raise CheckpointError(f"tensor storage {name} is not supported")
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    if int(np.prod(size)) == 0:
        return np.zeros(size, storage.dtype)
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=strides).copy()


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[(module, name)]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return type(name, (PickledObject,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        try:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
        except KeyError as exc:
            raise CheckpointError(f"tensor data {key} is missing from the archive") from exc
        return np.frombuffer(raw, dtype=storage_type.dtype)


def read_checkpoint(path: Path) -> Any:
    """The unpickled checkpoint: plain containers, numpy arrays and `PickledObject`s."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint ({exc})") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one */data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0].removesuffix("/data.pkl")
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian tensors are not supported")
        try:
            return _Unpickler(archive.read(pickles[0]), archive, prefix).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read the pickled model: {exc}") from exc
