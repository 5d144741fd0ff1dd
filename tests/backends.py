"""Backend-parametrized testing: the `backend`, `dtype` and `rng` fixtures and the helpers
kernel tests share, so a new backend plugin gets every kernel test for free.

Every registered backend is a parameter of `backend`; one whose probe says it is
unavailable shows as a skip with the probe's reason, and a plugin that failed to load fails
with its error. POLYLLAMA_TEST_DEVICES=cpu:torch,cuda:triton runs only the listed device
specs; each of those must then work, so an unavailable one fails instead of skipping.
The helpers go only through the Device/Tensor API and registry.kernel().
"""
from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

from polyllama import get_device, get_registry, reference
from polyllama.ops import DENSE

TOL = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 2e-2}   # relative to the largest |ref|


def backend_params() -> list:
    wanted = [s.strip() for s in os.environ.get("POLYLLAMA_TEST_DEVICES", "").split(",")]
    if any(wanted):
        return [pytest.param(spec, id=spec) for spec in wanted if spec]
    reg = get_registry()
    params = []
    for b in sorted(reg.backends.values(), key=lambda b: b.spec):
        reason = b.unavailable_reason()
        marks = [pytest.mark.skip(reason=f"{b.spec} unavailable: {reason}")] if reason else []
        params.append(pytest.param(b.spec, id=b.spec, marks=marks))
    for name in sorted(reg.failures):                 # get_device raises the load error
        spec = name.replace("_", ":", 1)
        params.append(pytest.param(spec, id=spec))
    return params


@pytest.fixture(params=backend_params())
def backend(request):
    """The Device of one backend (its spec is `backend.spec`, its id `backend.backend_id`)."""
    return get_device(request.param)


@pytest.fixture(params=sorted(TOL))
def dtype(request, backend):
    """Each compute dtype the backend's device supports."""
    if request.param not in backend.supported_dtypes:
        pytest.skip(f"{backend.spec} does not compute in {request.param}")
    return request.param


@pytest.fixture
def rng():
    """A freshly seeded generator; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("POLYLLAMA_TEST_SEED", secrets.randbits(32)))
    print(f"POLYLLAMA_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def kernel(device, op, fmt=DENSE):
    return get_registry().kernel(device.backend_id, op, fmt)


def upload(device, host, dtype):
    return device.upload(np.asarray(host, dtype=np.float32), dtype)


def poisoned(device, shape, dtype, spare_rows=2):
    """(out, whole): out is the first rows of a NaN-filled buffer (-1 for ints) with
    spare_rows more, so unwritten elements and writes past the end both show."""
    rows = (shape[0] + spare_rows,) + tuple(shape[1:])
    if dtype == "int32":
        whole = device.upload(np.full(rows, -1, dtype=np.int32))
    else:
        whole = upload(device, np.full(rows, np.nan), dtype)
    return whole.narrow(0, 0, shape[0]), whole


def read(device, t) -> np.ndarray:
    device.synchronize()
    return t.numpy()


def check_out(device, out, whole, want, dtype, what):
    """out kept its shape and dtype, every element was written, none past it, values close."""
    native = out.native
    assert tuple(native.shape) == want.shape, f"{what}: out was resized to {native.shape}"
    assert str(native.dtype).endswith(dtype), f"{what}: out has dtype {native.dtype}"
    got, rest = read(device, out), read(device, whole)[want.shape[0]:]
    if dtype == "int32":
        assert (rest == -1).all(), f"{what}: the kernel wrote past the end of out"
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    assert np.isnan(rest).all(), f"{what}: the kernel wrote past the end of out"
    assert not np.isnan(got).any(), f"{what}: {np.isnan(got).sum()} elements never written"
    assert_close(got, want, dtype, what)


def assert_close(got, want, dtype, what):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(), 1e-30),
                               err_msg=what)


def normed_reference(op, x, norm, eps, w):
    """rmsnorm_linear's or rmsnorm_swiglu's result (w: [W1; W3] for the latter)."""
    out = reference.linear(reference.rmsnorm(x, norm, eps), w)
    if op == "rmsnorm_swiglu":
        out = reference.silu_mul(*np.split(out, 2, axis=1))
    return out
