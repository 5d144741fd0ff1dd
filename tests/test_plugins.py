"""Plugin discovery with nothing installed: importlib.metadata's entry points are faked with
stubs that hand out in-memory plugin modules, and the registry is rebuilt for every test.

The stub backends reuse cpu:numpy's device and kernels under other names, so a stub that
loads is a working backend.
"""
from __future__ import annotations

import logging
import types

import numpy as np
import pytest

from polyllama import (Checkpoint, DeviceError, DeviceSpec, KernelNotFoundError, LlamaConfig,
                       hookimpl, registry)
from polyllama.checkpoint import expected_shapes
from polyllama.cli import main as cli_main
from polyllama.model import Model
from polyllama.ops import REQUIRED_OPS
from polyllama.registry import ENTRY_POINT_GROUP, get_device, get_registry, reset_registry

NUMPY_DEVICE = "polyllama.plugins.cpu_numpy.device:NumpyDevice"
NUMPY_KERNELS = "polyllama.plugins.cpu_numpy.kernels"


class StubEntryPoint:
    """What registry code reads of an importlib.metadata.EntryPoint: name, dist, load()."""

    def __init__(self, name, target):
        self.name = name
        self.dist = types.SimpleNamespace(name=f"polyllama-{name}", version="1.2.3")
        self.target = target

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


def plugin_module(name, **hooks):
    """An in-memory plugin module with the given hook implementations."""
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))
    return module


