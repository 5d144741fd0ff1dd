"""linear, rmsnorm_linear, linear_add and rmsnorm_swiglu: out = [residual +] norm?(x) @ W^T
(rmsnorm_swiglu: silu(gate) * up of the two halves of that product).

One token (decode) streams W once through a GEMV whose programs each own a few rows: it is
bound by memory bandwidth, so each program keeps two weight tiles in flight, the first one
issued before it waits for the previous kernel (PDL); weights are read once per step, so
their loads are marked evict-first (L2 keeps activations and the KV cache). The RMSNorm of
the input is fused (x * weight, the row's inverse RMS applied to the sum), so are the
residual add and the SwiGLU (a program owns matching gate and up rows). More tokens
(prefill) go through a tiled tl.dot GEMM; there the RMSNorm runs first into a scratch
buffer, since scaling the tiles in registers would keep them off the pipelined
shared-memory path of the tensor cores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .device import interpreting, pdl_enabled
from .kernels import rmsnorm, silu_mul

_scratch: dict = {}       # prefill intermediates (see _scratch_for)
ONE_TILE_K = 4096


@triton.jit
def _gemv_kernel(out_ptr, x_ptr, w_ptr, g_ptr, r_ptr, N, K, s_w, eps,
                 NORM: tl.constexpr, ADD: tl.constexpr, SWIGLU: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
                 PDL: tl.constexpr):
    """SWIGLU: W holds 2N rows (gate, then up); out = silu(gate) * up, N wide.
    ONE_TILE (K <= BLOCK_K): the program's whole weight block loads before the PDL wait."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * s_w
    u_rows = w_rows + N.to(tl.int64) * s_w
    rmask = rows[:, None] < N
    w = tl.load(w_rows + cols[None, :], mask=rmask & (cols[None, :] < K), other=0.0,
                eviction_policy="evict_first")
    if SWIGLU:
        u = tl.load(u_rows + cols[None, :], mask=rmask & (cols[None, :] < K), other=0.0,
                    eviction_policy="evict_first")
    if PDL:                         # weights depend on no kernel: they stream while it drains
        gdc_launch_dependents()
        gdc_wait()
    if ONE_TILE:
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        ss = x * x
        if NORM:
            x = x * tl.load(g_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        acc = w.to(tl.float32) * x[None, :]
        if SWIGLU:
            acc_u = u.to(tl.float32) * x[None, :]
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        ss = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            nxt = k + BLOCK_K           # the next tile loads while this one is summed
            nmask = rmask & (nxt[None, :] < K)
            w_next = tl.load(w_rows + nxt[None, :], mask=nmask, other=0.0,
                             eviction_policy="evict_first")
            if SWIGLU:
                u_next = tl.load(u_rows + nxt[None, :], mask=nmask, other=0.0,
                                 eviction_policy="evict_first")
            x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            if NORM:
                ss += x * x
                x = x * tl.load(g_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            acc += w.to(tl.float32) * x[None, :]
            w = w_next
            if SWIGLU:
                acc_u += u.to(tl.float32) * x[None, :]
                u = u_next
    y = tl.sum(acc, axis=1)
    if NORM:
        inv = tl.rsqrt(tl.sum(ss, axis=0) / K + eps)
        y = y * inv
    if SWIGLU:
        y_u = tl.sum(acc_u, axis=1)
        if NORM:
            y_u = y_u * inv
        y = y * tl.sigmoid(y) * y_u
    if ADD:
        y += tl.load(r_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def _gemm_kernel(out_ptr, x_ptr, w_ptr, r_ptr, M, N, K, s_out, s_x, s_w, s_r,
                 ADD: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """Launched without PDL: its resident blocks would hold shared memory while waiting."""
    pid = tl.program_id(0)                           # grouped order: neighbours share W tiles
    n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
    pid_n = (pid % (GROUP_M * n_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * s_x
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * s_w
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(x_rows + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K), other=0.0)
        b = tl.load(w_rows + k[None, :], mask=(rn[:, None] < N) & (k[None, :] < K), other=0.0)
        if DOT_F32:        # the interpreter multiplies bf16 bit patterns, not values
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if ADD:
        acc += tl.load(r_ptr + rm[:, None] * s_r + rn[None, :], mask=mask, other=0.0).to(
            tl.float32)
    tl.store(out_ptr + rm[:, None] * s_out + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask)


def _gemv_config(N, K):
    """(BLOCK_N, BLOCK_K, num_warps) for one token, from a sweep of the Llama shapes. Rows up
    to ONE_TILE_K wide load whole, so the next GEMV can stream them during the kernels
    before it."""
    if interpreting():
        return 16, min(128, triton.next_power_of_2(K)), 4
    if K <= ONE_TILE_K:
        return 2, triton.next_power_of_2(K), 4
    if N * K >= 1 << 26:
        return 2, 2048, 4
    return 4, 1024, 4


def _gemm_config(M, N, fp32):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for prefill."""
    if interpreting():
        return 16, 32, 32, 4, 1
    if fp32:
        return 64, 64, 32, 4, 3
    if triton.cdiv(M, 128) * triton.cdiv(N, 128) >= 120:      # big tiles still fill the GPU
        return 128, 128, 64, 8, 4
    return 64, 64, 64, 4, 4


def _scratch_for(name, shape, like):
    """A scratch tensor for prefill, kept (and grown) for the next one; decode never uses it."""
    key = (name, like.device, like.dtype)
    numel = shape[0] * shape[1]
    buf = _scratch.get(key)
    if buf is None or buf.numel() < numel:
        buf = _scratch[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def _run(out, x, w, g=None, eps=0.0, residual=None, swiglu=False):
    W = w.parts["w"]
    M, K = x.shape
    N = W.shape[0] // 2 if swiglu else W.shape[0]
    assert x.stride(1) == 1 and W.stride(1) == 1 and out.stride(1) == 1, "rows must be dense"
    pdl = pdl_enabled(out.device)
    add = residual is not None
    residual = residual if add else out
    if M == 1:
        bn, bk, warps = _gemv_config(W.shape[0], K)
        bn = max(1, bn // 2) if swiglu else bn           # gate and up rows: the same bytes
        _gemv_kernel[(triton.cdiv(N, bn),)](
            out, x, W, x if g is None else g, residual, N, K, W.stride(0), float(eps),
            NORM=g is not None, ADD=add, SWIGLU=swiglu, BLOCK_N=bn, BLOCK_K=bk,
            ONE_TILE=K <= bk, PDL=pdl, num_warps=warps, launch_pdl=pdl)
        return
    if g is not None:
        h = _scratch_for("normed", x.shape, x)
        rmsnorm(h, x, g, eps)
        x = h
    if swiglu:
        gu = _scratch_for("gate_up", (M, 2 * N), out)
        _run(gu, x, w)
        silu_mul(out, gu[:, :N], gu[:, N:])
        return
    fp32 = W.element_size() == 4
    bm, bn, bk, warps, stages = _gemm_config(M, N, fp32)
    _gemm_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        out, x, W, residual, M, N, K, out.stride(0), x.stride(0), W.stride(0),
        residual.stride(0), ADD=add, PRECISION="ieee" if fp32 else "tf32",
        DOT_F32=interpreting(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        num_warps=warps, num_stages=stages)


def linear(out, x, w):
    _run(out, x, w)


def rmsnorm_linear(out, x, weight, eps, w):
    _run(out, x, w, g=weight, eps=eps)


def linear_add(out, x, w, residual):
    _run(out, x, w, residual=residual)


def rmsnorm_swiglu(out, x, weight, eps, w):
    _run(out, x, w, g=weight, eps=eps, swiglu=True)
