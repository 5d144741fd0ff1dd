"""Can one persistent kernel beat a chain of GEMV kernels at TinyLlama's size?

TinyLlama's decode GEMVs (22 x [qkv, o, w13, w2] + classifier, bf16, random weights) run
two ways on the same weights, each replayed as a CUDA graph (CUDA events, median of 7):
  - chain: one cuda:triton GEMV kernel per matrix, with programmatic dependent launch;
  - persistent: one cooperative kernel, a program per multiprocessor (or two), each owning
    a slice of every matrix's rows, four weight tiles in flight, the first four of a stage
    issued before a grid barrier (an atomic counter per stage) waits for the stage before.
    "no barriers" drops the waits: the result is wrong, the time is pure streaming.
--tiny shrinks every matrix to near nothing, so the time is the cost of 89 dependent links.

    python benchmarks/persistent_chain.py [--tiny]
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from polyllama import get_device
from polyllama.ops import DENSE, Weight
from polyllama.plugins.cuda_triton import linear

from timing import graph_us


@triton.jit
def _wait(bar_ptr, target):
    c = tl.load(bar_ptr, volatile=True)
    while c < target:
        c = tl.load(bar_ptr, volatile=True)
    tl.atomic_add(bar_ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _tile(w_ptr, r0, r_end, i, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = r0 + i * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    return tl.load(w_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :],
                   mask=(rows < r_end)[:, None] & (cols < K)[None, :], other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _stage(x_ptr, w_ptr, out_ptr, bar_ptr, pid, G, WAIT, N: tl.constexpr, K: tl.constexpr,
           ADD: tl.constexpr, BARRIERS: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_K: tl.constexpr):
    """out[rows] (+)= W[rows] @ x for this program's rows [r0, r_end)."""
    R = tl.cdiv(N, G)
    r0 = pid * R
    r_end = tl.minimum(r0 + R, N)
    w0 = _tile(w_ptr, r0, r_end, 0, K, BLOCK_N, BLOCK_K)
    w1 = _tile(w_ptr, r0, r_end, 1, K, BLOCK_N, BLOCK_K)
    w2 = _tile(w_ptr, r0, r_end, 2, K, BLOCK_N, BLOCK_K)
    w3 = _tile(w_ptr, r0, r_end, 3, K, BLOCK_N, BLOCK_K)
    if BARRIERS:
        if WAIT:
            _wait(bar_ptr, G)
    cols = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + cols, mask=cols < K, other=0.0, cache_modifier=".cg").to(tl.float32)
    for i in range(0, tl.cdiv(r_end - r0, BLOCK_N)):
        rows = r0 + i * BLOCK_N + tl.arange(0, BLOCK_N)
        y = tl.sum(w0.to(tl.float32) * x[None, :], axis=1)
        if ADD:
            y += tl.load(out_ptr + rows, mask=rows < r_end, other=0.0,
                         cache_modifier=".cg").to(tl.float32)
        tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=rows < r_end)
        w0, w1, w2, w3 = w1, w2, w3, _tile(w_ptr, r0, r_end, i + 4, K, BLOCK_N, BLOCK_K)
    if BARRIERS:
        tl.debug_barrier()
        tl.atomic_add(bar_ptr + 1, 1, sem="release")


@triton.jit
def _persistent_kernel(x_ptr, qkv_ptr, h_ptr, logit_ptr, wqkv, wo, w13, w2, wout, bars, L,
                       D: tl.constexpr, F: tl.constexpr, V: tl.constexpr, QKV: tl.constexpr,
                       BN: tl.constexpr, BK: tl.constexpr, BN2: tl.constexpr,
                       BK2: tl.constexpr, BARRIERS: tl.constexpr):
    pid, G = tl.program_id(0), tl.num_programs(0)
    for layer in range(L):
        s = bars + layer * 4
        _stage(x_ptr, wqkv + layer * QKV * D, qkv_ptr, s, pid, G, layer > 0, QKV, D, False,
               BARRIERS, BN, BK)
        _stage(qkv_ptr, wo + layer * D * D, x_ptr, s + 1, pid, G, True, D, D, True,
               BARRIERS, BN, BK)
        _stage(x_ptr, w13 + layer * 2 * F * D, h_ptr, s + 2, pid, G, True, 2 * F, D, False,
               BARRIERS, BN, BK)
        _stage(h_ptr, w2 + layer * D * F, x_ptr, s + 3, pid, G, True, D, F, True,
               BARRIERS, BN2, BK2)
    _stage(x_ptr, wout, logit_ptr, bars + L * 4, pid, G, True, V, D, False, BARRIERS, BN, BK)


# Kernels that round each stage's input to bf16 end about 1e-2 (relative) off the float64
# reference; one that reads its input before it is complete is off by order 1.
ROUNDED_INPUT_TOL = 3e-2