def backend_plugin(impl, probe=lambda: None, priority=0, ops=REQUIRED_OPS):
    """A plugin registering backend cpu:<impl> with cpu:numpy's device and kernels."""
    bid = f"cpu_{impl}"

    def register_backends(register):
        register(id=bid, kind="cpu", impl=impl, device_class=NUMPY_DEVICE, probe=probe,
                 priority=priority)

    def register_kernels(register):
        for op in ops:
            register(bid, op, f"{NUMPY_KERNELS}:{op}")

    return plugin_module(f"stub_{bid}", register_backends=register_backends,
                         register_kernels=register_kernels)


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """No allowlist from the environment, and no registry state leaking in or out."""
    monkeypatch.delenv("POLYLLAMA_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def install(monkeypatch):
    """install(name=module_or_exception, ...): the entry points the registry will find."""
    def install(**targets):
        eps = [StubEntryPoint(name, target) for name, target in targets.items()]
        monkeypatch.setattr(registry, "entry_points",
                            lambda group: [ep for ep in eps if group == ENTRY_POINT_GROUP])
        reset_registry()
    return install


# ---------------------------------------------------------------- allowlist


@pytest.mark.parametrize("env,loaded", [
    (None, {"cpu_alpha", "cpu_beta"}),
    ("", set()),
    ("cpu_beta", {"cpu_beta"}),
    (" cpu_alpha , ", {"cpu_alpha"}),
], ids=["unset", "empty", "one", "spaces"])
def test_allowlist(monkeypatch, install, env, loaded):
    install(cpu_alpha=backend_plugin("alpha"), cpu_beta=backend_plugin("beta"))
    if env is not None:
        monkeypatch.setenv("POLYLLAMA_PLUGINS", env)
    reg = get_registry()
    assert {name for name, _ in reg.pm.list_name_plugin()} == loaded
    assert set(reg.backends) == loaded
    if not loaded:
        with pytest.raises(DeviceError, match="unknown device 'auto'"):
            get_device("auto")


def test_unknown_allowlist_name_warns(monkeypatch, install, caplog):
    install(cpu_alpha=backend_plugin("alpha"))
    monkeypatch.setenv("POLYLLAMA_PLUGINS", "cpu_alpha,cpu_alpah")
    with caplog.at_level(logging.WARNING, logger="polyllama"):
        reg = get_registry()
    assert set(reg.backends) == {"cpu_alpha"}
    assert "'cpu_alpah'" in caplog.text and "did you mean 'cpu_alpha'" in caplog.text


# ---------------------------------------------------------------- broken plugins


def test_plugin_whose_import_raises(install, caplog, capsys):
    install(cpu_alpha=backend_plugin("alpha"),
            cpu_broken=ModuleNotFoundError("No module named 'frobnicate'"))
    with caplog.at_level(logging.WARNING, logger="polyllama"):
        reg = get_registry()
    assert "cpu_broken" in caplog.text and "frobnicate" in caplog.text
    assert "ModuleNotFoundError" in reg.failures["cpu_broken"]
    rows = {spec: (version, reason) for spec, version, _, reason in reg.device_table()}
    assert rows["cpu:alpha"] == ("polyllama-cpu_alpha 1.2.3", None)
    version, reason = rows["cpu:broken"]
    assert version == "polyllama-cpu_broken 1.2.3"
    assert reason.startswith("plugin failed to load") and "frobnicate" in reason

    assert get_device("cpu:alpha").backend_id == "cpu_alpha"           # the others still work
    with pytest.raises(DeviceError, match="failed to load.*frobnicate"):
        get_device("cpu:broken")

    assert cli_main(["devices"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "available; smoke test passed" in lines["cpu:alpha"]
    assert "unavailable: plugin failed to load" in lines["cpu:broken"]
    assert "frobnicate" in lines["cpu:broken"]


def test_plugin_failing_midway_leaves_nothing(install):
    def register_kernels(register):
        register("cpu_half", "rmsnorm", f"{NUMPY_KERNELS}:rmsnorm")
        raise RuntimeError("kernel table is corrupt")

    def register_backends(register):
        register(id="cpu_half", kind="cpu", impl="half", device_class=NUMPY_DEVICE,
                 probe=lambda: None)

    install(cpu_half=plugin_module("stub_half", register_backends=register_backends,
                                   register_kernels=register_kernels),
            cpu_alpha=backend_plugin("alpha"))
    reg = get_registry()
    assert "kernel table is corrupt" in reg.failures["cpu_half"]
    assert "cpu_half" not in reg.backends and not reg.has_kernel("cpu_half", "rmsnorm")
    assert "cpu_half" not in dict(reg.pm.list_name_plugin())
    assert "cpu_alpha" in reg.backends


def test_misspelled_hook_is_an_error(install):
    install(cpu_typo=plugin_module("stub_typo", register_backend=lambda register: None))
    assert "register_backend" in get_registry().failures["cpu_typo"]


def test_duplicate_backend_id_names_both_plugins(install):
    install(cpu_alpha=backend_plugin("alpha"), alpha_fork=backend_plugin("alpha"))
    reg = get_registry()
    err = reg.failures["alpha_fork"]
    assert "'cpu_alpha'" in err and "'alpha_fork'" in err and "both" in err
    assert reg.backends["cpu_alpha"].plugin == "cpu_alpha"


def test_unknown_op_suggests_the_right_name(install):
    def register_kernels(register):
        register("cpu_alpha", "rmsnrom", f"{NUMPY_KERNELS}:rmsnorm")

    install(cpu_alpha=backend_plugin("alpha"),
            sloppy=plugin_module("stub_sloppy", register_kernels=register_kernels))
    err = get_registry().failures["sloppy"]
    assert "'rmsnrom'" in err and "did you mean 'rmsnorm'" in err


def test_probe_that_raises_is_reported_not_fatal(install):
    def probe():
        raise RuntimeError("driver exploded")

    install(cpu_alpha=backend_plugin("alpha"), cpu_flaky=backend_plugin("flaky", probe=probe))
    rows = {spec: reason for spec, _, _, reason in get_registry().device_table()}
    assert rows["cpu:flaky"] == "availability probe failed: RuntimeError: driver exploded"
    assert rows["cpu:alpha"] is None


# ---------------------------------------------------------------- device requests


def test_explicit_unavailable_device_lists_specs_and_reasons(install):
    install(cpu_alpha=backend_plugin("alpha"),
            cpu_frob=backend_plugin("frob", probe=lambda: "no frobnicator: pip install frob"),
            cpu_beta=backend_plugin("beta", probe=lambda: "needs a beta licence"))
    with pytest.raises(DeviceError) as e:
        get_device("cpu:frob")
    msg = str(e.value)
    assert "'cpu:frob' is unavailable" in msg and "no frobnicator: pip install frob" in msg
    for spec in ("cpu:alpha", "cpu:beta", "cpu:frob"):
        assert spec in msg
    assert "needs a beta licence" in msg


def test_bare_kind_and_auto_pick_the_best_available(install):
    install(cpu_low=backend_plugin("low", priority=1), cpu_high=backend_plugin("high", priority=9),
            cpu_top=backend_plugin("top", priority=99, probe=lambda: "not here"))
    assert get_device("cpu").backend_id == "cpu_high"
    assert get_device("auto").backend_id == "cpu_high"
    assert get_device("cpu:low").backend_id == "cpu_low"


def test_unknown_device_suggests_a_spec(install):
    install(cpu_alpha=backend_plugin("alpha"))
    with pytest.raises(DeviceError, match=r"unknown device 'cpu:alpah' \(did you mean "
                                          r"'cpu:alpha'\?\)(.|\n)*Known devices"):
        get_device("cpu:alpah")


@pytest.mark.parametrize("text,spec", [
    ("cpu", DeviceSpec("cpu")),
    ("cuda", DeviceSpec("cuda")),
    ("cuda:0", DeviceSpec("cuda", None, 0)),
    ("cuda:triton", DeviceSpec("cuda", "triton")),
    ("cuda:triton:1", DeviceSpec("cuda", "triton", 1)),
    (" CUDA:Triton:1 ", DeviceSpec("cuda", "triton", 1)),
    ("auto", DeviceSpec("auto")),
])
def test_device_spec_parse(text, spec):
    assert DeviceSpec.parse(text) == spec
    assert DeviceSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["", ":", "cuda:", "cuda::1", "cuda:triton:x",
                                  "cuda:triton:1:2", "cuda:0:1"])
def test_device_spec_malformed(text):
    with pytest.raises(DeviceError, match="malformed device spec"):
        DeviceSpec.parse(text)


# ---------------------------------------------------------------- kernels


def test_missing_kernel_names_backend_op_and_format(install):
    install(cpu_alpha=backend_plugin("alpha", ops=("rmsnorm", "add")))
    with pytest.raises(KernelNotFoundError) as e:
        get_registry().kernel("cpu_alpha", "linear", "q4_0")
    msg = str(e.value)
    assert "'cpu_alpha'" in msg and "'linear'" in msg and "'q4_0'" in msg
    assert "add/dense" in msg and "rmsnorm/dense" in msg


def test_model_build_with_a_format_no_kernel_handles(install):
    def register_quant_schemes(register):
        register(name="fake4", fmt="f4", pack=lambda w: ({"w": np.asarray(w)}, {}))

    install(cpu_alpha=backend_plugin("alpha"),
            fake4=plugin_module("stub_fake4", register_quant_schemes=register_quant_schemes))
    c = LlamaConfig(dim=16, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                    vocab_size=10, max_seq_len=8).validated()
    tensors = {n: np.ones(s, dtype=np.float32) for n, s in expected_shapes(c).items()}
    ckpt = Checkpoint(c, tensors, "test", "<memory>").validate()
    with pytest.raises(KernelNotFoundError, match=r"backend='cpu_alpha', op='linear', "
                                                  r"weight format='f4'"):
        Model.build(ckpt, get_device("cpu:alpha"), quant="fake4")
