"""cpu:numpy kernels: vectorized numpy writing into preallocated outputs (see core/ops.py).

Prefill runs whole matrix products over all prompt tokens; nothing loops per token.
"""
from __future__ import annotations

import numpy as np


def embedding(out, table, ids):
    np.take(table, ids, axis=0, out=out)


def rmsnorm(out, x, weight, eps):
    ms = np.einsum("td,td->t", x, x) / x.shape[-1]
    np.multiply(x, (1.0 / np.sqrt(ms + eps))[:, None], out=out)
    out *= weight


def linear(out, x, w):
    np.matmul(x, w.parts["w"].T, out=out)


def linear_add(out, x, w, residual):
    if out is not residual:
        out[...] = residual
    out += x @ w.parts["w"].T


def rope(q, k, pos, cos, sin):
    p, T = int(pos[0]), q.shape[0]
    c, s = cos[p:p + T, None, :], sin[p:p + T, None, :]
    for x in (q, k):
        even, odd = x[..., 0::2], x[..., 1::2]
        e = even.copy()
        even *= c
        even -= odd * s
        odd *= c
        odd += e * s


def attention(out, q, k, v, k_cache, v_cache, pos, scale):
    p, (T, H, hd), KV = int(pos[0]), q.shape, k.shape[1]
    n, g = p + T, H // KV
    k_cache[p:n] = k
    v_cache[p:n] = v
    qg = q.reshape(T, KV, g, hd).transpose(1, 2, 0, 3)            # [KV, g, T, hd]
    scores = qg @ k_cache[:n].transpose(1, 2, 0)[:, None]          # [KV, g, T, n]
    scores *= scale
    if T > 1:                                                      # key j visible to query t iff j <= p + t
        scores[..., np.triu(np.ones((T, n), dtype=bool), k=p + 1)] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    ctx = scores @ v_cache[:n].transpose(1, 0, 2)[:, None]        # [KV, g, T, hd]
    out[...] = ctx.transpose(2, 0, 1, 3).reshape(T, H, hd)


def silu_mul(out, gate, up):
    np.negative(gate, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.divide(gate, out, out=out)
    out *= up


def add(out, a, b):
    np.add(a, b, out=out)


def argmax(out, logits):
    out[...] = np.argmax(logits, axis=-1)