def check_close(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    """Exit with an error when got is further than tol (relative to ref's largest) from ref."""
    err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    if err > tol:
        raise SystemExit(f"{what}: wrong result (max relative error {err:.2e})")


class TinyLlamaGemvs:
    """TinyLlama's decode GEMV weights (random, bf16) and the chain of cuda:triton GEMV
    kernels over them: per layer qkv = W_qkv rms(x), x += W_o qkv[:D],
    h = silu * up of W_13 rms(x), x += W_2 h; then logits = W_out rms(x)."""

    def __init__(self, tiny: bool):
        self.shape = L, D, F, V, QKV = ((22, 256, 512, 512, 256) if tiny
                                        else (22, 2048, 5632, 32000, 2560))
        dev, bf = torch.device("cuda"), torch.bfloat16
        torch.manual_seed(0)
        self.wqkv, self.wo = (torch.randn(L, n, D, device=dev, dtype=bf) * 0.02 for n in (QKV, D))
        self.w13 = torch.randn(L, 2 * F, D, device=dev, dtype=bf) * 0.02
        self.w2 = torch.randn(L, D, F, device=dev, dtype=bf) * 0.02
        self.wout = torch.randn(V, D, device=dev, dtype=bf) * 0.02
        weights = (self.wqkv, self.wo, self.w13, self.w2, self.wout)
        self.nbytes = 2 * sum(t.numel() for t in weights)
        self.x = torch.randn(D, device=dev, dtype=bf)
        self.g = torch.ones(D, device=dev, dtype=bf)
        self.qkv = torch.empty(QKV, device=dev, dtype=bf)
        self.h = torch.empty(2 * F, device=dev, dtype=bf)
        self.logits = torch.empty(V, device=dev, dtype=bf)
        self.bandwidth = get_device("cuda:triton").measure_bandwidth()   # as polyllama bench
        self.floor_us = self.nbytes / self.bandwidth * 1e6

    def _gemv(self, out, inp, W, norm, add, swiglu=False):
        """out = W inp for one token through cuda:triton's own GEMV ops (rmsnorm_linear,
        linear_add, rmsnorm_swiglu), on the leading K of inp and N of out."""
        K, N = W.shape[1], W.shape[0] // 2 if swiglu else W.shape[0]
        x, y, w = inp[:K].view(1, K), out[:N].view(1, N), Weight(DENSE, tuple(W.shape), {"w": W})
        if swiglu:
            linear.rmsnorm_swiglu(y, x, self.g, 1e-5, w)
        elif norm:
            linear.rmsnorm_linear(y, x, self.g, 1e-5, w)
        elif add:
            linear.linear_add(y, x, w, y)
        else:
            linear.linear(y, x, w)

    def chain(self, before_o=None):
        """One GEMV kernel per matrix, each launched with PDL; before_o() (if given) runs
        between each layer's qkv and o GEMVs, where the decode step has its attention."""
        for i in range(self.shape[0]):
            self._gemv(self.qkv, self.x, self.wqkv[i], True, False)
            if before_o is not None:
                before_o()
            self._gemv(self.x, self.qkv, self.wo[i], False, True)
            self._gemv(self.h, self.x, self.w13[i], True, False, swiglu=True)
            self._gemv(self.x, self.h, self.w2[i], False, True)
        self._gemv(self.logits, self.x, self.wout, True, False)

    def reference(self, x0: torch.Tensor) -> torch.Tensor:
        """The same data flow in float64 from x0 (the residual stream kept unrounded)."""
        L, D, F, _, _ = self.shape
        g = self.g.double()

        def rms(v):
            return v / torch.sqrt((v * v).mean() + 1e-5) * g

        h = x0.double()
        for i in range(L):
            qkv = self.wqkv[i].double() @ rms(h)
            h = h + self.wo[i].double() @ qkv[:D]
            a = self.w13[i].double() @ rms(h)
            h = h + self.w2[i].double() @ (torch.nn.functional.silu(a[:F]) * a[F:])
        return self.wout.double() @ rms(h)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="near-empty matrices: link cost only")
    args = p.parse_args(argv)
    w = TinyLlamaGemvs(args.tiny)
    L, D, F, V, QKV = w.shape
    wqkv, wo, w13, w2, wout = w.wqkv, w.wo, w.w13, w.w2, w.wout
    x, qkv, h, logits = w.x, w.qkv, w.h, w.logits
    floor = w.floor_us
    dev = x.device
    print(f"{torch.cuda.get_device_name()}: copy {w.bandwidth / 1e12:.3f} TB/s, weights "
          f"{w.nbytes / 1e9:.3f} GB, floor {floor:.1f} us")

    us = graph_us(w.chain)
    print(f"chain of {4 * L + 1} GEMV kernels (PDL)       {us:8.1f} us  "
          f"{100 * floor / us:5.1f}% of the floor")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    bars = torch.zeros(4 * L + 2, dtype=torch.int32, device=dev)
    bk, bk2 = triton.next_power_of_2(D), triton.next_power_of_2(F)
    for per_sm, bn, bn2, warps in ((1, 8, 2, 16), (2, 2, 1, 4), (1, 2, 1, 4), (1, 4, 1, 8)):
        for barriers in (True, False):
            grid = sms * per_sm

            def persistent():
                bars.zero_()
                bars[0].fill_(grid)
                _persistent_kernel[(grid,)](
                    x, qkv, h, logits, wqkv, wo, w13, w2, wout, bars, L, D=D, F=F, V=V,
                    QKV=QKV, BN=bn, BK=bk, BN2=bn2, BK2=bk2, BARRIERS=barriers,
                    num_warps=warps, num_stages=1, launch_cooperative_grid=True)
            us = graph_us(persistent)
            print(f"persistent, {grid:3d} programs x {warps:2d} warps, "
                  f"{'barriers   ' if barriers else 'no barriers'} {us:8.1f} us  "
                  f"{100 * floor / us:5.1f}% of the floor")


if __name__ == "__main__":
    main()
