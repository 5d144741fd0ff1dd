"""Does the FFN gain as one persistent kernel, split-K over its hidden width?

Attempt 20 ran the FFN as one kernel of one-tile programs: a program owns R rows f of the
hidden layer, computes h[f] = silu(W1[f] xn) * (W3[f] xn) and adds W2[:, f] h[f] into the
residual stream. The w1|w3 -> w2 link left the step, but every program added a whole
residual row, and those adds (2/R times W2's bytes through L2) cost what the link saved.

Here a few programs a multiprocessor walk the hidden rows in chunks of R (program p takes
chunks p, p + P, ...), keep their share of W2 h in registers and add it once at the end:
P rows of adds a layer instead of F / R. A chunk's three tiles (W1, W3 and W2 stored
transposed) load while the one before is summed: in registers, loaded one chunk ahead
(the first before the PDL wait), or through Triton's software pipeline (`tl.range` stages
in shared memory; the first chunk still in registers before the wait). The o projection
stores its residual sum twice (float32), once for the FFN's RMSNorm and once for its adds.

Variants, each the whole decode step (random weights, 512 tokens cached, argmax pick,
CUDA graph replay), timed in one process, interleaved, logits set against the shipped
step's: the shipped step; the float32 residual stream with the shipped kernels; the same
with o storing twice; the persistent FFN (R, warps, programs a multiprocessor, pipeline
stages; 0 = registers a chunk ahead, -1 two chunks ahead), and some of them with no adds (one number a program: a wrong
result, the cost of the streaming alone).

    python benchmarks/ffn_persistent.py tinyllama-1.1b llama3.2-1b llama2-7b smollm2-135m
"""
from __future__ import annotations

import torch

import triton
import triton.language as tl

from merge_in_o import float32_step
from polyllama.plugins.cuda_triton.device import multiprocessors, pdl_enabled
from polyllama.plugins.cuda_triton.ffn import _chunk, _normed_input, _tiles
from polyllama.plugins.cuda_triton.kernels import pdl_start
from polyllama.plugins.cuda_triton.linear import _run
from timing import (cuda_triton_and_bandwidth, floor_us, greedy_step, model_after_prompt,
                    print_against_first, shape_parser)


@triton.jit
def _ffn_kernel(out_ptr, x_ptr, g_ptr, w13_ptr, w2t_ptr, F, K, eps, R: tl.constexpr,
                BLOCK_K: tl.constexpr, STAGES: tl.constexpr, ADD: tl.constexpr,
                PDL: tl.constexpr):
    """out += W2 (silu(W1 xn) * (W3 xn)) over the program's chunks; xn = rmsnorm(x).
    STAGES 0: the next chunk loads into registers during this one; -1: the next two (both
    before the wait); else tl.range stages. ADD 0: one number a program (wrong; the
    streaming alone)."""
    pid, P = tl.program_id(0), tl.num_programs(0)
    n_chunks = tl.cdiv(F, R)
    cols = tl.arange(0, BLOCK_K)
    w1, w3, w2 = _tiles(w13_ptr, w2t_ptr, pid, F, K, R, BLOCK_K)
    pdl_start(PDL)
    xg, inv = _normed_input(x_ptr, g_ptr, cols, K, eps)
    acc = tl.zeros([BLOCK_K], tl.float32)
    if STAGES == -1:
        m1, m3, m2 = _tiles(w13_ptr, w2t_ptr, pid + P, F, K, R, BLOCK_K)
        for c in tl.range(pid, n_chunks, P, num_stages=1):
            n1, n3, n2 = _tiles(w13_ptr, w2t_ptr, c + 2 * P, F, K, R, BLOCK_K)
            acc = _chunk(acc, w1, w3, w2, xg, inv)
            w1, w3, w2 = m1, m3, m2
            m1, m3, m2 = n1, n3, n2
    elif STAGES == 0:
        for c in tl.range(pid, n_chunks, P, num_stages=1):
            n1, n3, n2 = _tiles(w13_ptr, w2t_ptr, c + P, F, K, R, BLOCK_K)
            acc = _chunk(acc, w1, w3, w2, xg, inv)
            w1, w3, w2 = n1, n3, n2
    else:
        acc = _chunk(acc, w1, w3, w2, xg, inv)
        for c in tl.range(pid + P, n_chunks, P, num_stages=STAGES):
            t1, t3, t2 = _tiles(w13_ptr, w2t_ptr, c, F, K, R, BLOCK_K)
            acc = _chunk(acc, t1, t3, t2, xg, inv)
    if ADD:
        tl.atomic_add(out_ptr + cols, acc, mask=cols < K, sem="relaxed")
    else:
        tl.store(out_ptr + pid % K, tl.sum(acc, axis=0))


