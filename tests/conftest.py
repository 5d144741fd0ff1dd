"""Shared test setup: hermetic plugin loading (only the project's own plugins)."""
import os
import sys
from pathlib import Path

# Only the plugins this repository ships (and its example out-of-tree plugin) load in tests,
# whatever else is installed; POLYLLAMA_PLUGINS set by the caller wins.
os.environ.setdefault("POLYLLAMA_PLUGINS", "cpu_numpy,cuda_triton,cuda_cupy,int8,cpu_torch")
sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU, Triton kernels run in its CPU interpreter. Triton reads the switch when a
# kernel is decorated, so it is set before any test module can import triton.
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
from backends import backend, dtype, rng  # noqa: F401  (shared fixtures)  # noqa: E402,F401  (backend-parametrized fixtures)
