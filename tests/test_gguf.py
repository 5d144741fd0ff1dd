"""GGUF files written with the `gguf` package (the way llama.cpp's converter writes them)
from transformers reference models: block dequantization equals gguf's own, tensors load
under canonical names, and the model built from each file matches transformers run on the
same (dequantized) weights."""
from __future__ import annotations

import functools
import math
import sys

import numpy as np
import pytest
import torch

import refmodel
from polyllama import ModelFormatError
from polyllama.gguf_file import DEQUANTIZE, load_gguf
from polyllama.load import load_checkpoint
from test_hf_tokenizer import gguf_fields_of, train_byte_level

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0,
         "Q4_1": Q.Q4_1}
LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: HF rotate-half rows -> pair rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]) \
        .swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(hf) -> dict[str, np.ndarray]:
    c = hf.config
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"],
           "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        for theirs, ours in LAYER.items():
            w = sd[f"model.layers.{i}.{theirs}.weight"]
            if ours == "attn_q":
                w = llama_cpp_permute(w, c.num_attention_heads)
            elif ours == "attn_k":
                w = llama_cpp_permute(w, c.num_key_value_heads)
            out[f"blk.{i}.{ours}.weight"] = w
    return out


def roundtrip(w, qtype):
    """What a reader recovers from w stored as qtype, according to the gguf package."""
    if qtype == Q.F32:
        return w
    if qtype == Q.F16:
        return w.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)


def write_gguf(path, hf, qtype, tokenizer_fields=None, template=None, extra_tensors=()):
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    for key, value in (tokenizer_fields or {}).items():
        w.add_key_value(key, value, *_value_type(value))
    if template:
        w.add_chat_template(template)
    for name, t in [*gguf_tensors(hf).items(), *extra_tensors]:
        if t.ndim == 1 or qtype == Q.F32:      # llama.cpp keeps norms in F32
            w.add_tensor(name, t.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _value_type(value):
    V = gguf.GGUFValueType
    if isinstance(value, list):
        return V.ARRAY, V.STRING if isinstance(value[0], str) else V.INT32
    return {bool: (V.BOOL,), int: (V.UINT32,), str: (V.STRING,)}[type(value)]


def dequantized_model(hf, qtype):
    """A float32 transformers model holding the weights a GGUF of qtype stores. Quantization
    blocks run along rows, so it commutes with the q/k row permutation."""
    model = refmodel.make_hf_model("gqa-tied" if hf.config.tie_word_embeddings else
                                   "mha-untied")
    model.load_state_dict({k: torch.from_numpy(roundtrip(v.detach().float().numpy(), qtype)
                                               if v.dim() == 2 else v.detach().float().numpy())
                           for k, v in hf.state_dict().items()})
    return model


# ---------------------------------------------------------------- dequantizers


@pytest.mark.parametrize("kind", sorted(DEQUANTIZE))
def test_dequantizers_equal_gguf_on_random_blocks(kind):
    qtype = TYPES[kind]
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (257, block_bytes), dtype=np.uint8)
    raw[:, 0:2] = np.frombuffer(rng.normal(0, 0.1, 257).astype(np.float16).tobytes(),
                                np.uint8).reshape(-1, 2)     # finite scales
    if kind == "Q4_1":
        raw[:, 2:4] = np.frombuffer(rng.normal(0, 1, 257).astype(np.float16).tobytes(),
                                    np.uint8).reshape(-1, 2)
    want = gguf.quants.dequantize(raw, qtype).reshape(-1)
    np.testing.assert_array_equal(DEQUANTIZE[kind](raw), want)
    data = rng.normal(0, 1, (8, 96)).astype(np.float32)
    packed = gguf.quants.quantize(data, qtype)
    np.testing.assert_array_equal(DEQUANTIZE[kind](packed).reshape(8, 96),
                                  gguf.quants.dequantize(packed, qtype))


# ---------------------------------------------------------------- whole files


@functools.lru_cache(maxsize=None)
def reference_model(name):
    return refmodel.make_hf_model(name, seed=6)


def _fits(name, kind):
    """32-value blocks need rows whose length is a multiple of 32."""
    dim, hidden = refmodel.CONFIGS[name][:2]
    return kind in ("F32", "F16", "BF16") or (dim % 32 == 0 and hidden % 32 == 0)


CASES = [(name, kind) for name in sorted(refmodel.CONFIGS) for kind in TYPES
         if _fits(name, kind)]


