"""Can a persistent kernel fed by a TMA weight ring beat a chain of GEMV kernels?

TinyLlama's decode GEMVs (22 x [qkv, o, w13, w2] + classifier, bf16, random weights, the
same data flow as `persistent_chain.py`) as one persistent Gluon kernel (Hopper, Triton
>= 3.6), against the chain of cuda:triton GEMV kernels with programmatic dependent launch,
each replayed as a CUDA graph:
  - a program per multiprocessor; its producer warp takes row blocks ([BN, K] weights) of
    each stage in turn, claimed from an atomic counter (so a program whose memory is
    served faster takes more) or, with --assign fixed, blocks c, c + P, ...; it streams
    their [BN, 256] tiles through TMA into an NS-deep shared-memory ring, at most INFLIGHT
    on their way at once, and never waits for activations, so weights keep arriving while
    the consumer warps wait for the previous stage;
  - the consumer warps stage the input vector (rmsnorm, or silu(gate) * up) in shared
    memory, multiply each claimed row block by it and store its rows of the stage's
    float32 output; a stage starts once every program has arrived on its counter.
Rows printed per ring shape (--ring ROWS,SLOTS,WARPS[,INFLIGHT]):
  barriers        the real thing (its result checked against a float64 reference);
  streaming only  no waits between stages (wrong result): the weight stream alone;
  consumer only   the producer loads nothing: stages, barriers and arithmetic alone.

    python benchmarks/tma_ring_chain.py [--timeline] [--ring 16,24,8,5 ...]
        [--assign claim fixed] [--poll atomic load] [--barriers-only]
"""
from __future__ import annotations

import argparse

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

import persistent_chain
from timing import graph_us

BK = 256   # tile width: a row's K chunk
EPS = gl.constexpr(1e-5)   # the random weights' RMSNorm epsilon


@gluon.jit
def ring_buffers(desc, NS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                 FC: gl.constexpr):
    """Shared memory of a program: the NS-slot weight ring ([BN, BK] tiles in the layout of
    the TMA descriptor desc), its ready and empty mbarriers, the row block id of each slot,
    and FC chunks of BK for the staged input vector."""
    ring = gl.allocate_shared_memory(gl.bfloat16, [NS, BN, BK], desc.layout)
    ready = init_mbarriers(NS)
    empty = init_mbarriers(NS)
    ids = gl.allocate_shared_memory(gl.int32, [NS, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [FC, BK],
                                       gl.SwizzledSharedLayout(1, 1, 1, [0]))
    return ring, ready, empty, ids, x_smem


@gluon.jit
def init_mbarriers(NS: gl.constexpr):
    """NS mbarriers in shared memory, each completing on one arrival (or one TMA's bytes)."""
    bars = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NS):
        mbarrier.init(bars.index(i), count=1)
    return bars


@gluon.jit
def weight_stage(s, L, D: gl.constexpr, F: gl.constexpr, V: gl.constexpr, QKV: gl.constexpr,
                 BN: gl.constexpr, BK: gl.constexpr):
    """Weight stage s -> (matrix: 0 qkv, 1 o, 2 w13, 3 w2, 4 classifier; layer; rows; the
    matrix's first row in its stack of layers; K chunks; row blocks)."""
    layer = s // 4
    m = s % 4
    if s == 4 * L:
        m = 4
    N = QKV
    K = D
    base = layer * QKV
    if m == 1:
        N = D
        base = layer * D
    if m == 2:
        N = 2 * F
        base = layer * 2 * F
    if m == 3:
        N = D
        K = F
        base = layer * D
    if m == 4:
        N = V
        base = 0
    return m, layer, N, base, K // BK, gl.cdiv(N, BN)


@gluon.jit
def load_tile(m, dqkv, do, d13, d2, dout, row, k, bar, dst):
    """TMA of weight tile [row, k] of matrix m (as weight_stage numbers them) into dst."""
    mbarrier.expect(bar, dqkv.block_type.nbytes)
    if m == 0:
        tma.async_copy_global_to_shared(dqkv, [row, k], bar, dst)
    elif m == 1:
        tma.async_copy_global_to_shared(do, [row, k], bar, dst)
    elif m == 2:
        tma.async_copy_global_to_shared(d13, [row, k], bar, dst)
    elif m == 3:
        tma.async_copy_global_to_shared(d2, [row, k], bar, dst)
    else:
        tma.async_copy_global_to_shared(dout, [row, k], bar, dst)


