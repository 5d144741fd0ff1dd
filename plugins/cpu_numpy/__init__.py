"""cpu:numpy — the built-in backend that needs nothing but numpy, so a bare install runs."""
from polyllama import hookimpl

KERNELS = "polyllama.plugins.cpu_numpy.kernels"
OPS = ("embedding", "rmsnorm", "linear", "rope", "attention", "silu_mul", "add", "argmax",
       "linear_add")


@hookimpl
def register_backends(register):
    register(id="cpu_numpy", kind="cpu", impl="numpy", priority=10, probe=lambda: None,
             device_class="polyllama.plugins.cpu_numpy.device:NumpyDevice",
             description="vectorized numpy on the host CPU (float32)")


@hookimpl
def register_kernels(register):
    for op in OPS:
        register("cpu_numpy", op, f"{KERNELS}:{op}")
