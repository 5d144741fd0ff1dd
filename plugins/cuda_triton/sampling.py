"""The `sample` op on the GPU, exactly as core.reference.sample defines it, with no sort.

Tokens are ranked by a distinct int64 order key (logit descending, then token id
ascending: the reference's stable sort). Every rule of the sampler keeps a prefix of that
order, and a prefix is "key >= t": top-k, top-p and the inverse-CDF draw are each a bitwise
search for the largest threshold t whose prefix still meets the rule (one pass over the
logits per bit), and min-p keeps tokens whose weight exp((x - max) / T) reaches min_p.
Weights are float32, summed in float64: only a u within float32 rounding of the boundary
between two tokens can pick the neighbour the float64 reference would not.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .device import interpreting, pdl_enabled
from .kernels import pdl_start


@triton.jit
def _order_key(x, idx, IDB: tl.constexpr):
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)          # monotone in x
    return ((key.to(tl.int64) + 2147483648) << IDB) | ((1 << IDB) - 1 - idx).to(tl.int64)


@triton.jit
def _prefix_stats(x_ptr, V, lmax, coef, lo, emin, IDB: tl.constexpr, BLOCK: tl.constexpr):
    """Count, weight sum and smallest key of tokens with key >= lo and weight >= emin."""
    cnt = tl.zeros([BLOCK], tl.int32)
    mass = tl.zeros([BLOCK], tl.float64)
    kmin = tl.full([BLOCK], 9223372036854775807, tl.int64)
    for v0 in range(0, V, BLOCK):
        idx = v0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        e = tl.exp2((x - lmax) * coef)
        key = _order_key(x, idx, IDB)
        keep = (idx < V) & (key >= lo) & (e >= emin)
        cnt += keep.to(tl.int32)
        mass += tl.where(keep, e, 0.0).to(tl.float64)
        kmin = tl.minimum(kmin, tl.where(keep, key, 9223372036854775807))
    return tl.sum(cnt, axis=0), tl.sum(mass, axis=0), tl.min(kmin, axis=0)


@triton.jit
def _search(x_ptr, V, lmax, coef, lo, emin, need, WHAT: tl.constexpr, IDB: tl.constexpr,
            BLOCK: tl.constexpr):
    """The largest t whose prefix (key >= max(t, lo), weight >= emin) still meets the need:
    WHAT 0: holds at least `need` tokens; 1: weighs at least `need`; 2: weighs more."""
    t = lo * 0
    for i in range(32 + IDB):
        cand = t | (t * 0 + 1) << (31 + IDB - i)
        cnt, mass, _ = _prefix_stats(x_ptr, V, lmax, coef, tl.maximum(cand, lo), emin, IDB,
                                     BLOCK)
        if WHAT == 0:
            ok = cnt >= need
        elif WHAT == 1:
            ok = mass >= need
        else:
            ok = mass > need
        t = tl.where(ok, cand, t)
    return t


@triton.jit
def _sample_kernel(out_ptr, x_ptr, params_ptr, u_ptr, V, IDB: tl.constexpr,
                   BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    temp = tl.load(params_ptr)
    top_k = tl.load(params_ptr + 1).to(tl.int32)
    top_p = tl.load(params_ptr + 2)
    min_p = tl.load(params_ptr + 3)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK], tl.int32)
    for v0 in range(0, V, BLOCK):
        idx = v0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        arg = tl.where(x > best, idx, arg)
        best = tl.maximum(best, x)
    lmax = tl.max(best, axis=0)
    tok = tl.min(tl.where(best == lmax, arg, V), axis=0)
    if temp > 0:
        coef = 1.4426950408889634 / temp
        lo = tl.zeros([1], tl.int64).sum(axis=0)
        if (top_k > 0) & (top_k < V):
            lo = _search(x_ptr, V, lmax, coef, lo, 0.0, top_k, 0, IDB, BLOCK)
        if top_p < 1.0:
            _, kept, _ = _prefix_stats(x_ptr, V, lmax, coef, lo, 0.0, IDB, BLOCK)
            lo = _search(x_ptr, V, lmax, coef, lo, 0.0, top_p * kept, 1, IDB, BLOCK)
        emin = tl.minimum(tl.maximum(min_p, 0.0), 1.0)
        _, kept, kmin = _prefix_stats(x_ptr, V, lmax, coef, lo, emin, IDB, BLOCK)
        target = tl.load(u_ptr) * kept
        t = _search(x_ptr, V, lmax, coef, lo, emin, target, 2, IDB, BLOCK)
        t = tl.where(kept > target, t, kmin)          # u*kept rounded up to kept: last token
        tok = ((1 << IDB) - 1 - (t & ((1 << IDB) - 1))).to(tl.int32)
    tl.store(out_ptr, tok)


def sample(out, logits, params, u):
    V = logits.shape[-1]
    assert logits.stride(-1) == 1
    block = min(256 if interpreting() else 2048, triton.next_power_of_2(V))
    _sample_kernel[(1,)](out, logits, params, u, V, IDB=max(1, (V - 1).bit_length()),
                         BLOCK=block, PDL=pdl_enabled(out.device), num_warps=8,
                         launch_pdl=pdl_enabled(out.device))
