"""linear_add_ffn: the second half of a layer for one token, x += attn @ Wo^T, then
x += W2 (silu(W1 xn) * (W3 xn)) with xn = rmsnorm(x), on a float32 residual stream.

As two GEMVs, the FFN pays a link between them: the w2 GEMV only launches once the w1|w3
GEMV's last programs have started, and then streams from a standing start (perf-notes,
attempts 18 and 20). Here the FFN is one kernel, split over its hidden width: a program
walks chunks of R hidden rows f (chunk p, p + P, ...), computes h[f] from their rows of W1
and W3, multiplies them into the same rows of W2^T (w2 is stored column-major, so they are
contiguous) and keeps its share of W2 h in registers. At the end it adds that share into x
with float32 atomics: P rows of adds a layer. A chunk's tiles load while the one before is
summed, the first before the PDL wait. Since every program reads the RMSNorm input while
others may already be adding into x, the o GEMV stores its result twice: into x and into
the scratch the FFN reads.

Whole decode steps on an H100 (benchmarks/ffn_persistent.py, perf-notes attempt 40):
TinyLlama-1.1B 833-836 -> 804-814 us, Llama-2-7B 4,682-4,724 -> 4,616-4,618 us, SmolLM2-135M
398 -> 390 us. On an H200 it only pays for long streams (see _pays); elsewhere the executor
runs the two GEMVs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from polyllama.device import DTYPE_SIZES

from .device import multiprocessors, pdl_enabled, peak_bandwidth
from .kernels import pdl_start
from .linear import _column_major, _run

TILE_BYTES = 16384        # a chunk's W1, W3 and W2^T tiles: 16 KB each


@triton.jit
def _tiles(w13_ptr, w2t_ptr, c, F, K, R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Chunk c's rows of W1, W3 and W2^T ([R, K] each; masked off past the hidden width).
    Weights are read once a step (evict first)."""
    f = c * R + tl.arange(0, R)
    cols = tl.arange(0, BLOCK_K)
    m = (f[:, None] < F) & (cols[None, :] < K)
    tile = f.to(tl.int64)[:, None] * K + cols[None, :]
    w1 = tl.load(w13_ptr + tile, mask=m, other=0.0, eviction_policy="evict_first")
    w3 = tl.load(w13_ptr + F.to(tl.int64) * K + tile, mask=m, other=0.0,
                 eviction_policy="evict_first")
    w2 = tl.load(w2t_ptr + tile, mask=m, other=0.0, eviction_policy="evict_first")
    return w1, w3, w2


@triton.jit
def _normed_input(x_ptr, g_ptr, cols, K, eps):
    """(x * weight, 1 / rms(x)) of the row at x_ptr over columns cols (the RMSNorm of x is
    their product), in float32."""
    cmask = cols < K
    x = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
    return x * tl.load(g_ptr + cols, mask=cmask, other=0.0).to(tl.float32), inv


@triton.jit
def _chunk(acc, w1, w3, w2, xg, inv):
    """acc + W2[:, chunk] h[chunk] from a chunk's tiles, h = silu(W1 n) * (W3 n) with
    n = xg * inv, h rounded to the weights' dtype as the GEMV path stores it."""
    a = tl.sum(w1.to(tl.float32) * xg[None, :], axis=1) * inv
    b = tl.sum(w3.to(tl.float32) * xg[None, :], axis=1) * inv
    h = (a * tl.sigmoid(a) * b).to(w1.dtype).to(tl.float32)
    return acc + tl.sum(w2.to(tl.float32) * h[:, None], axis=0)


@triton.jit
def _ffn_kernel(x_ptr, xn_ptr, g_ptr, w13_ptr, w2t_ptr, F, K, eps, R: tl.constexpr,
                BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """x += W2 (silu(W1 n) * (W3 n)) over the program's chunks, n = rmsnorm(xn_ptr's row)."""
    pid, P = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, BLOCK_K)
    w1, w3, w2 = _tiles(w13_ptr, w2t_ptr, pid, F, K, R, BLOCK_K)
    pdl_start(PDL)
    xg, inv = _normed_input(xn_ptr, g_ptr, cols, K, eps)
    acc = tl.zeros([BLOCK_K], tl.float32)
    for c in tl.range(pid, tl.cdiv(F, R), P, num_stages=1):
        n1, n3, n2 = _tiles(w13_ptr, w2t_ptr, c + P, F, K, R, BLOCK_K)
        acc = _chunk(acc, w1, w3, w2, xg, inv)
        w1, w3, w2 = n1, n3, n2
    tl.atomic_add(x_ptr + cols, acc, mask=cols < K, sem="relaxed")


def _ffn_config(D, F, itemsize, sms):
    """(R, num_warps, programs), from sweeps of whole decode steps on an H100: 16 KB tiles, a
    warp for every 256 columns, a program a multiprocessor; where that leaves a program
    fewer than two chunks (SmolLM2's FFN), a program a chunk."""
    block = triton.next_power_of_2(D)
    R = min(16, max(1, TILE_BYTES // (block * itemsize)))
    chunks = triton.cdiv(F, R)
    return R, min(16, max(1, block // 256)), chunks if chunks <= 2 * sms else sms


def _pays(device, config, dtype):
    """Whether the one-kernel FFN beats the two GEMVs. Whole decode steps (perf-notes attempt
    40): on an H100, whose memory feeds a multiprocessor ~25 GB/s at peak, it wins on every
    shape timed. On an H200 (~36 GB/s) one program a multiprocessor with one chunk in flight
    keeps too few bytes on their way: it only wins where each program streams many chunks
    (Llama-2-7B's 42), and loses where it streams 11 (TinyLlama, +3%) or 16 (Llama-3.2-1B,
    +6%); SmolLM2's, a chunk a program, ties."""
    device = device.torch_device
    peak = peak_bandwidth(device)
    R, _, programs = _ffn_config(config.dim, config.hidden_dim, DTYPE_SIZES[dtype],
                                 multiprocessors(device))
    chunks = triton.cdiv(config.hidden_dim, R) / programs
    return peak is None or peak / multiprocessors(device) <= 30e9 or chunks >= 32


def linear_add_ffn(x, attn, wo, weight, eps, w13, w2, scratch):
    W13, W2 = w13.parts["w"], w2.parts["w"]
    D, F = W2.shape
    assert (x.shape == scratch.shape == (1, D) and x.dtype == scratch.dtype == torch.float32
            and x.is_contiguous() and scratch.is_contiguous()), (
        "linear_add_ffn takes one token on a float32 residual stream")
    assert _column_major(W2) and W13.stride(1) == 1, "w2 must be column-major, w13 row-major"
    _run(x, attn, wo, residual=x, copy=scratch)
    R, warps, programs = _ffn_config(D, F, W13.element_size(), multiprocessors(x.device))
    pdl = pdl_enabled(x.device)
    _ffn_kernel[(programs,)](x, scratch, weight, W13, W2.t(), F, D, float(eps), R=R,
                             BLOCK_K=triton.next_power_of_2(D), PDL=pdl, launch_pdl=pdl,
                             num_warps=warps)


linear_add_ffn.pays = _pays
