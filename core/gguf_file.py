"""GGUF files (llama.cpp) through the `gguf` package: metadata -> LlamaConfig, tensors as
float32 (F32 stays a view of the memory-mapped file; F16, BF16 and the block quantizations
Q8_0, Q4_0, Q4_1 are dequantized once at load), plus the embedded tokenizer and chat template.
llama.cpp's converter already stores q/k rows in the adjacent-pair RoPE layout."""
from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint
from .config import LlamaConfig
from .errors import ModelFormatError
from .hf import bf16_to_f32
from . import reference

LAYER_NAMES = {"attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "wq": "attn_q",
               "wk": "attn_k", "wv": "attn_v", "wo": "attn_output", "w1": "ffn_gate",
               "w2": "ffn_down", "w3": "ffn_up"}
DEQUANTIZE = {"Q8_0": reference.dequantize_gguf_q8_0, "Q4_0": reference.dequantize_gguf_q4_0,
              "Q4_1": reference.dequantize_gguf_q4_1}
SUPPORTED = ("F32", "F16", "BF16", *DEQUANTIZE)


def _reader(path: str):
    try:
        import gguf
    except ImportError as e:
        raise ModelFormatError("reading GGUF files needs the gguf package: pip install gguf") from e

    class Reader(gguf.GGUFReader):
        """GGUFReader over a plain ndarray view of its memory map: slicing an np.memmap
        runs Python code per slice, and reading a 49k-token vocabulary takes ~10^6 slices
        (3x faster load)."""

        @property
        def data(self):
            return self._array

        @data.setter
        def data(self, value):
            self._array = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    try:
        return Reader(path)
    except Exception as e:        # the package raises plain ValueError/IndexError on bad files
        raise ModelFormatError(f"{path}: not a readable GGUF file, or truncated ({e})") from e


def tensor_array(t, path: str) -> np.ndarray:
    """One GGUF tensor as float32 [out, in] (GGUF lists shapes innermost first)."""
    kind = t.tensor_type.name
    shape = tuple(int(n) for n in reversed(t.shape))
    if kind == "F32":
        return t.data.reshape(shape)
    if kind == "F16":
        return t.data.astype(np.float32).reshape(shape)
    if kind == "BF16":
        return bf16_to_f32(t.data.view(np.uint16)).reshape(shape)
    if kind in DEQUANTIZE:
        return DEQUANTIZE[kind](t.data).reshape(shape)
    raise ModelFormatError(f"{path}: tensor {t.name} is stored as {kind}, which polyllama does "
                           f"not read (supported: {', '.join(SUPPORTED)}); requantize the model "
                           "to one of those with llama.cpp's llama-quantize")


def _rope_scaling(meta: dict, freqs, hd: int, theta: float, path: str) -> dict | None:
    """llama.cpp writes Llama-3 scaling as a rope_freqs tensor of per-frequency divisors;
    recover the standard llama3 parameters from it and check they reproduce it."""
    if freqs is not None:
        scaling = {"rope_type": "llama3", "factor": float(np.max(freqs)),
                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings":
                       int(meta.get("llama.rope.scaling.original_context_length", 8192))}
        ratio = reference.rope_frequencies(hd, theta) / reference.rope_frequencies(hd, theta,
                                                                                  scaling)
        if np.shape(freqs) == ratio.shape and np.allclose(ratio, freqs, rtol=1e-3):
            return scaling
        raise ModelFormatError(f"{path}: rope_freqs.weight holds RoPE frequency factors that "
                               "are not Llama-3 scaling; polyllama does not support them")
    kind = meta.get("llama.rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(meta["llama.rope.scaling.factor"])}
    raise ModelFormatError(f"{path}: RoPE scaling {kind!r} is not supported (linear, llama3)")


def gguf_config(meta: dict, tensors: dict, path: str) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelFormatError(f"{path}: the GGUF architecture is {arch!r}; polyllama runs "
                               "llama models")
    need = ["llama.embedding_length", "llama.feed_forward_length", "llama.block_count",
            "llama.attention.head_count"]
    missing = [k for k in need if k not in meta]
    if missing:
        raise ModelFormatError(f"{path}: GGUF metadata lacks {', '.join(missing)}")
    if "token_embd.weight" not in tensors:
        raise ModelFormatError(f"{path}: tensor token_embd.weight is missing")
    heads = meta["llama.attention.head_count"]
    vocab = meta.get("llama.vocab_size") or int(tensors["token_embd.weight"].shape[1])
    theta = float(meta.get("llama.rope.freq_base", 10000.0))
    hd = meta.get("llama.attention.key_length") or meta["llama.embedding_length"] // heads
    freqs = tensors.get("rope_freqs.weight")
    config = LlamaConfig(
        dim=meta["llama.embedding_length"], hidden_dim=meta["llama.feed_forward_length"],
        n_layers=meta["llama.block_count"], n_heads=heads,
        n_kv_heads=meta.get("llama.attention.head_count_kv", heads), vocab_size=vocab,
        max_seq_len=meta.get("llama.context_length", 2048),
        norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=theta, head_dim=meta.get("llama.attention.key_length"),
        tie_embeddings="output.weight" not in tensors,
        rope_scaling=_rope_scaling(meta, None if freqs is None else tensor_array(freqs, path),
                                   hd, theta, path))
    return config.validated()


def load_gguf(path) -> Checkpoint:
    """A llama GGUF file as a Checkpoint with float32 tensors under canonical names."""
    path = str(path)
    reader = _reader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    try:
        config = gguf_config(meta, tensors, path)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{path}: GGUF metadata has a value of the wrong type ({e})") from e
    names = {"tok_embeddings": "token_embd.weight", "norm": "output_norm.weight"}
    if not config.tie_embeddings:
        names["output"] = "output.weight"
    for i in range(config.n_layers):
        names.update({f"layers.{i}.{ours}": f"blk.{i}.{theirs}.weight"
                      for ours, theirs in LAYER_NAMES.items()})
    missing = [theirs for theirs in names.values() if theirs not in tensors]
    if missing:
        raise ModelFormatError(f"{path}: GGUF tensors missing: {', '.join(missing[:5])}")
    try:
        arrays = {ours: tensor_array(tensors[theirs], path) for ours, theirs in names.items()}
    except ValueError as e:
        raise ModelFormatError(f"{path}: a tensor does not fit its shape ({e}); "
                               "the file is corrupt") from e
    tokenizer = None
    if "tokenizer.ggml.model" in meta:
        from .hf_tokenizer import gguf_tokenizer
        tokenizer = gguf_tokenizer({k: v for k, v in meta.items() if k.startswith("tokenizer.")})
    return Checkpoint(config, arrays, "gguf", path, tokenizer,
                      meta.get("tokenizer.chat_template"),
                      meta={"gguf_file_type": meta.get("general.file_type"),
                            "name": meta.get("general.name")}).validate()
