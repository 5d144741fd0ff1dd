"""cuda:triton — every op a Triton kernel on torch CUDA memory; decode as one CUDA graph."""
import importlib.util

from polyllama import hookimpl
from polyllama.plugins.int8.pack import FMT as Q8_0

PKG = "polyllama.plugins.cuda_triton"
KERNELS = {
    "embedding": "kernels", "rmsnorm": "kernels", "rope": "kernels", "silu_mul": "kernels",
    "add": "kernels", "argmax": "sampling", "attention": "attention", "linear": "linear",
    "rmsnorm_linear": "linear", "linear_add": "linear", "rmsnorm_linear_rope": "linear",
    "rmsnorm_swiglu": "linear", "rmsnorm_linear_argmax": "linear",
    "linear_add_ffn": "ffn", "sample": "sampling", "advance": "kernels",
}
FIX = "pip install 'polyllama[cuda-triton]'"


def probe():
    """None when torch with CUDA, triton and a GPU are present, else why not and the fix."""
    for module in ("torch", "triton"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {FIX}"
    import torch
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA: install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (check the driver and CUDA_VISIBLE_DEVICES)"
    return None


@hookimpl
def register_backends(register):
    register(id="cuda_triton", kind="cuda", impl="triton", priority=100, probe=probe,
             device_class=f"{PKG}.device:TritonDevice",
             description="Triton kernels on torch CUDA memory, decode as a CUDA graph")


@hookimpl
def register_kernels(register):
    for op, module in KERNELS.items():
        register("cuda_triton", op, f"{PKG}.{module}:{op}")
        if module == "linear":          # the linear family also takes q8_0 (--quant int8)
            register("cuda_triton", op, f"{PKG}.{module}:{op}", fmt=Q8_0)
