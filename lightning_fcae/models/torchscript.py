"""The tensors of a TorchScript archive, read without running anything the archive holds.

OpenAI published its CLIP weights as TorchScript archives (``ViT-B-32.pt``). ``torch.load(weights_only=
True)`` refuses them, and the two ways that read them are not safe on a file from elsewhere:
``torch.load(weights_only=False)`` unpickles arbitrary Python callables, and ``torch.jit.load`` (what
open_clip's ``load_openai_model`` calls) compiles the archive's TorchScript code and can run it while
loading (its own ``__setstate__`` methods, for one; PyTorch's SECURITY.md says to treat TorchScript
models like executable code, and its maintainers: "there is no safe mode for jit.load").

A TorchScript archive is a zip: ``<name>/data.pkl`` (the module tree as a pickle), ``<name>/data/<k>``
(raw tensor storages), ``<name>/code/`` (TorchScript source). :func:`read_torchscript_tensors` reads
``data.pkl`` with an unpickler that resolves only tensor rebuilding, storage types and ``OrderedDict``;
every TorchScript class becomes an inert record of its attributes, ``code/`` is never read, and any
other global is an :class:`UnsafeArchiveError`. What it returns is the module tree's tensors by dotted
name, as ``torch.jit.load(path).state_dict()`` names them (plus tensor attributes that are neither
parameters nor buffers, which the caller filters by the keys its model expects).
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

# storage classes a TorchScript pickle names (``torch.FloatStorage`` ...) and their element types
STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class UnsafeArchiveError(pickle.UnpicklingError):
    """The archive's pickle names something other than tensors and TorchScript objects."""


class ScriptObject:
    """A TorchScript object as data: its pickled attributes, nothing of its code."""

    def __setstate__(self, state) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:  # a class with its own __getstate__: kept as it is, never interpreted
            self.__dict__["__state__"] = state


def is_torchscript_archive(path: str | Path) -> bool:
    """A zip with ``<name>/data.pkl`` and ``<name>/code/``: what ``torch.jit.save`` writes
    (``torch.save`` writes ``data.pkl`` without ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size, stride, requires_grad=False, *_
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` on a flat tensor standing for the storage."""
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return ScriptObject
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise UnsafeArchiveError(
            f"the archive's pickle names {module}.{name}, which is not read (only tensors)"
        )

    def persistent_load(self, pid) -> torch.Tensor:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or storage_type not in STORAGE_DTYPES:
            raise UnsafeArchiveError(f"unknown storage reference {pid!r}")
        data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        dtype = STORAGE_DTYPES[storage_type]
        return torch.frombuffer(data, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a TorchScript archive's module tree, by dotted attribute name, on CPU."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise UnsafeArchiveError(f"{path}: no <name>/data.pkl, not a TorchScript archive")
        prefix = pickles[0].rsplit("/", 1)[0]
        with archive.open(pickles[0]) as handle:
            root = _Unpickler(handle, archive, prefix).load()
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors)
    return tensors


def _collect(node, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(node, torch.Tensor):
        out[prefix.rstrip(".")] = node
    elif isinstance(node, ScriptObject):
        for name, value in vars(node).items():
            _collect(value, f"{prefix}{name}.", out)
