"""The int8 quantization scheme (weight format q8_0): packing against its stated rounding
bound, every backend's q8_0 linear against reference dequantize + linear, and whole models
against transformers running the same int8-rounded weights."""
from __future__ import annotations

import numpy as np
import pytest

from polyllama import Checkpoint, LlamaConfig, QuantizedArray, Weight, get_device, get_registry
from polyllama import reference
from polyllama.llama2c import load_llama2c
from polyllama.model import Model

from backends import check_out, kernel, normed_reference, poisoned, upload
from formats import write_v2
from refmodel import (CONFIGS, canonical_weights, expected_group, fake_quant, hf_greedy,
                      hf_logits, int8_hf_model, make_hf_model)

FMT = "q8_0"
PROMPT = [1, 5, 7, 11, 3]
MAX_POS = 64


def scheme():
    return get_registry().quant_schemes["int8"]


def test_registered():
    assert scheme().fmt == FMT
    assert get_registry().has_kernel("cpu_numpy", "linear", FMT)


@pytest.mark.parametrize("n,k", [(5, 128), (7, 96), (3, 48), (4, 50), (2, 67)])
def test_pack_layout_and_rounding(n, k):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 10, (n, 1))
    w[0, : expected_group(k)] = 0.0                       # an all-zero group stays zero
    parts, meta = scheme().pack(w)
    g = expected_group(k)
    assert meta == {"group": g}
    q, s = parts["q"], parts["s"]
    assert q.dtype == np.int8 and q.shape == (n, k)
    assert s.dtype == np.float32 and s.shape == (n, k // g)
    scale = np.repeat(s.astype(np.float64), g, axis=1)
    assert np.all(np.abs(q.astype(np.float64) * scale - w) <= scale / 2 * (1 + 1e-5))
    assert np.all(np.abs(q).reshape(n, k // g, g).max(axis=2)[s > 0] == 127)
    assert not q[0, :g].any() and s[0, 0] == 0
    np.testing.assert_array_equal(reference.dequantize_groups(q, s.reshape(-1), g),
                                  fake_quant(w))


def test_pack_keeps_a_file_quantization_that_fits():
    w = np.random.default_rng(1).standard_normal((6, 48)).astype(np.float32)
    q, scales = reference.quantize_groups(w, 16)
    parts, meta = scheme().pack(QuantizedArray(q, scales, 16))
    assert meta == {"group": 16}
    np.testing.assert_array_equal(parts["q"], q)
    np.testing.assert_array_equal(parts["s"], scales.reshape(6, 3))


def test_pack_requantizes_groups_that_straddle_rows():
    w = np.random.default_rng(2).standard_normal((4, 24)).astype(np.float32)
    stored = QuantizedArray(*reference.quantize_groups(w, 32), 32)   # 32 > the row width
    parts, meta = scheme().pack(stored)
    assert meta == {"group": 8}
    np.testing.assert_array_equal(
        reference.dequantize_groups(parts["q"], parts["s"].reshape(-1), 8),
        fake_quant(stored.dequantize()))


def q8_kernel(backend, op):
    if not get_registry().has_kernel(backend.backend_id, op, FMT):
        pytest.skip(f"{backend.spec} has no {op} kernel for {FMT}")
    return kernel(backend, op, FMT)


def q8_weight(backend, rng, n, k, group=None):
    """(Weight, the dense rows it stands for): random [n, k] weights packed to q8_0 on the
    backend; with group, as a file quantized them in groups of that size (kept as stored)."""
    w = rng.standard_normal((n, k)).astype(np.float32) / np.sqrt(k)
    if group:
        w = QuantizedArray(*reference.quantize_groups(w, group), group)
    parts, meta = scheme().pack(w)
    assert meta["group"] == (group or expected_group(k))
    weight = Weight(FMT, (n, k), {name: backend.upload(a, a.dtype.name).native
                                  for name, a in parts.items()}, meta)
    return weight, reference.dequantize_groups(parts["q"], parts["s"].reshape(-1), meta["group"])


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("n,k", [(45, 128), (33, 48), (3000, 96)])
def test_linear_q8_0(backend, dtype, rng, T, n, k):
    fn = q8_kernel(backend, "linear")
    w, dense = q8_weight(backend, rng, n, k)
    x = upload(backend, rng.standard_normal((T, k)), dtype)
    out, whole = poisoned(backend, (T, n), dtype)
    fn(out.native, x.native, w)
    check_out(backend, out, whole, reference.linear(x.numpy(), dense), dtype, "linear q8_0")


@pytest.mark.parametrize("op", ["linear_add", "rmsnorm_linear", "rmsnorm_swiglu"])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("n,k,group", [(45, 128, None), (19, 5632, None), (13, 4611, None),
                                       (21, 96, 12)])
def test_fused_linear_q8_0(backend, dtype, rng, op, T, n, k, group):
    """The optional linear ops over q8_0 weights, where a backend registers them: one token
    over rows a GEMV loads whole or walks in tiles, K a multiple of 16 or not, groups of
    whole 16-value pieces or not (a file's 12); more tokens as prefill runs them."""
    fn = q8_kernel(backend, op)
    w, dense = q8_weight(backend, rng, 2 * n if op == "rmsnorm_swiglu" else n, k, group)
    x = upload(backend, rng.standard_normal((T, k)) * 2, dtype)
    out, whole = poisoned(backend, (T, n), dtype)
    if op == "linear_add":
        residual = upload(backend, rng.standard_normal((T, n)), dtype)
        fn(out.native, x.native, w, residual.native)
        want = reference.add(residual.numpy(), reference.linear(x.numpy(), dense))
    else:
        eps = 1e-5
        norm = upload(backend, 1 + 0.3 * rng.standard_normal(k), dtype)
        fn(out.native, x.native, norm.native, eps, w)
        want = normed_reference(op, x.numpy(), norm.numpy(), eps, dense)
    check_out(backend, out, whole, want, dtype, f"{op} q8_0")


# ---------------------------------------------------------------- whole models


def checkpoint(name, weights) -> Checkpoint:
    dim, hidden, layers, heads, kv, vocab, tied = CONFIGS[name]
    config = LlamaConfig(dim, hidden, layers, heads, kv, vocab, MAX_POS,
                         tie_embeddings=tied).validated()
    return Checkpoint(config, weights, "canonical", "<memory>").validate()


def last_logits(model, ids) -> np.ndarray:
    model.prefill(ids)
    return model.read_logits()


def rel_err(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_int8_matches_transformers_on_int8_weights(name):
    hf = make_hf_model(name, max_pos=MAX_POS)
    ckpt = checkpoint(name, canonical_weights(hf))
    dev = get_device("cpu:numpy")
    model = Model.build(ckpt, dev, quant="int8")
    dense = Model.build(ckpt, dev)
    assert model.fmt == FMT and model.weight_bytes < 0.4 * dense.weight_bytes
    got = last_logits(model, PROMPT)
    hf8 = int8_hf_model(name, max_pos=MAX_POS)
    assert rel_err(got, hf_logits(hf8, PROMPT)[-1]) < 1e-5
    assert rel_err(got, last_logits(dense, PROMPT)) < 0.1         # close to the dense model
    tokens, pos, token = [], len(PROMPT), int(np.argmax(got))
    for _ in range(6):                                            # greedy decode steps
        tokens.append(token)
        model.decode(pos, token)
        pos, token = pos + 1, int(np.argmax(model.read_logits()))
    assert tokens == hf_greedy(hf8, PROMPT, 6)


def test_model_int8_from_an_int8_file(tmp_path):
    name = "mha-untied"
    hf = make_hf_model(name, max_pos=MAX_POS)
    dim, hidden, layers, heads, kv, vocab, tied = CONFIGS[name]
    write_v2(tmp_path / "model.bin", canonical_weights(hf), heads, kv, MAX_POS, group=16)
    ckpt = load_llama2c(tmp_path / "model.bin")
    assert isinstance(ckpt.tensors["layers.0.wo"], QuantizedArray)
    got = last_logits(Model.build(ckpt, get_device("cpu:numpy"), quant="int8"), PROMPT)
    assert rel_err(got, hf_logits(hf, PROMPT)[-1]) < 0.1