@pytest.mark.parametrize("name,kind", CASES)
def test_tensors_load_as_the_dequantized_source(tmp_path, name, kind):
    hf = reference_model(name)
    ckpt = load_checkpoint(write_gguf(tmp_path / "m.gguf", hf, TYPES[kind]))
    assert ckpt.format == "gguf"
    want = refmodel.canonical_weights(dequantized_model(hf, TYPES[kind]))
    assert sorted(ckpt.tensors) == sorted(want)
    for key, w in want.items():
        assert ckpt.tensors[key].dtype == np.float32
        np.testing.assert_array_equal(ckpt.tensors[key], w, err_msg=key)
    source = refmodel.canonical_weights(hf)                  # and close to the original
    tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2}.get(kind, 0.1)
    for key, w in source.items():
        assert np.max(np.abs(ckpt.tensors[key] - w)) <= tol * np.max(np.abs(w)) + 1e-12
    c, h = ckpt.config, hf.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
            c.max_seq_len, c.tie_embeddings) == \
        (h.hidden_size, h.intermediate_size, h.num_hidden_layers, h.num_attention_heads,
         h.num_key_value_heads, h.vocab_size, h.max_position_embeddings, h.tie_word_embeddings)
    if kind == "F32":
        assert not ckpt.tensors["layers.0.w1"].flags.writeable   # a view of the mapped file


@pytest.mark.parametrize("name,kind", CASES)
def test_logits_and_greedy_match_transformers(tmp_path, name, kind):
    hf = reference_model(name)
    ckpt = load_gguf(write_gguf(tmp_path / "m.gguf", hf, TYPES[kind]))
    refmodel.assert_matches_transformers(ckpt, dequantized_model(hf, TYPES[kind]))


def test_embedded_tokenizer_and_template(tmp_path):
    hf = refmodel.make_hf_model("gqa-tied")
    ref_tok = train_byte_level()
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    ckpt = load_gguf(write_gguf(tmp_path / "m.gguf", hf, Q.F32, gguf_fields_of(ref_tok),
                                template))
    assert ckpt.chat_template == template
    text = "Héllo wörld 😀 <|im_start|>"
    assert ckpt.tokenizer.encode(text, add_bos=False) == ref_tok.encode(text).ids
    assert (ckpt.tokenizer.bos_id, ckpt.tokenizer.eos_id, ckpt.tokenizer.add_bos) == (0, 2, False)


def test_llama3_rope_scaling_from_rope_freqs(tmp_path):
    from transformers import LlamaConfig
    theta, hd, factor, low, high, old_ctx = 500000.0, 16, 8.0, 1.0, 4.0, 8192
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=80,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "llama3", "rope_theta": theta,
                                       "factor": factor, "low_freq_factor": low,
                                       "high_freq_factor": high,
                                       "original_max_position_embeddings": old_ctx},
                      attn_implementation="eager")
    hf = refmodel.random_llama(cfg, seed=7, scale=0.5)
    factors = []                 # as llama.cpp's converter computes rope_freqs for Llama 3.1
    for freq in 1.0 / theta ** (np.arange(0, hd, 2) / hd):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    ckpt = load_gguf(write_gguf(tmp_path / "m.gguf", hf, Q.F32, extra_tensors=[
        ("rope_freqs.weight", np.array(factors, np.float32))]))
    assert ckpt.config.rope_scaling["rope_type"] == "llama3"
    refmodel.assert_matches_transformers(ckpt, hf, steps=16)


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small():
    return refmodel.make_hf_model("gqa-tied")


def test_unsupported_tensor_type_names_type_and_tensor(small, tmp_path):
    with pytest.raises(ModelFormatError, match=r"token_embd\.weight is stored as Q5_0"):
        load_gguf(write_gguf(tmp_path / "m.gguf", small, Q.Q5_0))


def test_not_llama(small, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", small, Q.F32)
    data = path.read_bytes()        # same-length architecture name keeps the file valid
    path.write_bytes(data.replace(b"llama", b"gemma"))
    with pytest.raises(ModelFormatError, match="'gemma'"):
        load_gguf(path)


def test_truncated_file(small, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", small, Q.Q8_0)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_checkpoint(path)


def test_missing_tensor(small, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", small, Q.F32)
    path.write_bytes(path.read_bytes().replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_xx.weight"))
    with pytest.raises(ModelFormatError, match=r"blk\.1\.ffn_up\.weight"):
        load_gguf(path)


def test_without_the_gguf_package(small, tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf", small, Q.F32)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelFormatError, match="pip install gguf"):
        load_gguf(path)
