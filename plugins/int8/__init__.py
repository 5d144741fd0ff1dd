"""int8 — group-wise symmetric int8 weights (weight format q8_0) and their cpu:numpy kernel.

Other backends run `--quant int8` by registering their own ("<backend>", "linear", "q8_0")
kernel; the packed layout they read is described in pack.py.
"""
from polyllama import hookimpl

from .pack import FMT, pack


@hookimpl
def register_quant_schemes(register):
    register(name="int8", fmt=FMT, pack=pack,
             description="group-wise symmetric int8 along each row (groups of 64 or 32)")


@hookimpl
def register_kernels(register):
    register("cpu_numpy", "linear", "polyllama.plugins.int8.numpy_kernels:linear", fmt=FMT)
