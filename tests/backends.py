"""The `backend` fixture: one Device per backend in the registry, so a new plugin gets the
whole suite for free.

Every registered backend is a parameter; one whose probe says it is unavailable shows as a
skip with the probe's reason, and a plugin that failed to load fails with its error.
POLYLLAMA_TEST_DEVICES=cpu:torch,cuda:triton runs only the listed device specs; each of
those must then work, so an unavailable one fails instead of skipping.
"""
from __future__ import annotations

import os

import pytest

from polyllama import get_device, get_registry


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
