"""cpu:torch — every op of polyllama with PyTorch on the host CPU (float32 or bfloat16).

Only hook implementations live here; torch is imported when the device is opened, so listing
devices stays cheap and works without torch installed.
"""
import importlib.util

from polyllama import hookimpl

BACKEND = "cpu_torch"
KERNELS = "polyllama_cpu_torch.kernels"
OPS = ("embedding", "rmsnorm", "linear", "rope", "attention", "silu_mul", "add", "argmax",
       "linear_add", "rmsnorm_linear_rope", "rmsnorm_linear_argmax")


def probe():
    """None when torch can be imported, else why not and the fix."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed: pip install torch"
    return None


@hookimpl
def register_backends(register):
    register(id=BACKEND, kind="cpu", impl="torch", priority=5, probe=probe,
             device_class="polyllama_cpu_torch.device:TorchDevice",
             description="PyTorch on the host CPU (float32, bfloat16)")


@hookimpl
def register_kernels(register):
    for op in OPS:
        register(BACKEND, op, f"{KERNELS}:{op}")
