"""Plugin discovery and the registries of backends, kernels and quantization schemes.

Plugins are modules named by entry points in the group `polyllama` (built-ins included).
Loading is lazy and idempotent. POLYLLAMA_PLUGINS: unset = all, empty = none, else a comma
list of entry-point names. A plugin that fails to import or register is recorded with its
error and skipped; asking for its device later raises that error.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from typing import Callable

import pluggy

from . import hookspecs
from .device import DeviceSpec, did_you_mean
from .errors import DeviceError, KernelNotFoundError, PluginError
from .ops import ALL_OPS, DENSE, KernelKey

ENTRY_POINT_GROUP = "polyllama"
log = logging.getLogger("polyllama")


@dataclass
class Backend:
    id: str
    kind: str
    impl: str
    device_class: str
    probe: Callable[[], str | None]
    priority: int
    description: str
    plugin: str

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.impl}"

    def unavailable_reason(self) -> str | None:
        try:
            return self.probe()
        except Exception as e:                      # a probe must never take others down
            return f"availability probe failed: {type(e).__name__}: {e}"


@dataclass
class QuantScheme:
    name: str
    fmt: str
    pack: Callable
    description: str
    plugin: str


def resolve_ref(ref):
    """A callable, or 'module:attr' imported now."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry:
    def __init__(self):
        self.pm = pluggy.PluginManager("polyllama")
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, Backend] = {}
        self.kernels: dict[KernelKey, object] = {}
        self.kernel_owner: dict[KernelKey, str] = {}
        self.quant_schemes: dict[str, QuantScheme] = {}
        self.failures: dict[str, str] = {}          # plugin name -> error text
        self.versions: dict[str, str] = {}          # plugin name -> distribution version

    # -- loading
    def load_entry_points(self, allow: set[str] | None = None) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            if ep.dist is not None:
                self.versions[ep.name] = f"{ep.dist.name} {ep.dist.version}"
            try:
                self.add_plugin(ep.load(), ep.name)
            except Exception as e:
                self.failures[ep.name] = f"{type(e).__name__}: {e}"
                log.warning("polyllama plugin %r failed to load: %s", ep.name,
                            self.failures[ep.name])
        if allow:
            known = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
            for name in sorted(allow - known):
                log.warning("POLYLLAMA_PLUGINS names %r, but no such plugin is installed%s",
                            name, did_you_mean(name, known))

    def add_plugin(self, module, name: str) -> None:
        """Register one plugin module and run its hooks; on failure nothing of it remains."""
        self.pm.register(module, name=name)
        try:
            self.pm.check_pending()
            self._call(module, name)
        except Exception:
            self.remove_plugin(name)
            raise

    def remove_plugin(self, name: str) -> None:
        module = self.pm.get_plugin(name)
        if module is not None:
            self.pm.unregister(module)
        for d in (self.backends, self.quant_schemes):
            for key in [k for k, v in d.items() if v.plugin == name]:
                del d[key]
        for key in [k for k, v in self.kernel_owner.items() if v == name]:
            del self.kernels[key], self.kernel_owner[key]

    def _call(self, module, name: str) -> None:
        for hook, fn in (("register_backends", self._register_backend),
                         ("register_kernels", self._register_kernel),
                         ("register_quant_schemes", self._register_quant_scheme)):
            impl = getattr(module, hook, None)
            if impl is not None:
                impl(register=partial(fn, name))

    # -- register callbacks
    def _register_backend(self, plugin, id, kind, impl, device_class, probe, priority=0,
                          description=""):
        if id in self.backends:
            raise PluginError(f"backend id {id!r} registered by both {self.backends[id].plugin!r}"
                              f" and {plugin!r}")
        if id != f"{kind}_{impl}" or not kind.isidentifier() or not impl.isidentifier():
            raise PluginError(f"plugin {plugin!r}: backend id must be '<kind>_<impl>' of "
                              f"identifiers, got id={id!r} kind={kind!r} impl={impl!r}")
        self.backends[id] = Backend(id, kind, impl, device_class, probe, int(priority),
                                    description, plugin)

    def _register_kernel(self, plugin, backend, op, fn, fmt=DENSE):
        if op not in ALL_OPS:
            raise PluginError(f"plugin {plugin!r} registers unknown op {op!r}"
                              f"{did_you_mean(op, ALL_OPS)}; ops are {', '.join(ALL_OPS)}")
        key = KernelKey(backend, op, fmt)
        if key in self.kernels:
            raise PluginError(f"kernel {key} registered by both {self.kernel_owner[key]!r} "
                              f"and {plugin!r}")
        self.kernels[key], self.kernel_owner[key] = fn, plugin

    def _register_quant_scheme(self, plugin, name, fmt, pack, description=""):
        if name in self.quant_schemes:
            raise PluginError(f"quantization scheme {name!r} registered by both "
                              f"{self.quant_schemes[name].plugin!r} and {plugin!r}")
        self.quant_schemes[name] = QuantScheme(name, fmt, pack, description, plugin)

    # -- queries
    def kernel(self, backend: str, op: str, fmt: str = DENSE):
        key = KernelKey(backend, op, fmt)
        if key not in self.kernels:
            have = sorted(f"{k.op}/{k.fmt}" for k in self.kernels if k.backend == backend)
            raise KernelNotFoundError(f"no kernel for {key}; backend {backend!r} provides: "
                                      f"{', '.join(have) or 'nothing'}")
        fn = self.kernels[key]
        if isinstance(fn, str):
            self.kernels[key] = fn = resolve_ref(fn)
        return fn

    def has_kernel(self, backend: str, op: str, fmt: str = DENSE) -> bool:
        return KernelKey(backend, op, fmt) in self.kernels

    def device_table(self) -> list[tuple[str, str, int | None, str | None]]:
        """(spec, plugin version, priority, None or why unavailable) for every known backend,
        available ones first, then by priority; failed plugins last (priority None)."""
        rows = [(b.spec, self.versions.get(b.plugin, "-"), b.priority, b.unavailable_reason())
                for b in self.backends.values()]
        rows.sort(key=lambda r: (r[3] is not None, -r[2], r[0]))
        for name, err in sorted(self.failures.items()):
            rows.append((name.replace("_", ":", 1), self.versions.get(name, "-"), None,
                         f"plugin failed to load: {err}"))
        return rows

    def resolve(self, text: str) -> tuple[Backend, int]:
        """The backend and GPU index a device string names; a clear error when none fits."""
        spec = DeviceSpec.parse(text)
        if spec.kind == "auto" and spec.impl is None:
            candidates = list(self.backends.values())
        else:
            candidates = [b for b in self.backends.values() if b.kind == spec.kind
                          and (spec.impl is None or b.impl == spec.impl)]
        if not candidates:
            failed = f"{spec.kind}_{spec.impl}"
            if failed in self.failures:
                raise DeviceError(f"device {text!r}: its plugin failed to load: "
                                  f"{self.failures[failed]}")
            specs = [b.spec for b in self.backends.values()]
            same_kind = [s for s in specs if s.split(":")[0] == spec.kind]   # cuda:* for cuda:*
            raise DeviceError(f"unknown device {text!r}"
                              f"{did_you_mean(str(spec), same_kind or specs)}.\n"
                              + self.describe_devices())
        candidates.sort(key=lambda b: -b.priority)
        reasons = {b.spec: b.unavailable_reason() for b in candidates}
        usable = [b for b in candidates if reasons[b.spec] is None]
        if not usable:
            why = "; ".join(f"{s}: {r}" for s, r in reasons.items())
            raise DeviceError(f"device {text!r} is unavailable ({why}).\n"
                              + self.describe_devices())
        return usable[0], spec.index or 0

    def describe_devices(self) -> str:
        lines = ["Known devices:"]
        for spec, _, _, reason in self.device_table():
            lines.append(f"  {spec:<16} {'available' if reason is None else 'unavailable: ' + reason}")
        lines.append("  (also: auto = best available, cuda = best CUDA backend, "
                     "cuda:triton:1 = a GPU index)")
        return "\n".join(lines)


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading plugins on first use."""
    global _registry
    if _registry is None:
        env = os.environ.get("POLYLLAMA_PLUGINS")
        allow = None if env is None else {p.strip() for p in env.split(",") if p.strip()}
        reg = Registry()
        reg.load_entry_points(allow)
        _registry = reg
    return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Forget loaded plugins (tests) or install a prepared registry."""
    global _registry
    _registry = registry
    _devices.clear()


_devices: dict[tuple[str, int], object] = {}


def get_device(text: str = "auto"):
    """The Device for a spec string, created once per (backend, index)."""
    reg = get_registry()
    backend, index = reg.resolve(text)
    key = (backend.id, index)
    if key not in _devices:
        spec = DeviceSpec(backend.kind, backend.impl, index)
        try:
            device = resolve_ref(backend.device_class)(spec, index)
        except DeviceError:
            raise
        except Exception as e:
            raise DeviceError(f"could not open device {spec}: {type(e).__name__}: {e}") from e
        device.backend_id = backend.id
        _devices[key] = device
    return _devices[key]
