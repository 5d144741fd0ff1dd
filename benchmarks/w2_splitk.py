"""Does the w2 GEMV stream better after its link when its long rows are split over programs?

w2 (K = the hidden width) is the one decode GEMV whose rows are too long to load whole, so
each program walks its rows tile after tile once the w1|w3 GEMV before it ends (attempt 18:
~3 us a layer over its bytes on TinyLlama). Here a row block's K is split over S programs,
each walking 1/S of it; each stores its partial sums, and the last of a row block's programs
to arrive (an atomic counter tells; nothing waits) adds them to the residual. The whole
decode step (random weights, 512 tokens in the KV cache, argmax pick, CUDA graph replay) is
timed against the shipped GEMV in one process, each variant twice, interleaved. Logits are
checked against the shipped step's (bf16 activations: ~2e-2).

    python benchmarks/w2_splitk.py tinyllama-1.1b llama3.2-1b
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from polyllama.plugins.cuda_triton import linear
from polyllama.plugins.cuda_triton.kernels import pdl_start
from timing import (floor_us, for_each_shape, greedy_step, model_after_prompt,
                    print_against_first, shape_parser)

CONFIGS = ((2, 8, 1024, 8), (2, 8, 1024, 4), (2, 16, 1024, 8), (2, 4, 1024, 4),
           (2, 8, 2048, 8), (3, 8, 1024, 8), (3, 4, 2048, 8), (4, 8, 1024, 8),
           (4, 16, 512, 8), (6, 8, 1024, 4))          # (splits, rows, tile, warps)


@triton.jit
def _w2_splitk_kernel(out_ptr, x_ptr, w_ptr, r_ptr, part_ptr, cnt_ptr, N, K, s_w, KS,
                      SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """Program (row block, split): the rows' sums over columns [split * KS, + KS); the last
    program of the row block adds every split's sums and the residual."""
    rb, sp = tl.program_id(0), tl.program_id(1)
    rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows[:, None] < N
    k_lo = sp * KS
    k_hi = tl.minimum(k_lo + KS, K)
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * s_w
    w = tl.load(w_rows + (k_lo + cols)[None, :], mask=rmask & ((k_lo + cols)[None, :] < k_hi),
                other=0.0, eviction_policy="evict_first")
    pdl_start(PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + cols
        nxt = k + BLOCK_K                           # the next tile loads while this one sums
        w_next = tl.load(w_rows + nxt[None, :], mask=rmask & (nxt[None, :] < k_hi), other=0.0,
                         eviction_policy="evict_first")
        x = tl.load(x_ptr + k, mask=k < k_hi, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        w = w_next
    tl.store(part_ptr + sp * N + rows, tl.sum(acc, axis=1), mask=rows < N)
    tl.debug_barrier()                              # every thread's stores before the release
    if tl.atomic_add(cnt_ptr + rb, 1, sem="acq_rel") == SPLITS - 1:
        s = tl.arange(0, SPLITS_P2)
        parts = tl.load(part_ptr + s[:, None] * N + rows[None, :],
                        mask=(s[:, None] < SPLITS) & (rows[None, :] < N), other=0.0,
                        cache_modifier=".cg")       # other programs' results: skip L1
        y = tl.sum(parts, axis=0) + tl.load(r_ptr + rows, mask=rows < N).to(tl.float32)
        tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)
        tl.store(cnt_ptr + rb, 0)                   # ready for the next step


def splitk_linear_add(shipped, splits, bn, bk, warps):
    """linear._run with the w2 GEMV (one token, a residual, rows longer than one tile)
    replaced by the split kernel."""
    workspaces = {}

    def run(out, x, w, g=None, eps=0.0, residual=None, swiglu=False):
        W = w.parts.get("w")
        if x.shape[0] != 1 or residual is None or W is None or W.shape[1] <= linear.ONE_TILE_K:
            return shipped(out, x, w, g, eps, residual, swiglu)
        N, K = W.shape
        if N not in workspaces:
            workspaces[N] = (torch.empty(splits * N, dtype=torch.float32, device=W.device),
                             torch.zeros(triton.cdiv(N, bn), dtype=torch.int32, device=W.device))
        part, cnt = workspaces[N]
        ks = triton.cdiv(triton.cdiv(K, splits), bk) * bk
        _w2_splitk_kernel[(triton.cdiv(N, bn), splits)](
            out, x, W, residual, part, cnt, N, K, W.stride(0), ks, SPLITS=splits,
            SPLITS_P2=triton.next_power_of_2(splits), BLOCK_N=bn, BLOCK_K=bk, PDL=True,
            launch_pdl=True, num_warps=warps)
    return run


def compare(dev, shape: str, bandwidth: float) -> None:
    model = model_after_prompt(dev, shape, ffn_op=False)
    floor = floor_us(model, bandwidth)
    step, shipped = greedy_step(model), linear._run

    def with_run(run):
        def patched():
            linear._run = run              # read at each launch, so only while recording
            try:
                step()
            finally:
                linear._run = shipped
        return patched

    variants = [("shipped", step)] + [
        (f"w2 split {s}, {bn} rows x {bk}, {warps} warps",
         with_run(splitk_linear_add(shipped, s, bn, bk, warps)))
        for s, bn, bk, warps in CONFIGS]
    print_against_first(dev, model, shape, floor, variants)


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b"]).parse_args(argv)
    for_each_shape(args.shapes, compare)


if __name__ == "__main__":
    main()
