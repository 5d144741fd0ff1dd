"""Hugging Face Llama directories: config.json, safetensors weights (one file or shards),
tokenizer.json or tokenizer.model, and the chat template of tokenizer_config.json.

safetensors files are memory-mapped: float32 and float16 tensors stay views of the file;
bfloat16 (which numpy lacks) is widened to float32. q/k rows are moved from Hugging Face's
rotate-half layout to the adjacent-pair layout polyllama uses (FORMATS.md, RoPE layouts).
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .checkpoint import Checkpoint
from .config import LlamaConfig
from .errors import ModelFormatError
from . import reference

LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
               "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w2": "mlp.down_proj",
               "w3": "mlp.up_proj"}
DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read the {what} ({e.strerror})") from e
    except ValueError as e:
        raise ModelFormatError(f"{path}: the {what} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path}: the {what} is not a JSON object")
    return value


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits into place."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file (8-byte header length, JSON header, data)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("the header runs past the end of the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read the weights ({e.strerror})") from e
    except (struct.error, ValueError) as e:
        raise ModelFormatError(f"{path}: not a safetensors file or truncated ({e})") from e
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        return {name: _tensor(path, data, 8 + n, name, info)
                for name, info in header.items() if name != "__metadata__"}
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"{path}: malformed safetensors header ({e!r})") from e


def _tensor(path: str, data: np.memmap, base: int, name: str, info: dict) -> np.ndarray:
    if info["dtype"] not in DTYPES:
        raise ModelFormatError(f"{path}: tensor {name} is stored as {info['dtype']}; "
                               "polyllama reads F32, F16 and BF16")
    begin, end = info["data_offsets"]
    dtype = np.dtype(DTYPES[info["dtype"]])
    if base + end > data.size:
        raise ModelFormatError(f"{path}: truncated: tensor {name} ends at byte {base + end} "
                               f"but the file has {data.size}; download it again")
    if end - begin != int(np.prod(info["shape"])) * dtype.itemsize:
        raise ModelFormatError(f"{path}: tensor {name} has {end - begin} bytes, which does "
                               f"not fit its shape {info['shape']}; the file is corrupt")
    arr = data[base + begin:base + end].view(dtype).reshape(info["shape"])
    return bf16_to_f32(arr) if info["dtype"] == "BF16" else arr


def _weights(path: str) -> dict[str, np.ndarray]:
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return read_safetensors(single)
    if not os.path.isfile(index):
        raise ModelFormatError(f"{path}: no model.safetensors or model.safetensors.index.json "
                               "(only safetensors weights are read; convert .bin/.pt files "
                               "with transformers' save_pretrained)")
    weights = {}
    for shard in sorted(set(_json(index, "shard index").get("weight_map", {}).values())):
        if not os.path.isfile(os.path.join(path, shard)):
            raise ModelFormatError(f"{path}: shard {shard} named in the index is missing")
        weights.update(read_safetensors(os.path.join(path, shard)))
    return weights


def hf_config(cfg: dict, path: str) -> LlamaConfig:
    """LlamaConfig from a config.json dict (rope in `rope_parameters` or legacy keys)."""
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise ModelFormatError(f"{path}: config.json describes a {archs or cfg.get('model_type')}"
                               " model; polyllama runs the Llama architecture (LlamaForCausalLM)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("hidden_act", "silu") != "silu":
        raise ModelFormatError(f"{path}: this Llama variant uses biases or a non-SiLU "
                               "activation, which polyllama does not support")
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ModelFormatError(f"{path}: config.json lacks {', '.join(missing)}")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0)))
    scaling = rope if rope.get("rope_type", rope.get("type")) not in (None, "default") else None
    config = LlamaConfig(
        dim=cfg["hidden_size"], hidden_dim=cfg["intermediate_size"],
        n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"], max_seq_len=cfg.get("max_position_embeddings", 2048),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        head_dim=cfg.get("head_dim"), rope_scaling=scaling,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False))).validated()
    reference.rope_frequencies(config.hd, theta, scaling)   # unsupported scaling fails here
    return config


def hf_to_pairs(w: np.ndarray, n_heads: int) -> np.ndarray:
    """q/k rows per head from rotate-half order (all x[i], then all x[i + hd/2]) to
    adjacent pairs (x[2i], x[2i+1])."""
    rows, cols = w.shape
    half = rows // n_heads // 2
    return np.ascontiguousarray(w.reshape(n_heads, 2, half, cols).swapaxes(1, 2)
                                .reshape(rows, cols))


def canonical_tensors(weights: dict, config: LlamaConfig, path: str) -> dict:
    def get(name):
        if name not in weights:
            raise ModelFormatError(f"{path}: tensor {name} is missing from the safetensors files")
        return weights[name]

    out = {"tok_embeddings": get("model.embed_tokens.weight"), "norm": get("model.norm.weight")}
    if not config.tie_embeddings:
        out["output"] = get("lm_head.weight")
    for i in range(config.n_layers):
        for ours, theirs in LAYER_NAMES.items():
            out[f"layers.{i}.{ours}"] = get(f"model.layers.{i}.{theirs}.weight")
        out[f"layers.{i}.wq"] = hf_to_pairs(out[f"layers.{i}.wq"], config.n_heads)
        out[f"layers.{i}.wk"] = hf_to_pairs(out[f"layers.{i}.wk"], config.n_kv_heads)
    return out


def _chat_template(path: str, tok_config: dict) -> str | None:
    template = tok_config.get("chat_template")
    if isinstance(template, list):            # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template:
        return template
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    legacy = os.path.join(path, "chat_template.json")
    return _json(legacy, "chat template").get("chat_template") if os.path.isfile(legacy) else None


def _tokenizer(path: str, cfg: dict, tok_config: dict):
    eos = cfg.get("eos_token_id")
    bos, eos = cfg.get("bos_token_id"), eos[0] if isinstance(eos, list) and eos else eos
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from .hf_tokenizer import load_tokenizer_json
        return load_tokenizer_json(os.path.join(path, "tokenizer.json"), tok_config, bos, eos)
    if not os.path.isfile(os.path.join(path, "tokenizer.model")):
        return None
    from .tokenizer import load_tokenizer
    tok = load_tokenizer(os.path.join(path, "tokenizer.model"))
    if tok_config.get("add_bos_token") is not None:
        tok.add_bos = bool(tok_config["add_bos_token"])
    return tok


def tokenizer_config(folder: str) -> dict:
    """tokenizer_config.json of a model folder ({} when there is none)."""
    path = os.path.join(folder, "tokenizer_config.json")
    return _json(path, "tokenizer config") if os.path.isfile(path) else {}


def load_hf_dir(path) -> Checkpoint:
    """A Hugging Face Llama directory as a Checkpoint."""
    path = str(path)
    cfg = _json(os.path.join(path, "config.json"), "model config")
    try:
        config = hf_config(cfg, path)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{path}: config.json has a value of the wrong type ({e})") from e
    weights = _weights(path)
    if "lm_head.weight" not in weights and not config.tie_embeddings:
        config = config.with_(tie_embeddings=True)       # saved without a separate head
    tensors = canonical_tensors(weights, config, path)
    tok_config = tokenizer_config(path)
    return Checkpoint(config, tensors, "safetensors", path, _tokenizer(path, cfg, tok_config),
                      _chat_template(path, tok_config), meta={"hf_config": cfg}).validate()
