"""Does a TMA ring per GEMV kernel, filled before the PDL wait, beat the chain of GEMV kernels?

TinyLlama's decode GEMVs (the data flow of `persistent_chain.py`), each matrix its own
Gluon kernel (Hopper, Triton >= 3.6), one program per multiprocessor, launched with
programmatic dependent launch and replayed as a CUDA graph:
  - before it waits for the previous kernel, each program issues TMA loads of its first NS
    weight tiles ([BN, 256], a fixed share of the matrix) into shared memory, so up to
    96 KB per multiprocessor stream while the previous kernel finishes (the GEMV kernels
    of cuda:triton hold one tile per program in registers);
  - after the wait it stages the input vector in shared memory (rmsnorm, or
    silu(gate) * up) and refills the ring as it consumes it; row blocks split between
    programs are summed by atomics into float32 outputs zeroed at the start of the step.
A program takes at most half a multiprocessor's shared memory and 128 registers per
thread, so the next kernel's program fits beside it. The result is checked against a
float64 reference. "no PDL" launches the same kernels without programmatic dependent
launch. --attention runs cuda:triton's decode attention (TinyLlama's heads, position 512,
on data of its own) before every o GEMV in both chains, as the decode step does.

    python benchmarks/tma_gemv_chain.py [--attention]
"""
from __future__ import annotations

import argparse

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from polyllama.plugins.cuda_triton.attention import attention

import persistent_chain
from tma_ring_chain import EPS, init_mbarriers, stage_input
from timing import graph_us

BK = 256


