"""Writers of the llama2.c file family, following karpathy/llama2.c export.py (v0, v1, v2),
KuiperLLama's export (int8 "version 3") and llama2.c's tokenizer.py (tokenizer.bin).

They take canonical weights (tests/refmodel.canonical_weights) and read sizes off the arrays,
so the files are written independently of polyllama's loaders.
"""
from __future__ import annotations

import struct

import numpy as np

from polyllama.reference import quantize_groups

MAGIC = 0x616B3432


def _sizes(w: dict) -> tuple[int, int, int, int, bool]:
    vocab, dim = w["tok_embeddings"].shape
    hidden = w["layers.0.w1"].shape[0]
    layers = sum(1 for k in w if k.endswith(".wq"))
    return dim, hidden, layers, vocab, "output" not in w


def _layers(w: dict, kind: str) -> list[np.ndarray]:
    return [w[f"layers.{i}.{kind}"] for i in range(_sizes(w)[2])]


def _f32(f, *arrays) -> None:
    for a in arrays:
        f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def _q8(f, group: int, *arrays) -> None:
    for a in arrays:
        q, scales = quantize_groups(a, group)
        f.write(q.astype(np.int8).tobytes())
        f.write(scales.astype("<f4").tobytes())


def _rope_tables(hd: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    freqs = 1.0 / 10000.0 ** (np.arange(0, hd, 2)[: hd // 2] / hd)
    angles = np.outer(np.arange(seq_len), freqs)
    return np.cos(angles), np.sin(angles)


def write_v0(path, w: dict, n_heads: int, n_kv_heads: int, max_seq_len: int) -> None:
    """Legacy export: 7-int header (negative vocab = unshared classifier), fp32."""
    dim, hidden, layers, vocab, tied = _sizes(w)
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, layers, n_heads, n_kv_heads,
                            vocab if tied else -vocab, max_seq_len))
        _f32(f, w["tok_embeddings"])
        for kind in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
            _f32(f, *_layers(w, kind))
        _f32(f, w["norm"], *_rope_tables(dim // n_heads, max_seq_len))
        if not tied:
            _f32(f, w["output"])


def _versioned_header(f, version: int, w: dict, n_heads: int, n_kv_heads: int,
                      max_seq_len: int, group: int | None = None) -> None:
    dim, hidden, layers, vocab, tied = _sizes(w)
    f.write(struct.pack("<Ii", MAGIC, version))
    f.write(struct.pack("<7i", dim, hidden, layers, n_heads, n_kv_heads, vocab, max_seq_len))
    f.write(struct.pack("<B", int(tied)))
    if group is not None:
        f.write(struct.pack("<i", group))
    f.write(b"\0" * (256 - f.tell()))


def write_v1(path, w: dict, n_heads: int, n_kv_heads: int, max_seq_len: int) -> None:
    """Version 1: 256-byte header, fp32, norms first."""
    with open(path, "wb") as f:
        _versioned_header(f, 1, w, n_heads, n_kv_heads, max_seq_len)
        _f32(f, *_layers(w, "attn_norm"), *_layers(w, "ffn_norm"), w["norm"], w["tok_embeddings"])
        for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            _f32(f, *_layers(w, kind))
        if "output" in w:
            _f32(f, w["output"])


def write_v2(path, w: dict, n_heads: int, n_kv_heads: int, max_seq_len: int,
             group: int = 64) -> None:
    """Version 2: fp32 norms, then each matrix as int8 values followed by its group scales."""
    with open(path, "wb") as f:
        _versioned_header(f, 2, w, n_heads, n_kv_heads, max_seq_len, group)
        _f32(f, *_layers(w, "attn_norm"), *_layers(w, "ffn_norm"), w["norm"])
        _q8(f, group, w["tok_embeddings"])
        for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            _q8(f, group, *_layers(w, kind))
        if "output" in w:
            _q8(f, group, w["output"])


def write_kuiper(path, w: dict, n_heads: int, n_kv_heads: int, max_seq_len: int,
                 group: int = 64) -> None:
    """KuiperLLama int8 export: 8-int header ending in group_size, int8 matrices first."""
    dim, hidden, layers, vocab, tied = _sizes(w)
    with open(path, "wb") as f:
        f.write(struct.pack("<8i", dim, hidden, layers, n_heads, n_kv_heads,
                            vocab if tied else -vocab, max_seq_len, group))
        for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            _q8(f, group, *_layers(w, kind))
        if not tied:
            _q8(f, group, w["output"])
        _f32(f, w["tok_embeddings"], *_layers(w, "attn_norm"), *_layers(w, "ffn_norm"), w["norm"])


WRITERS = {"llama2c-v0": write_v0, "llama2c-v1": write_v1, "llama2c-v2": write_v2,
           "kuiper-int8": write_kuiper}


def write_tokenizer_bin(path, sp) -> None:
    """llama2.c's tokenizer.bin from a sentencepiece processor: U+2581 becomes a space,
    BOS/EOS are spelled "\\n<s>\\n"/"\\n</s>\\n", scores come from the model."""
    pieces, scores = [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        pieces.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    with open(path, "wb") as f:
        f.write(struct.pack("<I", max(len(p) for p in pieces)))
        for piece, score in zip(pieces, scores):
            f.write(struct.pack("<fI", score, len(piece)))
            f.write(piece)
