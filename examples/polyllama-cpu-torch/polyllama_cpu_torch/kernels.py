"""cpu:torch kernels: one vectorized torch expression per op of polyllama's op set.

Each kernel writes into the preallocated `out` and accepts strided views (q, k and v are
column slices of one fused qkv buffer). Reductions and softmax run in float32 whatever the
compute dtype, so bfloat16 only rounds what is stored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding(out, table, ids):
    torch.index_select(table, 0, ids.long(), out=out)


def rmsnorm(out, x, weight, eps):
    xf = x.float()
    inv = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    torch.mul(xf * inv, weight, out=out)


def linear(out, x, w):
    torch.mm(x, w.parts["w"].t(), out=out)


def linear_add(out, x, w, residual):
    if out.data_ptr() == residual.data_ptr():        # out aliases residual: accumulate in place
        out.addmm_(x, w.parts["w"].t())
    else:
        torch.addmm(residual, x, w.parts["w"].t(), out=out)


def rope(q, k, pos, cos, sin):
    p, T = int(pos[0]), q.shape[0]
    c, s = cos[p:p + T, None, :], sin[p:p + T, None, :]
    for x in (q, k):
        even, odd = x[..., 0::2], x[..., 1::2]
        e, o = even.float(), odd.float()
        new_even, new_odd = e * c - o * s, e * s + o * c    # both before writing either
        even.copy_(new_even)
        odd.copy_(new_odd)


def _normed_linear(out, x, weight, eps, w):
    """linear(rmsnorm(x)), the start of the composed optional ops below."""
    normed = torch.empty_like(x)
    rmsnorm(normed, x, weight, eps)
    linear(out, normed, w)


def rmsnorm_linear_rope(out, x, weight, eps, w, pos, cos, sin, heads):
    """An optional op (the qkv projection with its q and k heads rotated), composed here from
    the kernels above; a GPU backend does it in one GEMV."""
    _normed_linear(out, x, weight, eps, w)
    turned = out[:, :heads * 2 * cos.shape[1]].unflatten(1, (heads, -1))
    rope(turned, turned[:, :0], pos, cos, sin)


def rmsnorm_linear_argmax(ids, logits, x, weight, eps, w):
    """An optional op (a greedy step's classifier and pick), composed from the kernels here."""
    _normed_linear(logits, x, weight, eps, w)
    argmax(ids, logits)


def attention(out, q, k, v, k_cache, v_cache, pos, scale):
    p, (T, H, hd), KV = int(pos[0]), q.shape, k.shape[1]
    n, g = p + T, H // KV
    k_cache[p:n].copy_(k)
    v_cache[p:n].copy_(v)
    qg = q.float().reshape(T, KV, g, hd).permute(1, 2, 0, 3)           # [KV, g, T, hd]
    keys = k_cache[:n].float().permute(1, 2, 0).unsqueeze(1)           # [KV, 1, hd, n]
    scores = (qg @ keys) * scale                                       # [KV, g, T, n]
    if T > 1:                                   # key j is visible to query t iff j <= p + t
        hidden = torch.ones(T, n, dtype=torch.bool).triu_(p + 1)
        scores.masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    values = v_cache[:n].float().permute(1, 0, 2).unsqueeze(1)         # [KV, 1, n, hd]
    ctx = probs @ values                                               # [KV, g, T, hd]
    out.copy_(ctx.permute(2, 0, 1, 3).reshape(T, H, hd))


def silu_mul(out, gate, up):
    torch.mul(F.silu(gate.float()), up, out=out)


def add(out, a, b):
    torch.add(a, b, out=out)


def argmax(out, logits):
    out.copy_(torch.argmax(logits, dim=-1))
