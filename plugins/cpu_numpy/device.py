"""NumpyDevice: buffers are host numpy arrays; every op runs synchronously."""
from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from polyllama import Allocator, Device


class NumpyAllocator(Allocator):
    def _alloc(self, numel, dtype):
        return np.empty(numel, dtype=np.dtype(dtype))

    def _share(self, host, dtype):
        if host.dtype == np.dtype(dtype) and host.flags.c_contiguous:
            return host.reshape(-1)
        return None

    def _copyin(self, native, host):
        native[...] = host

    def _copyout(self, native, dtype):
        return np.array(native, dtype=np.float32 if native.dtype.kind == "f" else native.dtype)

    def _view(self, native, offset, shape, strides):
        item = native.itemsize
        return as_strided(native[offset:], shape, tuple(s * item for s in strides))


class NumpyDevice(Device):
    default_dtype = "float32"
    supported_dtypes = ("float32",)

    def make_allocator(self):
        return NumpyAllocator()

    def name(self):
        return f"host CPU ({os.cpu_count()} cores), numpy {np.__version__}"
