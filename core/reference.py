"""Plain numpy implementation of every op and every dequantizer: the executable spec.

Tests compare each backend kernel with these functions on random inputs. They favour
clarity over speed and accumulate in float64; never optimize them.
Functions return new arrays (the kernels' `out` arguments are left to the caller).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ModelFormatError

# ---------------------------------------------------------------- ops (see core/ops.py)


def embedding(table, ids):
    return np.asarray(table, dtype=np.float64)[np.asarray(ids)]


def rmsnorm(x, weight, eps):
    x = np.asarray(x, dtype=np.float64)
    inv = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * inv * np.asarray(weight, dtype=np.float64)


def linear(x, w):
    """x[T,K] @ W[N,K]^T with W dense (dequantize quantized weights first)."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T


def rope(x, pos, cos, sin):
    """Rotate adjacent pairs of x[T,nh,hd]; token t sits at position pos + t."""
    x = np.asarray(x, dtype=np.float64)
    T = x.shape[0]
    c = np.asarray(cos, dtype=np.float64)[pos:pos + T][:, None, :]
    s = np.asarray(sin, dtype=np.float64)[pos:pos + T][:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def attention(q, k_all, v_all, pos, scale):
    """Causal GQA attention. q[T,H,hd] holds queries at positions pos..pos+T-1;
    k_all/v_all[pos+T, KV, hd] hold the keys/values of every position so far."""
    q = np.asarray(q, dtype=np.float64)
    k_all = np.asarray(k_all, dtype=np.float64)
    v_all = np.asarray(v_all, dtype=np.float64)
    T, H, hd = q.shape
    group = H // k_all.shape[1]
    out = np.zeros((T, H, hd))
    for t in range(T):
        n = pos + t + 1
        for h in range(H):
            scores = k_all[:n, h // group] @ q[t, h] * scale
            out[t, h] = softmax(scores) @ v_all[:n, h // group]
    return out


def silu_mul(gate, up):
    g = np.asarray(gate, dtype=np.float64)
    return g / (1.0 + np.exp(-g)) * np.asarray(up, dtype=np.float64)


def add(a, b):
    return np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64)


def argmax(logits):
    return np.argmax(np.asarray(logits), axis=-1).astype(np.int32)


def advance(pos, ids, picked):
    """(next pos, picked with this step's id in slot pos % R)."""
    picked = np.array(picked, dtype=np.int32)
    picked[int(pos[0]) % len(picked)] = ids[0]
    return np.array([pos[0] + 1], dtype=np.int32), picked


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


# ---------------------------------------------------------------- sampling


def sampling_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """The distribution one sampling step draws from, over the whole vocabulary.

    softmax(logits / temperature), then in this order: keep the top_k most likely tokens
    (0 = all); keep the smallest prefix of those whose share of their mass reaches top_p;
    drop tokens whose probability is below min_p times the largest; renormalize.
    Ties sort by token id. temperature <= 0 puts all mass on the argmax.
    """
    logits = np.asarray(logits, dtype=np.float64)
    probs = np.zeros_like(logits)
    if temperature <= 0:
        probs[int(np.argmax(logits))] = 1.0
        return probs
    p = softmax(logits / temperature)
    order = np.argsort(-p, kind="stable")
    keep = len(order) if top_k <= 0 else min(int(top_k), len(order))
    sorted_p = p[order[:keep]]
    if top_p < 1.0:
        cum = np.cumsum(sorted_p)
        keep = min(keep, int(np.searchsorted(cum, top_p * cum[-1])) + 1)
    if min_p > 0.0:
        keep = min(keep, max(1, int(np.sum(sorted_p[:keep] >= min_p * sorted_p[0]))))
    chosen = order[:keep]
    probs[chosen] = p[chosen] / p[chosen].sum()
    return probs


def sample(logits, temperature, top_k, top_p, min_p, u):
    """Inverse-CDF draw with the uniform number u, tokens visited in sorted order."""
    probs = sampling_probs(logits, temperature, top_k, top_p, min_p)
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))
    return int(order[min(i, len(order) - 1)])


def repetition_penalty(logits, recent_ids, penalty):
    """llama.cpp / CTRL style: positive logits of recent tokens divided by penalty,
    negative ones multiplied by it."""
    out = np.array(logits, dtype=np.float64)
    ids = np.unique(np.asarray(recent_ids, dtype=np.int64))
    if len(ids) and penalty != 1.0:
        sel = out[ids]
        out[ids] = np.where(sel > 0, sel / penalty, sel * penalty)
    return out


# ---------------------------------------------------------------- RoPE tables


def rope_frequencies(hd, theta, scaling=None):
    """Inverse frequencies theta^(-2i/hd), i < hd/2, with optional Llama-3 or linear scaling."""
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling.get("factor", 1.0))
    if kind in ("default", None):
        return inv
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = np.clip((old_ctx / wavelen - low) / (high - low), 0.0, 1.0)
        scaled = (1 - smooth) * inv / factor + smooth * inv
        return np.where(wavelen < old_ctx / high, inv,
                        np.where(wavelen > old_ctx / low, inv / factor, scaled))
    raise ModelFormatError(f"rope_scaling type {kind!r} is not supported "
                           "(supported: linear, llama3)")


def rope_tables(hd, seq_len, theta, scaling=None):
    """cos, sin of shape [seq_len, hd/2] as float32, for the rope op."""
    angles = np.outer(np.arange(seq_len, dtype=np.float64), rope_frequencies(hd, theta, scaling))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ---------------------------------------------------------------- quantization


def quantize_groups(w, group):
    """Symmetric group-wise int8 of the flattened w: scale = max|w|/127, q = round(w/scale)."""
    flat = np.asarray(w, dtype=np.float32).reshape(-1, group)
    scale = np.abs(flat).max(axis=1) / 127.0
    safe = np.where(scale == 0, 1.0, scale)
    q = np.clip(np.round(flat / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(np.shape(w)), scale.astype(np.float32)


def dequantize_groups(q, scales, group):
    """Inverse of quantize_groups: w = q * scale of its group (flattened order)."""
    flat = np.asarray(q, dtype=np.float32).reshape(-1, group)
    return (flat * np.asarray(scales, dtype=np.float32)[:, None]).reshape(np.shape(q))


def dequantize_gguf_q8_0(raw):
    """GGUF Q8_0 blocks (f16 d, 32 x int8) -> float32 values."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def _nibbles(qs):
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def dequantize_gguf_q4_0(raw):
    """GGUF Q4_0 blocks (f16 d, 16 bytes of nibbles) -> d * (q - 8)."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * (_nibbles(blocks[:, 2:]) - 8.0)).reshape(-1)


def dequantize_gguf_q4_1(raw):
    """GGUF Q4_1 blocks (f16 d, f16 m, 16 bytes of nibbles) -> d * q + m."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    return (d * _nibbles(blocks[:, 4:]) + m).reshape(-1)
