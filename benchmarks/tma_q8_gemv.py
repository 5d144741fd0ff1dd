"""Would a TMA ring stream q8_0 weights faster than cuda:triton's int8 GEMV?

`--quant int8` decode on cuda:triton streams its int8 GEMVs at 2.0-2.5 TB/s where the
bf16 ones reach 3.8-4.2 (H200, perf notes attempt 13): the kernel is bound by latency at
low occupancy. A TMA ring streamed bf16 weights at the copy bandwidth (attempts 14-15).
This times both on Llama-2-7B's decode shapes (q8_0, groups of 64, y = W x only: no
RMSNorm, residual or SwiGLU epilogue), each as a chain of 6 launches on distinct weights
with programmatic dependent launch, replayed as a CUDA graph:
  - cuda:triton: its q8_0 GEMV kernel;
  - ring: a Gluon kernel (Hopper, Triton >= 3.6), one program per multiprocessor owning
    whole row blocks; before its PDL wait each program issues TMA loads of its first NS
    [BN, 256] int8 tiles and their [BN, 4] scales into shared memory, then refills the ring
    as it consumes it.
Both results are checked against a float64 product of the dequantized weights.

    python benchmarks/tma_q8_gemv.py
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from polyllama.plugins.cuda_triton import linear

from persistent_chain import check_close
from tma_gemv_chain import _pdl_start
from tma_ring_chain import init_mbarriers
from timing import cuda_triton_and_bandwidth, graph_us

GROUP, BKQ, REPS = 64, 256, 6
SHAPES = dict(qkv=(12288, 4096), o=(4096, 4096), w13=(22016, 4096), w2=(4096, 11008),
              classifier=(32000, 4096))


@gluon.jit
def _issue(qdesc, sdesc, ring_q, ring_s, ready, t, KC: gl.constexpr, BN: gl.constexpr,
           BKQ: gl.constexpr, GROUP: gl.constexpr, slot):
    """TMA loads of int8 tile t and its scales into ring slot `slot`."""
    bar = ready.index(slot)
    mbarrier.expect(bar, qdesc.block_type.nbytes + sdesc.block_type.nbytes)
    row = (t // KC) * BN
    k = (t % KC) * BKQ
    tma.async_copy_global_to_shared(qdesc, [row, k], bar, ring_q.index(slot))
    tma.async_copy_global_to_shared(sdesc, [row, k // GROUP], bar, ring_s.index(slot))


@gluon.jit
def _q8_ring_gemv(qdesc, sdesc, x_ptr, out_ptr, N, K: gl.constexpr, GROUP: gl.constexpr,
                  BN: gl.constexpr, BKQ: gl.constexpr, NS: gl.constexpr, KCP: gl.constexpr):
    """out = dequant(W) @ x for this program's whole row blocks."""
    NW: gl.constexpr = gl.num_warps()
    NG: gl.constexpr = BKQ // GROUP
    # [rows, groups, values]: 16 int8 values (16 bytes) per thread
    L3: gl.constexpr = gl.BlockedLayout([1, 1, 16], [32 // (NG * (GROUP // 16)), NG,
                                                     GROUP // 16], [NW, 1, 1], [2, 1, 0])
    SC: gl.constexpr = gl.SliceLayout(2, L3)
    XG: gl.constexpr = gl.SliceLayout(0, L3)
    XL: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [NW, 1], [1, 0])
    KC: gl.constexpr = K // BKQ
    ring_q = gl.allocate_shared_memory(gl.int8, [NS, BN, BKQ], qdesc.layout)
    ring_s = gl.allocate_shared_memory(gl.float32, [NS, BN, NG], sdesc.layout)
    ready = init_mbarriers(NS)
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [KCP, BKQ],
                                       gl.SwizzledSharedLayout(1, 1, 1, [0]))
    c = gl.program_id(0)
    P = gl.num_programs(0)
    NRB = gl.cdiv(N, BN)
    t0 = ((c * NRB) // P) * KC
    t1 = (((c + 1) * NRB) // P) * KC
    for i in gl.static_range(NS):
        if t0 + i < t1:
            _issue(qdesc, sdesc, ring_q, ring_s, ready, t0 + i, KC, BN, BKQ, GROUP, i)
    _pdl_start(c)
    r = gl.arange(0, KCP, layout=gl.SliceLayout(1, XL))
    cc = gl.arange(0, BKQ, layout=gl.SliceLayout(0, XL))
    offs = gl.expand_dims(r, 1) * BKQ + gl.expand_dims(cc, 0)
    x = gl.load(x_ptr + offs, mask=offs < K, other=0.0)
    x_smem._reinterpret(gl.bfloat16, [KCP, BKQ], gl.SwizzledSharedLayout(1, 1, 1, [1, 0])).store(x)
    gl.thread_barrier()
    rows0 = gl.arange(0, BN, layout=gl.SliceLayout(1, SC))
    acc = gl.full([BN], 0.0, gl.float32, layout=gl.SliceLayout(1, SC))
    g = 0
    for t in range(t0, t1):
        slot = g % NS
        kc = t % KC
        xg = x_smem.index(kc).reshape([NG, GROUP]).load(XG).to(gl.float32)
        mbarrier.wait(ready.index(slot), (g // NS) & 1)
        q = ring_q.index(slot).reshape([BN, NG, GROUP]).load(L3)
        s = ring_s.index(slot).load(SC)
        gl.thread_barrier()   # every warp has read the slot: refill it
        if t + NS < t1:
            _issue(qdesc, sdesc, ring_q, ring_s, ready, t + NS, KC, BN, BKQ, GROUP, slot)
        sums = gl.sum(q.to(gl.float32) * gl.expand_dims(xg, 0), axis=2)
        acc += gl.sum(sums * s, axis=1)
        if kc == KC - 1:
            rows = (t // KC) * BN + rows0
            gl.store(out_ptr + rows, acc.to(gl.bfloat16), mask=rows < N)
            acc = gl.full([BN], 0.0, gl.float32, layout=gl.SliceLayout(1, SC))
        g += 1


def main() -> None:
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    _, bandwidth = cuda_triton_and_bandwidth()
    torch.manual_seed(0)
    for name, (N, K) in SHAPES.items():
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
        out = torch.empty(1, N, device=dev, dtype=torch.bfloat16)
        qs = [torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev) for _ in range(REPS)]
        ss = [torch.rand(N, K // GROUP, device=dev) * 0.01 for _ in range(REPS)]
        nbytes = N * K + N * K // GROUP * 4
        ref = (qs[-1].double() * ss[-1].double().repeat_interleave(GROUP, dim=1)) @ \
            x[0].double()
        bn, bk, q8_warps = linear._gemv_q8_config(N, K, GROUP)

        def triton_chain():
            for q, s in zip(qs, ss):
                linear._gemv_q8_kernel[(triton.cdiv(N, bn),)](
                    out, x, q, s, x, out, N, K, q.stride(0), s.stride(0), 1e-5, NORM=False,
                    ADD=False, SWIGLU=False, GROUP=GROUP, BLOCK_N=bn, BLOCK_K=bk, PDL=True,
                    num_warps=q8_warps, launch_pdl=True)

        variants = [("cuda:triton q8_0 GEMV", triton_chain)]
        for rows, ns, warps in ((32, 8, 4), (64, 4, 8), (16, 12, 4)):
            qlay = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)
            slay = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
            descs = [(TensorDescriptor.from_tensor(q, [rows, BKQ], qlay),
                      TensorDescriptor.from_tensor(s, [rows, BKQ // GROUP], slay))
                     for q, s in zip(qs, ss)]

            def ring_chain(descs=descs, rows=rows, ns=ns, warps=warps):
                for qd, sd in descs:
                    _q8_ring_gemv[(sms,)](qd, sd, x, out, N, K=K, GROUP=GROUP, BN=rows,
                                          BKQ=BKQ, NS=ns, KCP=triton.next_power_of_2(K // BKQ),
                                          num_warps=warps, maxnreg=128, launch_pdl=True)
            variants.append((f"ring {ns:2d} x [{rows:2d}, {BKQ}] int8, {warps} warps", ring_chain))
        for label, chain in variants:
            chain()
            check_close(out[0], ref, 1e-2, f"{name}, {label}")
            us = graph_us(chain) / REPS
            rate = nbytes / us * 1e6
            print(f"{name:10s} [{N:5d}, {K:5d}]  {label:34s} {us:7.1f} us  "
                  f"{rate / 1e12:5.2f} TB/s  ({100 * rate / bandwidth:5.1f}% of copy)")


if __name__ == "__main__":
    main()
