"""Kernel launches with programmatic dependent launch (PDL), which CuPy's own launch cannot ask
for: cuLaunchKernelEx through ctypes. A kernel so launched may start while the one before it
drains; it waits in pdl_start (common.cuh) before it reads that kernel's results, so what it
does first (loading its weights) overlaps the kernel before."""
from __future__ import annotations

import ctypes
import functools

import cupy
import numpy as np

PROGRAMMATIC_STREAM_SERIALIZATION = 6            # CUlaunchAttributeID


class _Attribute(ctypes.Structure):             # CUlaunchAttribute
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4),
                ("value", ctypes.c_int * 16)]    # CUlaunchAttributeValue, a 64-byte union


class _Config(ctypes.Structure):                # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float}


@functools.lru_cache(maxsize=None)
def _launch_kernel_ex():
    fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                   ctypes.c_void_p]
    return fn


def _value(arg):
    if isinstance(arg, cupy.ndarray):
        return ctypes.c_void_p(arg.data.ptr)
    return _CTYPES[arg.dtype](arg)


def launch_pdl(function, grid, block: int, args, stream) -> None:
    """function(grid, block, args) on stream, allowed to start before the kernel before it
    ends. args are CuPy arrays and NumPy scalars, as CuPy's own launch takes them."""
    values = [_value(a) for a in args]
    params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
    attr = _Attribute(id=PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1
    grid = tuple(grid) + (1,) * (3 - len(grid))
    config = _Config((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(block, 1, 1), 0,
                     stream.ptr, ctypes.pointer(attr), 1)
    handle = function.kernel.ptr          # a RawKernel's CUfunction
    err = _launch_kernel_ex()(ctypes.byref(config), handle, params, None)
    if err:
        raise RuntimeError(f"cuLaunchKernelEx failed (CUresult {err})")