@gluon.jit
def take_slot(ready, empty, ids, g, rb, NS: gl.constexpr, INFLIGHT: gl.constexpr):
    """Ring slot of tile g, for row block rb: once the consumers have handed it back and at
    most INFLIGHT - 1 tiles are still on their way."""
    slot = g % NS
    mbarrier.wait(empty.index(slot), ((g // NS) & 1) ^ 1)
    if INFLIGHT < NS:
        if g >= INFLIGHT:   # tile g - INFLIGHT has landed
            mbarrier.wait(ready.index((g - INFLIGHT) % NS), ((g - INFLIGHT) // NS) & 1)
    ONE: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])     # the producer's one warp
    ids.index(slot).store(gl.full([1], rb, gl.int32, layout=ONE))
    gl.thread_barrier()
    return slot


@gluon.jit
def end_stage(ready, empty, ids, g, NS: gl.constexpr):
    """Ring entry g marks the end of the producer's share of a stage (row block -1)."""
    slot = take_slot(ready, empty, ids, g, -1, NS, NS)
    mbarrier.arrive(ready.index(slot))


@gluon.jit
def _producer(dq, do, d13, d2, dout, ring, ready, empty, ids, claim_ptr, L, D: gl.constexpr,
              F: gl.constexpr, V: gl.constexpr, QKV: gl.constexpr, BN: gl.constexpr,
              BK: gl.constexpr, NS: gl.constexpr, WEIGHTS: gl.constexpr,
              INFLIGHT: gl.constexpr, FIXED: gl.constexpr):
    """One warp: claims row blocks of each stage in turn (an atomic counter per stage, so a
    program that streams faster takes more), streams their tiles into the ring, and marks
    the end of its share of a stage with an empty slot whose id is -1. FIXED: program c
    takes row blocks c, c + P, ... instead, with no atomic on its way. At most INFLIGHT
    tiles are on their way at once: bytes queued beyond what keeps memory busy only delay
    everything behind them, the stage counters' atomics included."""
    c = gl.program_id(0)
    P = gl.num_programs(0)
    g = 0
    for s in range(4 * L + 1):
        m, layer, N, base, KC, NRB = weight_stage(s, L, D, F, V, QKV, BN, BK)
        if FIXED:
            rb = c
        else:
            rb = gl.atomic_add(claim_ptr + s, 1, sem="relaxed")
        while rb < NRB:
            row = rb * BN
            for kc in range(KC):
                slot = take_slot(ready, empty, ids, g, rb, NS, INFLIGHT)
                bar = ready.index(slot)
                dst = ring.index(slot)
                if WEIGHTS:
                    load_tile(m, dq, do, d13, d2, dout, base + row, kc * BK, bar, dst)
                else:
                    mbarrier.arrive(bar)
                g += 1
            if FIXED:
                rb += P
            else:
                rb = gl.atomic_add(claim_ptr + s, 1, sem="relaxed")
        end_stage(ready, empty, ids, g, NS)
        g += 1


@gluon.jit
def flat_offsets(XL: gl.constexpr, KCP: gl.constexpr, BK: gl.constexpr):
    """Offsets of a [KCP, BK] tile in layout XL: element e of a vector sits at row e // BK,
    column e % BK."""
    r = gl.arange(0, KCP, layout=gl.SliceLayout(1, XL))
    cc = gl.arange(0, BK, layout=gl.SliceLayout(0, XL))
    return gl.expand_dims(r, 1) * BK + gl.expand_dims(cc, 0)


@gluon.jit
def stage_input(x_smem, in_ptr, g_ptr, eps, MODE: gl.constexpr, K: gl.constexpr,
                XL: gl.constexpr, KCP: gl.constexpr, BK: gl.constexpr):
    """The stage's input vector, loaded in one go, into shared memory as [K chunk, BK] bf16.
    MODE 0: in * g (the returned rms factor, with eps, scales the sums); 1: in;
    2: silu(in[:K]) * in[K:]."""
    offs = flat_offsets(XL, KCP, BK)
    mask = offs < K
    v = gl.load(in_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg").to(gl.float32)
    rstd = 1.0
    if MODE == 0:
        rstd = gl.rsqrt(gl.sum(gl.sum(v * v, axis=1), axis=0) / K + eps)
        v = v * gl.load(g_ptr + offs, mask=mask, other=0.0).to(gl.float32)
    elif MODE == 2:
        b = gl.load(in_ptr + K + offs, mask=mask, other=0.0, cache_modifier=".cg")
        v = v / (1.0 + gl.exp(-v)) * b
    x_smem._reinterpret(gl.bfloat16, [KCP, BK], gl.SwizzledSharedLayout(1, 1, 1, [1, 0])).store(
        v.to(gl.bfloat16))
    return rstd


@gluon.jit
def stamp(ptr, TIMELINE: gl.constexpr):
    """--timeline: the global timer (ns) into ptr."""
    if TIMELINE:
        t = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [gl.program_id(0)],
                                      dtype=gl.int64, is_pure=False, pack=1)
        gl.store(ptr, t)


@gluon.jit
def _load_acquire(ptr):
    return gl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr],
                                     dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def wait_stage(cnt_ptr, target, POLL_LOAD: gl.constexpr):
    """Until the counter reaches target. POLL_LOAD: every thread polls with an acquire load;
    otherwise one thread does (Triton turns the atomic add of 0 into one thread's acquire
    load) and shares what it read."""
    if POLL_LOAD:
        v = _load_acquire(cnt_ptr)
        while v < target:
            v = _load_acquire(cnt_ptr)
    else:
        v = gl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
        while v < target:
            v = gl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
    gl.thread_barrier()


@gluon.jit
def next_row_block(ready, ids, g, NS: gl.constexpr, ONE: gl.constexpr):
    """Wait for ring slot g and read which row block it holds (-1: end of the stage)."""
    slot = g % NS
    mbarrier.wait(ready.index(slot), (g // NS) & 1)
    return gl.max(ids.index(slot).load(ONE), axis=0)


@gluon.jit
def row_block_sums(ring, ready, empty, x_smem, g, KC, NS: gl.constexpr, BN: gl.constexpr,
                   BK: gl.constexpr, TILE: gl.constexpr):
    """The row sums of the next KC ring tiles (one row block) times the staged input, each
    slot handed back once read; returns them and the ring position after them."""
    acc = gl.full([BN, BK], 0.0, gl.float32, layout=TILE)
    for kc in range(KC):
        slot = g % NS
        x = x_smem.index(kc).load(gl.SliceLayout(0, TILE))
        mbarrier.wait(ready.index(slot), (g // NS) & 1)
        w = ring.index(slot).load(TILE)
        gl.thread_barrier()   # every warp has read the slot: hand it back
        mbarrier.arrive(empty.index(slot))
        acc += w.to(gl.float32) * gl.expand_dims(x.to(gl.float32), 0)
        g += 1
    return gl.sum(acc, axis=1), g


@gluon.jit
def _consumer(ring, ready, empty, ids, x_smem, h_ptr, g_ptr, qkv_ptr, a13_ptr, logit_ptr,
              cnt_ptr, L, D: gl.constexpr, F: gl.constexpr, V: gl.constexpr,
              QKV: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, NS: gl.constexpr,
              BARRIERS: gl.constexpr, POLL_LOAD: gl.constexpr, DC: gl.constexpr,
              FC: gl.constexpr, time_ptr, TIMELINE: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    TILE: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [NW, 1], [1, 0])
    XL: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [NW, 1], [1, 0])
    ONE: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    rows0 = gl.arange(0, BN, layout=gl.SliceLayout(1, TILE))
    c = gl.program_id(0)
    P = gl.num_programs(0)
    g = 0
    for s in range(4 * L + 1):
        m, layer, N, base, KC, NRB = weight_stage(s, L, D, F, V, QKV, BN, BK)
        stamps = time_ptr + (c * (4 * L + 1) + s) * 3
        if BARRIERS:
            if s > 0:
                wait_stage(cnt_ptr + s - 1, P, POLL_LOAD)
        gl.thread_barrier()
        stamp(stamps, TIMELINE)
        out_ptr = h_ptr   # o and w2 add into the residual stream
        rstd = 1.0
        if m == 0:
            out_ptr = qkv_ptr + layer * QKV
            rstd = stage_input(x_smem, h_ptr, g_ptr, EPS, 0, D, XL, DC, BK)
        elif m == 1:
            stage_input(x_smem, qkv_ptr + layer * QKV, g_ptr, EPS, 1, D, XL, DC, BK)
        elif m == 2:
            out_ptr = a13_ptr + layer * 2 * F
            rstd = stage_input(x_smem, h_ptr, g_ptr, EPS, 0, D, XL, DC, BK)
        elif m == 3:
            stage_input(x_smem, a13_ptr + layer * 2 * F, g_ptr, EPS, 2, F, XL, FC, BK)
        else:
            out_ptr = logit_ptr
            rstd = stage_input(x_smem, h_ptr, g_ptr, EPS, 0, D, XL, DC, BK)
        gl.thread_barrier()
        stamp(stamps + 1, TIMELINE)
        rb = next_row_block(ready, ids, g, NS, ONE)
        while rb >= 0:   # a claimed row block, whole
            y, g = row_block_sums(ring, ready, empty, x_smem, g, KC, NS, BN, BK, TILE)
            rows = rb * BN + rows0
            y = y * rstd
            if (m == 1) | (m == 3):   # this program owns these rows of the residual stream
                y += gl.load(out_ptr + rows, mask=rows < N, other=0.0, cache_modifier=".cg")
            gl.store(out_ptr + rows, y, mask=rows < N)
            rb = next_row_block(ready, ids, g, NS, ONE)
        gl.thread_barrier()   # the end-of-stage slot: hand it back
        mbarrier.arrive(empty.index(g % NS))
        g += 1
        stamp(stamps + 2, TIMELINE)
        if BARRIERS:
            gl.thread_barrier()
            gl.atomic_add(cnt_ptr + s, 1, sem="release", scope="gpu")


@gluon.jit
def _ring_chain_kernel(dq, do, d13, d2, dout, h_ptr, g_ptr, qkv_ptr, a13_ptr, logit_ptr,
                       cnt_ptr, claim_ptr, L, D: gl.constexpr, F: gl.constexpr, V: gl.constexpr,
                       QKV: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                       NS: gl.constexpr, BARRIERS: gl.constexpr, WEIGHTS: gl.constexpr,
                       INFLIGHT: gl.constexpr, POLL_LOAD: gl.constexpr, FIXED: gl.constexpr,
                       DC: gl.constexpr, FC: gl.constexpr, time_ptr,
                       TIMELINE: gl.constexpr):
    ring, ready, empty, ids, x_smem = ring_buffers(dq, NS, BN, BK, FC)
    gl.warp_specialize([
        (_consumer, (ring, ready, empty, ids, x_smem, h_ptr, g_ptr, qkv_ptr, a13_ptr,
                     logit_ptr, cnt_ptr, L, D, F, V, QKV, BN, BK, NS, BARRIERS, POLL_LOAD,
                     DC, FC, time_ptr, TIMELINE)),
        (_producer, (dq, do, d13, d2, dout, ring, ready, empty, ids, claim_ptr, L, D, F, V,
                     QKV, BN, BK, NS, WEIGHTS, INFLIGHT, FIXED)),
    ], [1], [40])


def print_timeline(stamps: torch.Tensor, L: int) -> None:
    """Where a stage's time goes, per matrix, from the consumers' time stamps [P, S, 3]
    (stage start after the wait, input staged, last tile done), in microseconds."""
    t = stamps.double().cpu() / 1e3
    start, staged, done = t[..., 0], t[..., 1], t[..., 2]
    last_done = done.max(dim=0).values
    print("  matrix      wait after the last arrival   input staging   tiles (mean / max)")
    for m, name in enumerate(("qkv", "o", "w13", "w2", "classifier")):
        stages = [s for s in range(1, 4 * L + 1) if (s % 4 == m and s < 4 * L) or
                  (m == 4 and s == 4 * L)]
        wait = torch.stack([start[:, s] - last_done[s - 1] for s in stages])
        staging = torch.stack([staged[:, s] - start[:, s] for s in stages])
        tiles = torch.stack([done[:, s] - staged[:, s] for s in stages])
        print(f"  {name:10s}  {wait.mean():8.2f} (max {wait.max(dim=1).values.mean():5.2f})"
              f"          {staging.mean():6.2f}        {tiles.mean():6.2f} / "
              f"{tiles.max(dim=1).values.mean():6.2f}")


def _ring(text: str) -> tuple[int, int, int, int]:
    """ROWS,SLOTS,WARPS[,INFLIGHT] -> (rows per tile, ring slots, consumer warps, tiles in
    flight at most)."""
    parts = [int(v) for v in text.split(",")]
    if len(parts) == 3:
        parts.append(parts[1])
    if len(parts) != 4 or not 1 <= parts[3] <= parts[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWS,SLOTS,WARPS[,INFLIGHT] "
                                         "with 1 <= INFLIGHT <= SLOTS")
    return tuple(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timeline", action="store_true",
                   help="also time each stage's parts (one extra run per tile shape)")
    p.add_argument("--ring", type=_ring, nargs="+",
                   default=[(32, 12, 8, 12), (16, 24, 8, 24), (64, 6, 8, 6)],
                   help="ring shapes as ROWS,SLOTS,WARPS[,INFLIGHT] (default: INFLIGHT=SLOTS)")
    p.add_argument("--assign", nargs="+", choices=("claim", "fixed"), default=["claim"],
                   help="row blocks claimed from a counter, or fixed round robin")
    p.add_argument("--poll", nargs="+", choices=("atomic", "load"), default=["atomic"],
                   help="stage counters polled with atomics or with acquire loads")
    p.add_argument("--barriers-only", action="store_true",
                   help="skip the streaming-only and consumer-only rows")
    args = p.parse_args(argv)
    w = persistent_chain.TinyLlamaGemvs(tiny=False)
    L, D, F, V, QKV = w.shape
    print(f"{torch.cuda.get_device_name()}: copy {w.bandwidth / 1e12:.3f} TB/s, weights "
          f"{w.nbytes / 1e9:.3f} GB, floor {w.floor_us:.1f} us")
    us = graph_us(w.chain)
    print(f"chain of {4 * L + 1} GEMV kernels (PDL)                  {us:8.1f} us  "
          f"{100 * w.floor_us / us:5.1f}% of the floor")

    dev = w.x.device
    x0 = torch.randn(D, device=dev, dtype=torch.float64)
    ref = w.reference(x0)
    h = torch.empty(D, device=dev, dtype=torch.float32)
    qkv = torch.empty(L * QKV, device=dev, dtype=torch.float32)
    a13 = torch.empty(L * 2 * F, device=dev, dtype=torch.float32)
    logits = torch.empty(V, device=dev, dtype=torch.float32)
    counters = torch.empty(2, 4 * L + 1, device=dev, dtype=torch.int32)   # arrivals, claims
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    stamps = torch.zeros(sms, 4 * L + 1, 3, device=dev, dtype=torch.int64)
    stacked = [t.reshape(-1, t.shape[-1]) for t in (w.wqkv, w.wo, w.w13, w.w2, w.wout)]
    unswizzled = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)
    for bn, ns, warps, inflight in args.ring:
        descs = [TensorDescriptor.from_tensor(t, [bn, BK], unswizzled) for t in stacked]
        runs = [(f"barriers, {assign}, poll by {poll}", True, True, assign, poll)
                for assign in args.assign for poll in args.poll]
        if not args.barriers_only:
            runs += [(f"streaming only, {assign}", False, True, assign, "-")
                     for assign in args.assign]
            runs += [("consumer only", True, False, args.assign[0], args.poll[0])]
        for label, barriers, weights, assign, poll in runs:
            def step(timeline=False):
                counters.zero_()
                h.copy_(x0)
                _ring_chain_kernel[(sms,)](
                    *descs, h, w.g, qkv, a13, logits, counters[0], counters[1], L, D=D, F=F,
                    V=V, QKV=QKV, BN=bn, BK=BK, NS=ns, BARRIERS=barriers, WEIGHTS=weights,
                    INFLIGHT=inflight, POLL_LOAD=poll == "load", FIXED=assign == "fixed",
                    DC=triton.next_power_of_2(D // BK), FC=triton.next_power_of_2(F // BK),
                    time_ptr=stamps, TIMELINE=timeline, num_warps=warps)
            step()
            if barriers and weights:
                persistent_chain.check_close(logits, ref, persistent_chain.ROUNDED_INPUT_TOL,
                                             label)
            us = graph_us(step)
            print(f"ring {ns:2d} x [{bn}, {BK}], {inflight:2d} in flight, {warps} warps, "
                  f"{label:34s} {us:8.1f} us  {100 * w.floor_us / us:5.1f}% of the floor")
            if args.timeline and barriers and weights:
                step(timeline=True)
                torch.cuda.synchronize()
                print_timeline(stamps, L)


if __name__ == "__main__":
    main()
