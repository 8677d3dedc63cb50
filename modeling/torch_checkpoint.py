"""Read a PyTorch checkpoint (`.pt`, zip format) into numpy, without PyTorch and without running its code.

A `.pt` file is a zip: `data.pkl` pickles the module tree (ultralytics' models pickle whole module
objects), and each tensor's bytes lie in `data/<key>`. PyTorch itself is a 700 MB+ install (several
GB with the CUDA libraries PyPI's wheel pulls in), and unpickling with it would run whatever
callables the file names. This reader allows a short list of harmless callables (containers, the
tensor and parameter rebuilders); every other class the pickle names becomes a `PickledObject`
that only records its name and state. Tensors become numpy arrays.

Every number the file gives about memory is checked before numpy sees it: each storage entry's byte
length against the element count the pickle declares, and each tensor's offset, sizes and strides
against its storage (a crafted file could otherwise make numpy read outside the storage's buffer).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {"HalfStorage": np.float16, "FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64,
                   "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_SAFE_BUILTINS = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set, ("__builtin__", "set"): set,
                  ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice}
# numpy 1.x's limit; a model's tensors have four dimensions at most.
_MAX_DIMS = 32
# Sizes and strides beyond this are never real (2**48 elements is 256 TiB of bytes).
_MAX_EXTENT = 1 << 48
# A tensor may hold more elements than its storage only where a stride is 0 (an expanded tensor);
# the copy made of one is capped so that a crafted size cannot ask for unbounded memory.
_MAX_EXPANDED_BYTES = 1 << 30


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


class _Storage:
    """One storage of the archive: its key under data/ and its elements (1-D, read-only)."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key = key
        self.data = data

    def __repr__(self) -> str:
        return f"<storage {self.key} ({self.data.size} x {self.data.dtype})>"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_EXTENT


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Any:
    """A tensor as numpy, after checking that its offset, sizes and strides stay inside its storage."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"a tensor's storage is {type(storage).__name__}, not tensor data from the archive")
    data = storage.data
    where = f"tensor on storage {storage.key!r} ({data.size} elements of {data.dtype})"
    if not _is_count(offset):
        raise CheckpointError(f"{where}: storage offset {offset!r} is not an integer in 0..{_MAX_EXTENT}")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise CheckpointError(f"{where}: size {size!r} and stride {stride!r} are not sequences")
    if len(size) > _MAX_DIMS or len(size) != len(stride):
        raise CheckpointError(f"{where}: {len(size)} sizes and {len(stride)} strides (at most {_MAX_DIMS} dimensions, one stride each)")
    if not all(_is_count(n) for n in size) or not all(_is_count(s) for s in stride):
        raise CheckpointError(f"{where}: size {tuple(size)!r} or stride {tuple(stride)!r} holds something other than integers in 0..{_MAX_EXTENT}")
    shape, steps = tuple(size), tuple(stride)
    numel = math.prod(shape)
    if numel == 0:
        if offset > data.size:
            raise CheckpointError(f"{where}: storage offset {offset} lies past the storage's end")
        if math.prod(n for n in shape if n) > _MAX_EXTENT:
            raise CheckpointError(f"{where}: size {shape} is larger than any array")
        return np.zeros(shape, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, steps, strict=True))
    if last >= data.size:
        raise CheckpointError(f"{where}: size {shape} with stride {steps} from offset {offset} reaches element {last}, "
                              f"past the storage's last element {data.size - 1}")
    if numel * data.itemsize > max(data.nbytes, _MAX_EXPANDED_BYTES):
        raise CheckpointError(f"{where}: size {shape} with stride {steps} repeats its storage into {numel} elements, more than this reader copies")
    if not shape:
        return data[offset].copy()
    byte_strides = tuple(s * data.itemsize if n > 1 else 0 for n, s in zip(shape, steps, strict=True))
    return np.lib.stride_tricks.as_strided(data[offset:], shape=shape, strides=byte_strides, writeable=False).copy()


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

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str):
            raise CheckpointError(f"tensor storage key {key!r} is not a string")
        if not _is_count(numel):
            raise CheckpointError(f"tensor data {key}: element count {numel!r} is not an integer in 0..{_MAX_EXTENT}")
        name = f"{self.prefix}/data/{key}"
        try:
            entry = self.archive.getinfo(name)
        except KeyError as exc:
            raise CheckpointError(f"tensor data {key} is missing from the archive") from exc
        itemsize = np.dtype(storage_type.dtype).itemsize
        if entry.file_size != numel * itemsize:
            raise CheckpointError(f"tensor data {key}: the archive holds {entry.file_size} bytes, the checkpoint declares {numel} elements "
                                  f"of {np.dtype(storage_type.dtype)} ({numel * itemsize} bytes)")
        try:
            raw = self.archive.read(entry)  # zipfile checks the length and CRC it reads against the entry's
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError) as exc:
            raise CheckpointError(f"tensor data {key} cannot be read from the archive: {exc}") from exc
        return _Storage(key, np.frombuffer(raw, dtype=storage_type.dtype))


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
