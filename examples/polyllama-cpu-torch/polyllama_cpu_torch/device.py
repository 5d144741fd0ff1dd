"""TorchDevice: buffers are CPU torch tensors; every op runs synchronously."""
from __future__ import annotations

import os

import numpy as np
import torch

from polyllama import Allocator, Device

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int32": torch.int32, "int64": torch.int64, "int8": torch.int8,
                "uint8": torch.uint8}


class TorchAllocator(Allocator):
    def _alloc(self, numel, dtype):
        return torch.empty(numel, dtype=TORCH_DTYPES[dtype])

    def _copyin(self, native, host):
        if native.dtype == torch.bfloat16:              # numpy has no bfloat16: go via float32
            native.copy_(torch.from_numpy(host.astype(np.float32)))
        else:                                           # numpy converts into the shared memory
            native.numpy()[...] = host

    def _copyout(self, native, dtype):
        t = native.float() if native.is_floating_point() else native
        return np.array(t.numpy())

    def _view(self, native, offset, shape, strides):
        return torch.as_strided(native, shape, strides, offset)


class TorchDevice(Device):
    default_dtype = "float32"
    supported_dtypes = ("float32", "bfloat16")

    def make_allocator(self):
        return TorchAllocator()

    def name(self):
        return (f"host CPU ({os.cpu_count()} cores), torch {torch.__version__} "
                f"with {torch.get_num_threads()} threads")
