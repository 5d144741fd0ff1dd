"""Can the FFN run as one kernel, split-K over its hidden width, without the w1|w3 -> w2 link?

In the decode step the w1|w3 GEMV (with the SwiGLU) and the w2 GEMV are two kernels, and
w2 starts late: its programs only launch in the last wave of w1|w3's thousands, and then
stream their long rows (attempt 18). Here one kernel does both. A program owns R rows f of
the hidden layer, h[f] = silu(W1[f] xn) * (W3[f] xn), and at once adds W2[:, f] h[f] (W2
stored transposed, so these are R contiguous rows) into the float32 residual stream. All
three weight tiles load before the PDL wait. The o projection writes its residual sum twice:
float32 for the FFN's adds, the compute dtype for the FFN's RMSNorm input.

The whole decode step (random weights, 512 tokens in the KV cache, replayed as a CUDA graph
with the argmax pick) against the shipped chain, in one process. Per R and warps, the adds
go through Triton's atomic_add, through `red.global.add.v4.f32` (four columns an
instruction), or nowhere (each program stores one number: a wrong result, the cost of the
streaming alone). Logits are checked against the chain's (bf16 activations: ~2e-2).

    python benchmarks/ffn_splitk.py tinyllama-1.1b
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from polyllama.plugins.cuda_triton.ffn import _chunk, _normed_input, _tiles
from polyllama.plugins.cuda_triton.kernels import pdl_start
from timing import (floor_us, for_each_shape, greedy_step, median_us, model_after_prompt,
                    replayed_against_first, shape_parser)

ATOMIC, RED_V4, NO_OUTPUT = "atomic_add", "red.v4", "no output"


@triton.jit
def _ffn_kernel(y_ptr, x_ptr, g_ptr, w13_ptr, w2t_ptr, F, K, eps, R: tl.constexpr,
                BLOCK_K: tl.constexpr, ADD: tl.constexpr, PDL: tl.constexpr):
    """y += W2 (silu(W1 xn) * (W3 xn)) for the program's R hidden rows; xn = rmsnorm(x).
    ADD: 0 atomic_add, 1 red.v4, 2 no output (one number per program)."""
    cols = tl.arange(0, BLOCK_K)
    w1, w3, w2 = _tiles(w13_ptr, w2t_ptr, tl.program_id(0), F, K, R, BLOCK_K)
    pdl_start(PDL)
    xg, inv = _normed_input(x_ptr, g_ptr, cols, K, eps)
    part = _chunk(tl.zeros([BLOCK_K], tl.float32), w1, w3, w2, xg, inv)
    if ADD == 0:
        tl.atomic_add(y_ptr + cols, part, mask=cols < K, sem="relaxed")
    elif ADD == 1:              # K % 4 == 0; each column has one owner thread (checked)
        tl.inline_asm_elementwise(
            "red.global.gpu.relaxed.add.v4.f32 [$4], {$8, $9, $10, $11}; mov.b32 $0, 0; "
            "mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0;",
            "=r,=r,=r,=r,l,l,l,l,f,f,f,f", [(y_ptr + cols).to(tl.int64), part],
            dtype=tl.int32, is_pure=False, pack=4)
    else:
        tl.store(y_ptr + tl.program_id(0) % K, tl.sum(part, axis=0))


@triton.jit
def _o_kernel(out_ptr, out32_ptr, x_ptr, w_ptr, r_ptr, N, K, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """out = r + W x, stored in out's dtype and in float32 (the shipped GEMV's tiles)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :],
                mask=(rows[:, None] < N) & (cols[None, :] < K), other=0.0,
                eviction_policy="evict_first")
    pdl_start(PDL)
    x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    y += tl.load(r_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < N)
    tl.store(out32_ptr + rows, y, mask=rows < N)


class FusedFfnStep:
    """The decode step with each layer's FFN as one _ffn_kernel; the residual stream is
    float32 from the first o projection on."""

    def __init__(self, model):
        self.model = model
        self.w2t = [L.w2.parts["w"].t().contiguous() for L in model.layers]
        self.y32 = torch.zeros((1, model.config.dim), dtype=torch.float32, device="cuda")

    def __call__(self, R, warps, add):
        m, a, c, y32 = self.model, self.model._decode, self.model.config, self.y32
        k, pos, D = m.k, m.pos.native, c.dim
        block = triton.next_power_of_2(D)
        k.embedding(a.x, m.tok_embeddings, a.ids)
        resid = a.x
        for L, w2t in zip(m.layers, self.w2t):
            m._norm_linear(a.qkv, resid, L.attn_norm, L.wqkv, a.h)
            k.rope(a.q, a.k, pos, m.cos, m.sin)
            k.attention(a.attn3, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, m.scale)
            _o_kernel[(triton.cdiv(D, 2),)](a.x, y32, a.attn, L.wo.parts["w"], resid, D, D,
                                            BLOCK_N=2, BLOCK_K=block, PDL=True,
                                            launch_pdl=True, num_warps=4)
            resid = y32
            _ffn_kernel[(triton.cdiv(c.hidden_dim, R),)](
                y32, a.x, L.ffn_norm, L.w13.parts["w"], w2t, c.hidden_dim, D,
                float(c.norm_eps), R=R, BLOCK_K=block, ADD=add, PDL=True, launch_pdl=True,
                num_warps=warps)
        m._norm_linear(m.logits.native, y32, m.norm, m.output, a.h)
        m._pick("argmax")


def compare(dev, shape: str, bandwidth: float) -> None:
    model = model_after_prompt(dev, shape, ffn_op=False)
    floor = floor_us(model, bandwidth)
    fused = FusedFfnStep(model)
    variants = [("chain (shipped)", greedy_step(model))]
    for R, warps, add in ((8, 8, ATOMIC), (4, 8, ATOMIC), (2, 4, ATOMIC), (8, 8, RED_V4),
                          (4, 8, RED_V4), (8, 8, NO_OUTPUT), (4, 8, NO_OUTPUT)):
        code = (ATOMIC, RED_V4, NO_OUTPUT).index(add)
        variants.append((f"one FFN kernel, R {R}, {warps} warps, {add}",
                         lambda R=R, warps=warps, code=code: fused(R, warps, code)))
    runners = replayed_against_first(dev, model, variants)
    for name, run, err in runners:
        us = median_us(run, 50)
        print(f"{shape:15s} {name:42s} {us:8.1f} us  {100 * floor / us:5.1f}% of the floor "
              f"({floor:.1f} us)  logits off by {err:.1e} of the largest", flush=True)


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b"]).parse_args(argv)
    for_each_shape(args.shapes, compare)


if __name__ == "__main__":
    main()
