"""The benchmark scripts import: they share helpers across files (benchmarks/tma_ring_chain.py
serves three others), and they run only on a GPU, so a renamed helper would otherwise break
one unseen until its next GPU run."""
import importlib
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton.experimental.gluon")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports(monkeypatch, script):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(script)
    assert callable(getattr(module, "main", None)) or script == "timing", \
        f"benchmarks/{script}.py has no main()"


def test_decode_timeline_roles(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    roles = importlib.import_module("decode_timeline").roles
    layer = ["_gemv_kernel", "_rope_kernel", "_decode_kernel", "_gemv_kernel", "_gemv_kernel",
             "_gemv_kernel"]
    names = ["_embedding_kernel"] + layer * 2 + ["_gemv_kernel", "_argmax_kernel"]
    assert roles(names, 2) == (["embedding"] + ["qkv", "rope", "decode", "o", "w13", "w2"] * 2
                               + ["classifier", "sampling"])
    with pytest.raises(SystemExit, match="unexpected kernel sequence"):
        roles(names[:-1], 2)


def test_decode_timeline_charges_increments(monkeypatch):
    """A kernel is charged its end minus the latest end before it, never below 0: the
    charges add up to the step's span."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    charged = importlib.import_module("decode_timeline").charged
    spans = [("a", 0.0, 2.0), ("b", 1.0, 5.0), ("a", 1.5, 4.0), ("c", 4.5, 7.5)]
    totals = charged(spans, [name for name, _, _ in spans])
    assert dict(totals) == {"a": [2, 2.0], "b": [1, 3.0], "c": [1, 2.5]}
    assert sum(us for _, us in totals.values()) == 7.5
