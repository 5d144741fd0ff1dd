"""Device specs, the abstract Device, and the Allocator that owns buffer policy.

A backend writes a Device subclass with an Allocator subclass that supplies only
_alloc/_copyin/_copyout/_view; error checks and messages live here, written once.
"""
from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from math import prod

import numpy as np

from .errors import DeviceError

DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "int8": 1,
               "uint8": 1}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
                 "half": "float16", "bf16": "bfloat16"}


def canonical_dtype(name: str) -> str:
    name = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if name not in DTYPE_SIZES:
        raise DeviceError(f"unknown dtype {name!r}; use one of bf16, fp16, fp32")
    return name


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device string `kind[:impl][:index]`, or `auto`. A number is always an index."""
    kind: str
    impl: str | None = None
    index: int | None = None

    @classmethod
    def parse(cls, text: str) -> "DeviceSpec":
        parts = str(text).strip().lower().split(":")
        if not parts[0] or len(parts) > 3 or any(not p for p in parts):
            raise DeviceError(f"malformed device spec {text!r}: use TYPE[:BACKEND][:INDEX], "
                              "e.g. cpu:numpy, cuda:triton, cuda:triton:1, cuda, auto")
        kind, rest = parts[0], parts[1:]
        impl = index = None
        if rest and not rest[0].isdigit():
            impl, rest = rest[0], rest[1:]
        if rest:
            if not rest[0].isdigit() or len(rest) > 1:
                raise DeviceError(f"malformed device spec {text!r}: the last part must be a "
                                  "device index like 0 or 1")
            index = int(rest[0])
        return cls(kind, impl, index)

    def __str__(self) -> str:
        return ":".join(str(p) for p in (self.kind, self.impl, self.index) if p is not None)


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Buffer:
    """Raw memory owned by a backend: `native` is its array object (numpy, torch, cupy)."""
    __slots__ = ("allocator", "native", "dtype", "numel")

    def __init__(self, allocator: "Allocator", native, dtype: str, numel: int):
        self.allocator, self.native, self.dtype, self.numel = allocator, native, dtype, numel

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]


class Allocator(ABC):
    """Public methods check arguments and phrase errors; backends implement the _methods."""

    def alloc(self, numel: int, dtype: str) -> Buffer:
        dtype = canonical_dtype(dtype)
        if numel < 0:
            raise DeviceError(f"cannot allocate {numel} elements")
        try:
            native = self._alloc(numel, dtype)
        except MemoryError as e:
            raise DeviceError(f"out of memory allocating {numel * DTYPE_SIZES[dtype] / 2**20:.1f}"
                              f" MiB of {dtype}: {e}") from e
        return Buffer(self, native, dtype, numel)

    def copyin(self, tensor, host) -> None:
        """Copy a host array into a tensor (same number of elements), converting dtype."""
        host = np.asarray(host)
        if host.size != prod(tensor.shape):
            raise DeviceError(f"copy of {host.size} elements into a tensor of shape "
                              f"{tensor.shape}")
        self._copyin(tensor.native, np.ascontiguousarray(host).reshape(tensor.shape))

    def share(self, host: np.ndarray, dtype: str) -> Buffer | None:
        """A Buffer over host's own memory, or None where the backend must copy."""
        native = self._share(host, dtype)
        return None if native is None else Buffer(self, native, dtype, host.size)

    def _share(self, host: np.ndarray, dtype: str):
        """host as a 1-D native array without copying, or None (the default: copy)."""
        return None

    def copyout(self, native, dtype: str) -> np.ndarray:
        return self._copyout(native, dtype)

    @abstractmethod
    def _alloc(self, numel: int, dtype: str):
        """A new 1-D native array of numel elements of dtype (contents undefined)."""

    @abstractmethod
    def _copyin(self, native, host: np.ndarray) -> None:
        """Copy a contiguous host array of native's shape into native, converting dtype
        (host floats are float32 or float16; ints keep their dtype)."""

    @abstractmethod
    def _copyout(self, native, dtype: str) -> np.ndarray:
        """A host numpy copy of a native view (bf16 comes back as float32)."""

    @abstractmethod
    def _view(self, native, offset: int, shape: tuple, strides: tuple):
        """A native view of the 1-D native array (offset and strides counted in elements)."""


class Device(ABC):
    """One backend instance on one physical device."""
    backend_id: str = ""
    default_dtype: str = "float32"        # the compute dtype used when the user names none
    supported_dtypes: tuple[str, ...] = ("float32",)
    asynchronous: bool = False            # kernels are queued: the host may run a step ahead

    def __init__(self, spec: DeviceSpec, index: int):
        self.spec, self.index = spec, index
        self.allocator = self.make_allocator()

    @abstractmethod
    def make_allocator(self) -> Allocator: ...

    def name(self) -> str:
        """Human description, e.g. 'NVIDIA H100 80GB HBM3'."""
        return str(self.spec)

    def synchronize(self) -> None:
        """Wait for queued work (no-op on synchronous backends)."""

    def memory(self) -> dict:
        """{'used': bytes, 'total': bytes, 'peak': bytes} where known, else {}."""
        return {}

    def reset_peak_memory(self) -> None:
        """Start memory()['peak'] again from what is in use now (e.g. between benchmarks)."""

    def read_async(self, tensor):
        """Start copying a small tensor to the host, once the work queued so far has written
        it; the returned callable waits for the copy and returns it as numpy. Work queued
        after this call may run before the copy (an asynchronous device may copy beside it),
        so it must leave the tensor alone. The default copies at once."""
        value = tensor.numpy()
        return lambda: value

    def decode_runner(self, step):
        """Wrap a decode step (a no-argument callable) for fast replay, e.g. a CUDA graph.
        The default runs it as is."""
        return step

    def replays(self) -> bool:
        """Whether decode_runner records a step once and replays it. The executor then also
        replays prefills, padded to a few fixed lengths: a replay costs the host one launch
        instead of one per kernel."""
        return False

    # -- conveniences written once in terms of the allocator
    def empty(self, shape, dtype: str | None = None):
        from .tensor import Tensor
        shape = tuple(int(s) for s in shape)
        buf = self.allocator.alloc(prod(shape), dtype or self.default_dtype)
        return Tensor(buf, shape)

    def upload(self, host, dtype: str | None = None, share: bool = False):
        """A device tensor holding host's values in dtype. share=True (read-only data the
        caller never changes, such as weights) lets a backend that computes on host memory
        keep host itself, so a memory-mapped checkpoint is neither copied nor read twice."""
        host = np.asarray(host)
        if dtype is None:
            dtype = host.dtype.name if host.dtype.kind in "iu" else self.default_dtype
        if share:
            buf = self.allocator.share(host, canonical_dtype(dtype))
            if buf is not None:
                from .tensor import Tensor
                return Tensor(buf, host.shape)
        t = self.empty(host.shape, dtype)
        self.allocator.copyin(t, host)
        return t