def persistent_step(model, ffn=None, compiled=None):
    """The decode step with a float32 residual stream and o storing twice; ffn =
    (R, warps, programs, stages, add) runs the persistent FFN kernel (programs: a number a
    multiprocessor when up to 8, else in all), None the shipped w1|w3 and w2 GEMVs. The
    compiled FFN kernel goes into the dict `compiled` under ffn."""
    a, k, c = model._decode, model.k, model.config
    pos, dev = model.pos.native, a.x.device
    D, F = c.dim, c.hidden_dim
    xa = torch.zeros((1, D), dtype=torch.float32, device=dev)
    xb = torch.zeros_like(xa)
    pdl = dict(PDL=pdl_enabled(dev), launch_pdl=pdl_enabled(dev))
    block = triton.next_power_of_2(D)
    w2t = [L.w2.parts["w"].t().contiguous() for L in model.layers] if ffn else None

    def step():
        k.embedding(xb, model.tok_embeddings, a.ids)
        for i, L in enumerate(model.layers):
            model.qkv_rope_k(a.qkv, xb, L.attn_norm, c.norm_eps, L.wqkv, pos, model.cos,
                             model.sin, c.n_heads + c.n_kv_heads)
            k.attention(a.attn3, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, model.scale)
            _run(xb, a.attn, L.wo, residual=xb, copy=xa)      # the shipped o GEMV
            if ffn is None:
                model.swiglu_k(a.act, xa, L.ffn_norm, c.norm_eps, L.w13)
                model.linear_add_k(xb, a.act, L.w2, xb)
                continue
            R, warps, programs, stages, add, *cap = ffn
            programs = programs * multiprocessors(dev) if programs <= 8 else programs
            compiled[ffn] = _ffn_kernel[(programs,)](
                xb, xa, L.ffn_norm, L.w13.parts["w"], w2t[i], F, D, float(c.norm_eps), R=R,
                BLOCK_K=block, STAGES=stages, ADD=add, num_warps=warps,
                **(dict(maxnreg=cap[0]) if cap else {}), **pdl)
        model.argmax_k(model.decode_ws.ids.native, model.logits.native, xb, model.norm,
                       c.norm_eps, model.output)
    return step


FFN_CONFIGS = {   # by model width: (R, warps, programs, stages, add[, register cap])
    2048: ((4, 8, 1, 0, True), (4, 8, 1, -1, True), (2, 8, 2, 0, True), (2, 8, 2, -1, True),
           (2, 4, 2, 0, True), (2, 4, 2, -1, True), (2, 4, 3, 0, True)),
    4096: ((2, 16, 1, 0, True), (2, 16, 1, -1, True), (1, 8, 2, -1, True)),
    576: ((8, 4, 192, 0, True),),
}


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b", "llama2-7b",
                                         "smollm2-135m"]).parse_args(argv)
    dev, bandwidth = cuda_triton_and_bandwidth()
    for shape in args.shapes:
        model = model_after_prompt(dev, shape, ffn_op=False)
        variants = [("two GEMVs (before the op)", greedy_step(model)),
                    ("float32 residual", float32_step(model)),
                    ("o stores twice", persistent_step(model))]
        compiled = {}
        for cfg in FFN_CONFIGS[model.config.dim]:
            R, warps, programs, stages, add, *cap = cfg
            name = (f"R {R} w {warps} P {programs} st {stages}{'' if add else ' no adds'}"
                    f"{f' cap {cap[0]}' if cap else ''}")
            variants.append((name, persistent_step(model, cfg, compiled)))
        print_against_first(dev, model, shape, floor_us(model, bandwidth), variants)
        for cfg, kernel in compiled.items():
            print(f"  {cfg}: {kernel.n_regs} registers, {kernel.n_spills} spilled")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
