"""Shared test setup: hermetic plugin loading (only the project's own plugins)."""
import os
import sys
from pathlib import Path

# Only the plugins this repository ships (and its example out-of-tree plugin) load in tests,
# whatever else is installed; POLYLLAMA_PLUGINS set by the caller wins.
os.environ.setdefault("POLYLLAMA_PLUGINS", "cpu_numpy,cuda_triton,cuda_cupy,int8,cpu_torch")
sys.path.insert(0, str(Path(__file__).parent))
from backends import backend, dtype, rng  # noqa: F401  (shared fixtures)  # noqa: E402,F401  (backend-parametrized fixtures)
