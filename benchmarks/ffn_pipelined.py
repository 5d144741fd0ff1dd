"""Does the w1|w3 -> w2 link cost less when the FFN is pipelined over chunks of its width?

In the decode step w2 starts late and then walks its long rows tile after tile with nothing
else streaming beside it: its increment exceeds its bytes by ~3 us a layer on TinyLlama
(decode_timeline.py). The SwiGLU output h is element-wise in the hidden units, so the FFN
can run in C chunks of its hidden width: stage 0 computes h for chunk 0; stage i, one
kernel, computes h for chunk i beside W2[:, chunk i-1] h[chunk i-1]; stage C adds the last
chunk. The w2 programs come first in each grid; the partial sums go through a float32
buffer (the first chunk's adds start from the residual, the last stores it rounded once,
as the chain does). Whole-row w1|w3 programs load their rows before the PDL wait, as in
the chain; w2 programs their first tile. A kernel takes the registers of its heavier
branch, so the w2 programs sum each tile at once: 2 rows x 1024 keep the kernel at 80
registers a thread, the chain's w1|w3 kernel takes 75 (8 rows made it 198-223, and cost
the w1|w3 programs their occupancy).

The whole decode step (random weights, 512 tokens in the KV cache, replayed as a CUDA graph
with the argmax pick) against the shipped chain, in one process; C = 1 runs the same
kernels as two stages, the chain's shape. Logits are checked against the chain's.

    python benchmarks/ffn_pipelined.py tinyllama-1.1b llama3.2-1b llama2-7b
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from polyllama.plugins.cuda_triton.device import pdl_enabled
from polyllama.plugins.cuda_triton.kernels import pdl_start
from timing import (floor_us, for_each_shape, greedy_step, model_after_prompt,
                    print_against_first, shape_parser)


@triton.jit
def _stage_kernel(out_ptr, r_ptr, w2_ptr, hp_ptr, c0, KC, D, F,
                  h_ptr, x_ptr, g_ptr, w13_ptr, f0, f1, eps, P2,
                  BN2: tl.constexpr, BK2: tl.constexpr, BN13: tl.constexpr,
                  BD: tl.constexpr, PDL: tl.constexpr):
    """Programs 0..P2-1: out[rows] = r[rows] + W2[rows, c0:c0+KC] hp[c0:c0+KC] (float32
    sums). The others: h[f] = silu(W1[f] xn) * (W3[f] xn) for f in [f0, f1), xn = rmsnorm(x)."""
    pid = tl.program_id(0)
    if pid < P2:
        rows = pid * BN2 + tl.arange(0, BN2)
        cols = tl.arange(0, BK2)
        rmask = rows[:, None] < D
        w_rows = w2_ptr + rows.to(tl.int64)[:, None] * F + c0
        w = tl.load(w_rows + cols[None, :], mask=rmask & (cols[None, :] < KC), other=0.0,
                    eviction_policy="evict_first")
        pdl_start(PDL)
        y = tl.zeros([BN2], tl.float32)          # summed per tile: few registers
        for k0 in range(0, KC, BK2):
            k = k0 + cols
            nxt = k + BK2
            w_next = tl.load(w_rows + nxt[None, :], mask=rmask & (nxt[None, :] < KC),
                             other=0.0, eviction_policy="evict_first")
            x = tl.load(hp_ptr + c0 + k, mask=k < KC, other=0.0).to(tl.float32)
            y += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
            w = w_next
        y += tl.load(r_ptr + rows, mask=rows < D, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < D)
    else:
        f = f0 + (pid - P2) * BN13 + tl.arange(0, BN13)
        dcols = tl.arange(0, BD)
        m = (f[:, None] < f1) & (dcols[None, :] < D)
        tile = f.to(tl.int64)[:, None] * D + dcols[None, :]
        w1 = tl.load(w13_ptr + tile, mask=m, other=0.0, eviction_policy="evict_first")
        w3 = tl.load(w13_ptr + F.to(tl.int64) * D + tile, mask=m, other=0.0,
                     eviction_policy="evict_first")
        pdl_start(PDL)
        xr = tl.load(x_ptr + dcols, mask=dcols < D, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.sum(xr * xr, axis=0) / D + eps)
        xg = xr * tl.load(g_ptr + dcols, mask=dcols < D, other=0.0).to(tl.float32)
        a = tl.sum(w1.to(tl.float32) * xg[None, :], axis=1) * inv
        b = tl.sum(w3.to(tl.float32) * xg[None, :], axis=1) * inv
        tl.store(h_ptr + f, (a * tl.sigmoid(a) * b).to(h_ptr.dtype.element_ty), mask=f < f1)


class PipelinedFfnStep:
    """The decode step with each layer's FFN in C chunks (C + 1 kernels)."""

    def __init__(self, model):
        self.model = model
        self.acc = torch.zeros((model.config.dim,), dtype=torch.float32,
                               device=model.logits.native.device)

    def ffn(self, L, a, C, bn2, bk2, warps):
        c = self.model.config
        D, F = c.dim, c.hidden_dim
        bounds = [F * i // C for i in range(C + 1)]
        w13, w2 = L.w13.parts["w"], L.w2.parts["w"]
        p2 = triton.cdiv(D, bn2)
        pdl = pdl_enabled(self.acc.device)
        for s in range(C + 1):
            chunk13 = (bounds[s], bounds[s + 1]) if s < C else (F, F)
            p13 = chunk13[1] - chunk13[0]               # a program per hidden unit
            has2 = s > 0
            c0, c1 = (bounds[s - 1], bounds[s]) if has2 else (0, 0)
            out = a.x if s == C else self.acc
            r = a.x if s == 1 else self.acc
            _stage_kernel[(p2 * has2 + p13,)](
                out, r, w2, a.act, c0, c1 - c0, D, F,
                a.act, a.x, L.ffn_norm, w13, chunk13[0], chunk13[1], float(c.norm_eps),
                p2 * has2, BN2=bn2, BK2=bk2, BN13=1, BD=triton.next_power_of_2(D),
                PDL=pdl, launch_pdl=pdl, num_warps=warps)

    def __call__(self, C, bn2, bk2, warps):
        """The greedy decode step with the executor's FFN swapped for this one."""
        self.model._ffn = lambda L, a: self.ffn(L, a, C, bn2, bk2, warps)
        try:
            greedy_step(self.model)()
        finally:
            del self.model._ffn


VARIANTS = [(1, 2, 1024, 4), (2, 2, 1024, 4), (4, 2, 1024, 4), (1, 4, 1024, 4),
            (2, 4, 1024, 4), (3, 4, 1024, 4), (2, 4, 512, 4)]


def compare(dev, shape: str, bandwidth: float) -> None:
    model = model_after_prompt(dev, shape, ffn_op=False)
    floor = floor_us(model, bandwidth)
    piped = PipelinedFfnStep(model)
    variants = [("chain (shipped)", greedy_step(model))]
    for C, bn2, bk2, warps in VARIANTS:
        variants.append((f"C {C}, w2 {bn2} x {bk2}, {warps} warps",
                         lambda v=(C, bn2, bk2, warps): piped(*v)))
    print_against_first(dev, model, shape, floor, variants)


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b"]).parse_args(argv)
    for_each_shape(args.shapes, compare)


if __name__ == "__main__":
    main()
