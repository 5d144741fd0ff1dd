"""The out-of-tree example backend, installed for real through its own entry point: it is
listed by `polyllama devices`, selectable with --device, and runs a model that matches
transformers. (test_backend_kernels.py covers its kernels like any other backend's.)"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

from polyllama import Checkpoint, LlamaConfig, get_device
from polyllama.model import Model

from formats import write_v1
from refmodel import CONFIGS, canonical_weights, hf_greedy, hf_logits, make_hf_model

DIST = "polyllama-cpu-torch"


def installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not installed(), reason=f"{DIST} is not installed: "
                                "pip install ./examples/polyllama-cpu-torch")

PROMPT = [1, 5, 7, 11, 3]
MAX_POS = 64


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def ref(request):
    model = make_hf_model(request.param, max_pos=MAX_POS)
    return request.param, model, canonical_weights(model)


def polyllama_cli(*args) -> str:
    res = subprocess.run([sys.executable, "-m", "polyllama.cli", *args], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_listed_by_polyllama_devices():
    lines = [line for line in polyllama_cli("devices").splitlines()
             if line.startswith("cpu:torch ")]
    assert len(lines) == 1
    line = lines[0]
    assert f"{DIST} {importlib.metadata.version(DIST)}" in line
    assert "available; smoke test passed" in line and " 5 " in line


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_model_logits_match_transformers(ref, dtype, tol):
    name, hf, weights = ref
    dim, hidden, layers, heads, kv, vocab, tied = CONFIGS[name]
    config = LlamaConfig(dim, hidden, layers, heads, kv, vocab, MAX_POS,
                         tie_embeddings=tied).validated()
    ckpt = Checkpoint(config, weights, "canonical", "<memory>").validate()
    model = Model.build(ckpt, get_device("cpu:torch"), dtype=dtype)
    want = hf_logits(hf, PROMPT)
    model.prefill(PROMPT[:-1])                     # prefill, then one decode step
    model.decode(len(PROMPT) - 1, PROMPT[-1])
    got = model.read_logits()
    err = np.linalg.norm(got - want[-1]) / np.linalg.norm(want[-1])
    assert err < tol, f"{name} {dtype}: relative logits error {err:.2e}"


def test_cli_runs_on_cpu_torch(tmp_path):
    name = "mha-untied"
    hf = make_hf_model(name, max_pos=MAX_POS)
    _, _, _, heads, kv, _, _ = CONFIGS[name]
    write_v1(tmp_path / "model.bin", canonical_weights(hf), heads, kv, MAX_POS)
    out = polyllama_cli("run", str(tmp_path / "model.bin"), "--device", "cpu:torch",
                        "--prompt-ids", ",".join(map(str, PROMPT)), "-n", "8", "--temp", "0",
                        "--ignore-eos", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["device"].startswith("cpu:torch")
    assert result["generated_ids"] == hf_greedy(hf, PROMPT, 8)
