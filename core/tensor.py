"""Tensor = Buffer + shape + strides + offset. No math: kernels do that on `.native`."""
from __future__ import annotations

from math import prod

import numpy as np

from .device import Buffer
from .errors import DeviceError


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= s
    return tuple(reversed(strides))


class Tensor:
    __slots__ = ("buffer", "shape", "strides", "offset", "_native")

    def __init__(self, buffer: Buffer, shape, strides=None, offset: int = 0):
        self.buffer = buffer
        self.shape = tuple(shape)
        self.strides = tuple(strides) if strides is not None else contiguous_strides(self.shape)
        self.offset = offset
        self._native = None

    @property
    def dtype(self) -> str:
        return self.buffer.dtype

    @property
    def native(self):
        """The backend's array object viewing exactly this tensor (created once, then cached)."""
        if self._native is None:
            self._native = self.buffer.allocator._view(self.buffer.native, self.offset,
                                                      self.shape, self.strides)
        return self._native

    def is_contiguous(self) -> bool:
        return self.strides == contiguous_strides(self.shape)

    def view(self, *shape) -> "Tensor":
        """Reinterpret a contiguous tensor with another shape of the same size."""
        if prod(shape) != prod(self.shape) or not self.is_contiguous():
            raise DeviceError(f"cannot view {self.shape} as {shape}")
        return Tensor(self.buffer, shape, None, self.offset)

    def narrow(self, dim: int, start: int, length: int) -> "Tensor":
        """Elements start .. start+length-1 along dim, sharing memory."""
        dim %= len(self.shape)
        if start < 0 or start + length > self.shape[dim]:
            raise DeviceError(f"narrow({dim}, {start}, {length}) out of range for {self.shape}")
        shape = list(self.shape)
        shape[dim] = length
        return Tensor(self.buffer, shape, self.strides, self.offset + start * self.strides[dim])

    def split_last(self, *sizes) -> list["Tensor"]:
        """Views of consecutive column blocks of the last dim, e.g. q, k, v of a fused qkv."""
        out, start = [], 0
        for size in sizes:
            out.append(self.narrow(-1, start, size))
            start += size
        return out

    def numpy(self) -> np.ndarray:
        return self.buffer.allocator.copyout(self.native, self.dtype)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"
