"""Element-wise and per-row ops of core/ops.py as Triton kernels.

Every kernel takes strides, so it works on the column views the executor hands it (q, k, v
of one fused qkv output; gate and up of one fused w1|w3 output). Math is float32; results
are stored in the output's dtype. Each kernel starts with pdl_start (see device.pdl_enabled).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from .device import pdl_enabled

ROW_BLOCK = 1024         # columns per program of the element-wise kernels
LOG2E = tl.constexpr(1.4426950408889634)      # softmaxes run on exp2: e^x = 2^(x log2 e)


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """Let the next kernel launch now; wait until the previous one's results are visible."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


def launch(kernel, grid, *args, device, **meta):
    pdl = pdl_enabled(device)
    kernel[grid](*args, PDL=pdl, launch_pdl=pdl, **meta)


@triton.jit
def _embedding_kernel(out_ptr, table_ptr, ids_ptr, D, s_out, s_tab, BLOCK: tl.constexpr,
                      PDL: tl.constexpr):
    pdl_start(PDL)
    t, cb = tl.program_id(0), tl.program_id(1)
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(ids_ptr + t).to(tl.int64)
    val = tl.load(table_ptr + row * s_tab + cols, mask=cols < D)
    tl.store(out_ptr + t * s_out + cols, val.to(out_ptr.dtype.element_ty), mask=cols < D)


def embedding(out, table, ids):
    T, D = out.shape
    launch(_embedding_kernel, (T, triton.cdiv(D, ROW_BLOCK)), out, table, ids, D,
           out.stride(0), table.stride(0), BLOCK=ROW_BLOCK, device=out.device)


@triton.jit
def _rmsnorm_kernel(out_ptr, x_ptr, w_ptr, D, eps, s_out, s_x, BLOCK: tl.constexpr,
                    PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + t * s_x + cols, mask=cols < D, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * s_out + cols, (x * inv * w).to(out_ptr.dtype.element_ty),
             mask=cols < D)


def rmsnorm(out, x, weight, eps):
    T, D = x.shape
    block = triton.next_power_of_2(D)
    launch(_rmsnorm_kernel, (T,), out, x, weight, D, float(eps), out.stride(0), x.stride(0),
           BLOCK=block, num_warps=min(16, max(1, block // 512)), device=out.device)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, H, NH, sq_t, sq_h, sk_t, sk_h, s_tab,
                 HD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                 PDL: tl.constexpr):
    """A block of heads of one token; heads below H are q's, the rest k's."""
    t = tl.program_id(0)
    p = tl.load(pos_ptr) + t                 # the host wrote pos before the step: read it early
    i = tl.arange(0, BLOCK_D // 2)
    c = tl.load(cos_ptr + p * s_tab + i, mask=i < HD // 2, other=0.0)
    s = tl.load(sin_ptr + p * s_tab + i, mask=i < HD // 2, other=0.0)
    pdl_start(PDL)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    base = tl.where((heads < H)[:, None], q_ptr + t * sq_t + heads[:, None] * sq_h,
                    k_ptr + t * sk_t + (heads[:, None] - H) * sk_h) + d[None, :]
    mask = (heads < NH)[:, None] & (d < HD)[None, :]
    x = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    even, odd = tl.split(tl.reshape(x, (BLOCK_H, BLOCK_D // 2, 2)))
    out = tl.join(even * c[None, :] - odd * s[None, :], even * s[None, :] + odd * c[None, :])
    tl.store(base, tl.reshape(out, (BLOCK_H, BLOCK_D)).to(q_ptr.dtype.element_ty), mask=mask)


def rope(q, k, pos, cos, sin):
    T, H, hd = q.shape
    assert q.stride(2) == 1 and k.stride(2) == 1, "rope needs unit stride along the head"
    nh, block_h = H + k.shape[1], 8
    launch(_rope_kernel, (T, triton.cdiv(nh, block_h)), q, k, pos, cos, sin, H, nh,
           q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), HD=hd,
           BLOCK_H=block_h, BLOCK_D=triton.next_power_of_2(hd), device=q.device)


@triton.jit
def _silu_mul_kernel(out_ptr, g_ptr, u_ptr, N, s_out, s_g, s_u, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    pdl_start(PDL)
    t, cb = tl.program_id(0), tl.program_id(1)
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(g_ptr + t * s_g + cols, mask=cols < N).to(tl.float32)
    u = tl.load(u_ptr + t * s_u + cols, mask=cols < N).to(tl.float32)
    tl.store(out_ptr + t * s_out + cols, (g * tl.sigmoid(g) * u).to(out_ptr.dtype.element_ty),
             mask=cols < N)


def silu_mul(out, gate, up):
    T, N = out.shape
    launch(_silu_mul_kernel, (T, triton.cdiv(N, ROW_BLOCK)), out, gate, up, N, out.stride(0),
           gate.stride(0), up.stride(0), BLOCK=ROW_BLOCK, device=out.device)


@triton.jit
def _add_kernel(out_ptr, a_ptr, b_ptr, N, s_out, s_a, s_b, BLOCK: tl.constexpr,
                PDL: tl.constexpr):
    pdl_start(PDL)
    t, cb = tl.program_id(0), tl.program_id(1)
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(a_ptr + t * s_a + cols, mask=cols < N).to(tl.float32)
    b = tl.load(b_ptr + t * s_b + cols, mask=cols < N).to(tl.float32)
    tl.store(out_ptr + t * s_out + cols, (a + b).to(out_ptr.dtype.element_ty), mask=cols < N)


def add(out, a, b):
    T, N = out.shape
    launch(_add_kernel, (T, triton.cdiv(N, ROW_BLOCK)), out, a, b, N, out.stride(0),
           a.stride(0), b.stride(0), BLOCK=ROW_BLOCK, device=out.device)


@triton.jit
def _advance_kernel(pos_ptr, ids_ptr, picked_ptr, R, PDL: tl.constexpr):
    pdl_start(PDL)
    p = tl.load(pos_ptr)
    tl.store(picked_ptr + p % R, tl.load(ids_ptr))
    tl.store(pos_ptr, p + 1)


def advance(pos, ids, picked):
    launch(_advance_kernel, (1,), pos, ids, picked, picked.shape[0], device=pos.device,
           num_warps=1)
