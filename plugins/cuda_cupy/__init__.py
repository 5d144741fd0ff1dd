"""cuda:cupy — CUDA C kernels through CuPy (NVRTC) and cuBLAS; decode as one CUDA graph.

Only hook implementations live here; CuPy is imported by the probe and when the device is
opened, so listing devices stays cheap and works without it.
"""
import ctypes
import importlib.util
import sys

from polyllama import hookimpl
from polyllama.plugins.int8.pack import FMT as Q8_0

PKG = "polyllama.plugins.cuda_cupy"
OPS = ("embedding", "rmsnorm", "linear", "rope", "attention", "silu_mul", "add", "argmax",
       "linear_add", "rmsnorm_linear", "rmsnorm_swiglu", "rope_attention", "sample", "advance")
Q8_0_OPS = ("linear", "linear_add", "rmsnorm_linear", "rmsnorm_swiglu")     # --quant int8
FIX = "pip install 'polyllama[cuda-cupy]' (cupy-cuda12x; cupy-cuda13x for CUDA 13 drivers)"


def probe():
    """None when CuPy imports and sees a GPU, else why not and the fix."""
    if importlib.util.find_spec("cupy") is None:
        return f"cupy is not installed: {FIX}"
    if sys.platform.startswith("linux"):      # CuPy's own error would blame the driver version
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            return "no NVIDIA driver (libcuda.so.1 cannot be loaded): cuda:cupy needs a CUDA GPU"
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:                 # a driver too old for this CuPy, a broken install
        return f"CuPy cannot reach a GPU ({str(e).splitlines()[0]})"
    if count == 0:
        return "no CUDA GPU visible to CuPy (check the driver and CUDA_VISIBLE_DEVICES)"
    return None


@hookimpl
def register_backends(register):
    register(id="cuda_cupy", kind="cuda", impl="cupy", priority=50, probe=probe,
             device_class=f"{PKG}.device:CupyDevice",
             description="CUDA C kernels through CuPy and cuBLAS, decode as a CUDA graph")


@hookimpl
def register_kernels(register):
    for op in OPS:
        register("cuda_cupy", op, f"{PKG}.kernels:{op}")
    for op in Q8_0_OPS:
        register("cuda_cupy", op, f"{PKG}.kernels:{op}", fmt=Q8_0)
