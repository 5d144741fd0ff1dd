"""A three-op self-test of a device against the numpy reference (for `polyllama devices`)."""
from __future__ import annotations

import numpy as np

from . import reference
from .ops import DENSE, Weight
from .registry import get_device, get_registry


def smoke_test(spec: str) -> str:
    """'passed' or 'FAILED: why' for rmsnorm, linear and add on small random inputs."""
    try:
        dev = get_device(spec)
        reg = get_registry()
        k = {op: reg.kernel(dev.backend_id, op) for op in ("rmsnorm", "linear", "add")}
        rng = np.random.default_rng(0)
        x, w, m = (rng.standard_normal(s).astype(np.float32) for s in ((3, 40), (40,), (24, 40)))
        dtype = dev.default_dtype
        dx, dw, out, lin = dev.upload(x, dtype), dev.upload(w, dtype), dev.empty((3, 40), dtype), \
            dev.empty((3, 24), dtype)
        k["rmsnorm"](out.native, dx.native, dw.native, 1e-5)
        k["linear"](lin.native, dx.native, Weight(DENSE, (24, 40), {"w": dev.upload(m, dtype).native}))
        k["add"](out.native, out.native, dx.native)
        dev.synchronize()
        want = [reference.add(reference.rmsnorm(x, w, 1e-5), x), reference.linear(x, m)]
        tol = 1e-4 if dtype == "float32" else 3e-2
        for got, ref in zip((out.numpy(), lin.numpy()), want):
            err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            if not err < tol:
                return f"FAILED: relative error {err:.2e} > {tol}"
        return "passed"
    except Exception as e:                 # report, never crash the listing
        return f"FAILED: {type(e).__name__}: {e}"
