"""The plugin contract: every hook a polyllama plugin may implement.

A plugin is a module named by an entry point in the group `polyllama`; the built-in
backends are registered exactly the same way. Each hook receives a `register` callback and
returns nothing; `register` validates its arguments and records which plugin made the entry.
See docs/plugins.md for a walk-through.
"""
import pluggy

hookspec = pluggy.HookspecMarker("polyllama")
hookimpl = pluggy.HookimplMarker("polyllama")


@hookspec
def register_backends(register):
    """Declare device backends.

    register(id, kind, impl, device_class, probe, priority=0, description="")
      id            backend id `<kind>_<impl>`, e.g. "cuda_triton" (also the entry-point name)
      kind, impl    the device spec words: users type `kind:impl[:index]`, e.g. "cuda:triton:1"
      device_class  "module:Class" of a `polyllama.Device` subclass; imported only when used
      probe         cheap callable returning None when usable, else a reason with its fix,
                    e.g. "torch is not installed: pip install 'polyllama[cuda-triton]'"
      priority      higher wins when the user asks for `auto` or a bare kind like `cuda`
    """


@hookspec
def register_kernels(register):
    """Provide kernels for the ops of core/ops.py.

    register(backend, op, fn, fmt="dense")
      backend  a backend id (it may come from another plugin, e.g. a quantization scheme
               adding its `linear` kernel to "cpu_numpy")
      op       an op name from polyllama.ops.ALL_OPS
      fn       the kernel, or "module:function" to import it only when a model is built
      fmt      weight format the kernel handles (only for linear-like ops)
    """


@hookspec
def register_quant_schemes(register):
    """Declare weight quantization schemes.

    register(name, fmt, pack, description="")
      name  what users type (`--quant int8`)
      fmt   the weight format the scheme produces, e.g. "q8_0"; kernels are keyed by it
      pack  pack(w) -> (parts, meta): w is a float32 [N, K] numpy array or a
            polyllama.QuantizedArray; parts is a dict of numpy arrays uploaded as-is
    """