@gluon.jit
def _pdl_start(c):
    """Let the next kernel launch, then wait for the previous one to finish (programmatic
    dependent launch)."""
    gl.inline_asm_elementwise(
        "griddepcontrol.launch_dependents; griddepcontrol.wait; mov.u32 $0, 0;", "=r,r", [c],
        dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _share(c, P, N, KC, BN: gl.constexpr):
    """Program c's tiles [t0, t1) of an [N, KC * BK] matrix, numbered row block major."""
    T = gl.cdiv(N, BN) * KC
    return (c * T) // P, ((c + 1) * T) // P


@gluon.jit
def _issue(desc, ring, ready, t, row_base, KC: gl.constexpr, BN: gl.constexpr,
           BK: gl.constexpr, slot):
    """TMA load of tile t into ring slot `slot`, completing on its mbarrier."""
    bar = ready.index(slot)
    mbarrier.expect(bar, desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row_base + (t // KC) * BN, (t % KC) * BK], bar,
                                    ring.index(slot))


@gluon.jit
def _gemv_ring(desc, in_ptr, g_ptr, out_ptr, res_ptr, row_base, N, K: gl.constexpr,
               MODE: gl.constexpr, RES: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
               NS: gl.constexpr, KCP: gl.constexpr, PDL: gl.constexpr):
    """out[rows] (+)= W[row_base + rows] @ x for this program's tiles. MODE 0: x =
    rmsnorm(in) * g; 1: x = in; 2: x = silu(in[:K]) * in[K:]. RES: out also gets res."""
    NW: gl.constexpr = gl.num_warps()
    TILE: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [NW, 1], [1, 0])
    XL: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [NW, 1], [1, 0])
    COL: gl.constexpr = gl.SliceLayout(0, TILE)
    KC: gl.constexpr = K // BK
    ring = gl.allocate_shared_memory(gl.bfloat16, [NS, BN, BK], desc.layout)
    ready = init_mbarriers(NS)
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [KCP, BK],
                                       gl.SwizzledSharedLayout(1, 1, 1, [0]))
    c = gl.program_id(0)
    t0, t1 = _share(c, gl.num_programs(0), N, KC, BN)
    # the first NS tiles start streaming before this kernel waits for the previous one
    for i in gl.static_range(NS):
        if t0 + i < t1:
            _issue(desc, ring, ready, t0 + i, row_base, KC, BN, BK, i)
    if PDL:
        _pdl_start(c)
    rstd = stage_input(x_smem, in_ptr, g_ptr, EPS, MODE, K, XL, KCP, BK)
    gl.thread_barrier()
    rows0 = gl.arange(0, BN, layout=gl.SliceLayout(1, TILE))
    g = 0
    t = t0
    while t < t1:
        rb = t // KC
        kc0 = t - rb * KC
        kc1 = gl.minimum(KC, kc0 + t1 - t)
        acc = gl.full([BN, BK], 0.0, gl.float32, layout=TILE)
        for kc in range(kc0, kc1):
            slot = g % NS
            x = x_smem.index(kc).load(COL)
            mbarrier.wait(ready.index(slot), (g // NS) & 1)
            w = ring.index(slot).load(TILE)
            gl.thread_barrier()
            if t0 + g + NS < t1:
                _issue(desc, ring, ready, t0 + g + NS, row_base, KC, BN, BK, slot)
            acc += w.to(gl.float32) * gl.expand_dims(x.to(gl.float32), 0)
            g += 1
        rows = rb * BN + rows0
        y = gl.sum(acc, axis=1) * rstd
        if RES:
            if kc0 == 0:   # one owner per row block adds the residual
                y += gl.load(res_ptr + rows, mask=rows < N, other=0.0, cache_modifier=".cg")
        gl.atomic_add(out_ptr + rows, y, mask=rows < N, sem="relaxed")
        t += kc1 - kc0


def decode_attention(heads=32, kv_heads=4, head_dim=64, position=512, context=2048):
    """A stand-in for the step's attention: the cuda:triton decode kernel on its own data."""
    dev, bf = torch.device("cuda"), torch.bfloat16
    q = torch.randn(1, heads, head_dim, device=dev, dtype=bf)
    k, v = (torch.randn(1, kv_heads, head_dim, device=dev, dtype=bf) for _ in range(2))
    k_cache, v_cache = (torch.randn(context, kv_heads, head_dim, device=dev, dtype=bf)
                        for _ in range(2))
    pos = torch.tensor([position], device=dev, dtype=torch.int32)
    out = torch.empty_like(q)
    return lambda: attention(out, q, k, v, k_cache, v_cache, pos, head_dim ** -0.5)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attention", action="store_true",
                   help="decode attention before every o GEMV, as in the decode step")
    args = p.parse_args(argv)
    before_o = decode_attention() if args.attention else None
    w = persistent_chain.TinyLlamaGemvs(tiny=False)
    L, D, F, V, QKV = w.shape
    print(f"{torch.cuda.get_device_name()}: copy {w.bandwidth / 1e12:.3f} TB/s, weights "
          f"{w.nbytes / 1e9:.3f} GB, floor {w.floor_us:.1f} us")
    us = graph_us(lambda: w.chain(before_o))
    print(f"chain of {4 * L + 1} cuda:triton GEMV kernels, PDL              {us:8.1f} us  "
          f"{100 * w.floor_us / us:5.1f}% of the floor")
    dev = w.x.device
    x0 = torch.randn(D, device=dev, dtype=torch.float64)
    ref = w.reference(x0)
    hbuf = torch.empty(2 * L + 1, D, device=dev, dtype=torch.float32)
    qkv = torch.empty(L, QKV, device=dev, dtype=torch.float32)
    a13 = torch.empty(L, 2 * F, device=dev, dtype=torch.float32)
    logits = torch.empty(V, device=dev, dtype=torch.float32)
    stacked = [t.reshape(-1, t.shape[-1]) for t in (w.wqkv, w.wo, w.w13, w.w2, w.wout)]
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    lay = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)
    for bn, ns, warps in ((32, 6, 8), (32, 5, 4), (16, 12, 8), (64, 3, 8)):
        descs = [TensorDescriptor.from_tensor(t, [bn, BK], lay) for t in stacked]
        dq, do, d13, d2, dout = descs
        for pdl in (True, False):
            def gemv(desc, inp, out, res, row_base, N, K, mode, has_res):
                _gemv_ring[(sms,)](desc, inp, w.g, out, res, row_base, N, K=K, MODE=mode,
                                   RES=has_res, BN=bn, BK=BK, NS=ns,
                                   KCP=triton.next_power_of_2(K // BK), PDL=pdl,
                                   num_warps=warps, maxnreg=128, launch_pdl=pdl)

            def step():
                for t in (hbuf[1:], qkv, a13, logits):
                    t.zero_()
                hbuf[0].copy_(x0)
                for i in range(L):
                    gemv(dq, hbuf[2 * i], qkv[i], hbuf[0], i * QKV, QKV, D, 0, False)
                    if before_o is not None:
                        before_o()
                    gemv(do, qkv[i], hbuf[2 * i + 1], hbuf[2 * i], i * D, D, D, 1, True)
                    gemv(d13, hbuf[2 * i + 1], a13[i], hbuf[0], i * 2 * F, 2 * F, D, 0, False)
                    gemv(d2, a13[i], hbuf[2 * i + 2], hbuf[2 * i + 1], i * D, D, F, 2, True)
                gemv(dout, hbuf[2 * L], logits, hbuf[0], 0, V, D, 0, False)
            step()
            persistent_chain.check_close(logits, ref, persistent_chain.ROUNDED_INPUT_TOL,
                                         f"ring {ns} x [{bn}, {BK}]")
            us = graph_us(step)
            launch = "PDL   " if pdl else "no PDL"
            print(f"ring of {ns:2d} x [{bn:2d}, {BK}], {warps} warps, {launch}"
                  f"                {us:8.1f} us  {100 * w.floor_us / us:5.1f}% of the floor")


if __name__ == "__main__":
    main()
