"""Can split-K fusion across the RMSNorm remove half of TinyLlama's GEMV kernels?

The RMSNorm scale is one scalar, so W_next (g * x / rms(x)) = (W_next (g * x)) / rms(x).
A program that owns rows kb of a GEMV's output (x[kb] += W[kb, :] inp) can at once multiply
them into the next matrix's columns, W_next[:, kb] (g[kb] x[kb]), and add its partial sums
into float32 accumulators atomically; the consumer applies 1/rms from a sum of squares
gathered the same way. A layer's GEMVs then take two kernels, [o + w1|w3] and
[w2 + next qkv], instead of four, with nothing waiting inside a kernel. The next matrices
are stored transposed, so a program's columns are its own contiguous rows.

Both chains run TinyLlama's decode GEMVs (22 layers + classifier, bf16, the weights of
persistent_chain.TinyLlamaGemvs), checked against a float64 reference and replayed as
CUDA graphs. Per row-block size R, column tiles BK / BC and warps: adding with Triton's
atomic_add (`atom`), with `red` (no returned value; --red), and with plain stores instead
(wrong sums: the cost of streaming alone).

    python benchmarks/splitk_chain.py [--red]
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from persistent_chain import TinyLlamaGemvs, check_close
from polyllama.plugins.cuda_triton.kernels import pdl_start
from timing import graph_us


@triton.jit
def _red_add(ptrs, vals):
    """Float32 adds that return nothing (red; an atom's unused result still holds a
    register until L2 answers). Each element must have one owner thread, so BC = 256 x warps
    (the tile's layout then keeps the reduced axis inside a thread)."""
    tl.inline_asm_elementwise("red.relaxed.gpu.global.add.f32 [$1], $2; mov.u32 $0, 0;",
                              "=r,l,f", [ptrs.to(tl.int64), vals], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _splitk_kernel(x_ptr, inp_ptr, ss_in_ptr, w_ptr, wt_ptr, g_ptr, acc_ptr, ss_out_ptr,
                   D: tl.constexpr, K: tl.constexpr, NT: tl.constexpr, eps,
                   IN_MODE: tl.constexpr, HAS_W: tl.constexpr, HAS_T: tl.constexpr,
                   R: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr, F: tl.constexpr,
                   ADD: tl.constexpr, PDL: tl.constexpr):
    """Rows r of x: x[r] += W[r,:] inp (HAS_W); then acc[:] += WT[r,:]^T (g[r] x[r]) and
    ss_out += sum x[r]^2 (HAS_T), adding with atom (ADD 0), red (1) or not at all
    (2: a store, so the result is wrong and the time is the streaming alone).
    IN_MODE 0: inp is bf16 as is; 1: inp is a float32 accumulator scaled by
    rsqrt(ss_in/D + eps) (o's input); 2: inp is the w1|w3 float32 accumulator [2F]:
    inp = silu(a[:F] s) * a[F:] s (w2's input)."""
    r = tl.program_id(0) * R + tl.arange(0, R)
    ck = tl.arange(0, BK)
    cc = tl.arange(0, BC)
    w_rows = w_ptr + r.to(tl.int64)[:, None] * K
    t_rows = wt_ptr + r.to(tl.int64)[:, None] * NT
    if HAS_W:
        w = tl.load(w_rows + ck[None, :], mask=ck[None, :] < K, other=0.0,
                    eviction_policy="evict_first")
    if HAS_T:
        t = tl.load(t_rows + cc[None, :], mask=cc[None, :] < NT, other=0.0,
                    eviction_policy="evict_first")
    pdl_start(PDL)
    x = tl.load(x_ptr + r).to(tl.float32)
    if HAS_W:
        s = 1.0
        if IN_MODE != 0:
            s = tl.rsqrt(tl.load(ss_in_ptr) / D + eps)
        acc = tl.zeros([R], tl.float32)
        for k0 in range(0, K, BK):
            k = k0 + ck
            nk = k + BK
            w_next = tl.load(w_rows + nk[None, :], mask=nk[None, :] < K, other=0.0,
                             eviction_policy="evict_first")
            if IN_MODE == 0:
                v = tl.load(inp_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            elif IN_MODE == 1:
                v = tl.load(inp_ptr + k, mask=k < K, other=0.0) * s
            else:
                a = tl.load(inp_ptr + k, mask=k < K, other=0.0) * s
                u = tl.load(inp_ptr + F + k, mask=k < K, other=0.0) * s
                v = a * tl.sigmoid(a) * u
            acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)
            w = w_next
        x = x + acc
        x = x.to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + r, x)
        x = x.to(tl.float32)
    if HAS_T:
        tl.atomic_add(ss_out_ptr, tl.sum(x * x, axis=0), sem="relaxed")
        v = x * tl.load(g_ptr + r).to(tl.float32)
        for c0 in range(0, NT, BC):
            c = c0 + cc
            nc = c + BC
            t_next = tl.load(t_rows + nc[None, :], mask=nc[None, :] < NT, other=0.0,
                             eviction_policy="evict_first")
            part = tl.sum(t.to(tl.float32) * v[:, None], axis=0)
            if ADD == 0:
                tl.atomic_add(acc_ptr + c, part, mask=c < NT, sem="relaxed")
            elif ADD == 1:
                _red_add(tl.where(c < NT, acc_ptr + c, acc_ptr), tl.where(c < NT, part, 0.0))
            else:                                   # a plain store: streaming only
                tl.store(acc_ptr + c, part, mask=c < NT)
            t = t_next


class SplitK:
    """The split-K chain over w's weights (transposed copies of w_qkv and w_13)."""

    def __init__(self, w: TinyLlamaGemvs, R, BK, BC, warps, add):
        self.w, self.R, self.BK, self.BC, self.warps, self.add = w, R, BK, BC, warps, add
        L, D, F, V, QKV = w.shape
        dev = w.x.device
        self.wqkv_t = w.wqkv.transpose(1, 2).contiguous()       # [L, D, QKV]
        self.w13_t = w.w13.transpose(1, 2).contiguous()         # [L, D, 2F]
        self.qkv_acc = torch.zeros(L, QKV, device=dev)
        self.w13_acc = torch.zeros(L, 2 * F, device=dev)
        self.ss = torch.zeros(2 * L, device=dev)               # ss1[i] at 2i, ss2[i] at 2i+1
        self.dummy = torch.zeros(8, device=dev, dtype=torch.bfloat16)

    def _k(self, inp, ss_in, W, WT, acc, ss_out, K, NT, mode, has_w, has_t):
        L, D, F, V, QKV = self.w.shape
        _splitk_kernel[(D // self.R,)](
            self.w.x, inp, ss_in, W if W is not None else self.dummy, WT, self.w.g, acc,
            ss_out, D=D, K=K, NT=NT, eps=1e-5, IN_MODE=mode, HAS_W=has_w, HAS_T=has_t,
            R=self.R, BK=min(self.BK, triton.next_power_of_2(K)),
            BC=min(self.BC, triton.next_power_of_2(NT)), F=F, ADD=self.add, PDL=True,
            launch_pdl=True, num_warps=self.warps)

    def chain(self):
        """Layer 0's qkv, then per layer [o + w1|w3] and [w2 + next qkv], the classifier."""
        w = self.w
        L, D, F, V, QKV = w.shape
        self.qkv_acc.zero_()
        self.w13_acc.zero_()
        self.ss.zero_()
        ss = self.ss
        self._k(self.dummy, ss, None, self.wqkv_t[0], self.qkv_acc[0], ss[0:], D, QKV, 0,
                False, True)
        for i in range(L):
            self._k(self.qkv_acc[i], ss[2 * i:], w.wo[i], self.w13_t[i], self.w13_acc[i],
                    ss[2 * i + 1:], D, 2 * F, 1, True, True)
            last = i == L - 1
            self._k(self.w13_acc[i], ss[2 * i + 1:], w.w2[i],
                    self.wqkv_t[i] if last else self.wqkv_t[i + 1],
                    self.qkv_acc[i] if last else self.qkv_acc[i + 1],
                    ss[2 * i + 2:] if not last else ss[0:], F, QKV, 2, True, not last)
        w._gemv(w.logits, w.x, w.wout, True, False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--red", action="store_true", help="add with red instead of atom")
    args = p.parse_args(argv)
    w = TinyLlamaGemvs(tiny=False)
    print(f"{torch.cuda.get_device_name()}: copy {w.bandwidth / 1e12:.3f} TB/s, weights "
          f"{w.nbytes / 1e9:.3f} GB, floor {w.floor_us:.1f} us")
    x0 = w.x.clone()
    ref = w.reference(x0)
    us = graph_us(lambda: (w.x.copy_(x0), w.chain()))
    print(f"chain of 89 GEMV kernels              {us:8.1f} us  {100 * w.floor_us / us:5.1f}%")
    # BC = 256 x warps: each column of a tile belongs to one thread (red must not repeat)
    for R, BK, BC, warps in ((8, 1024, 1024, 4), (16, 1024, 1024, 4), (16, 2048, 2048, 8),
                             (8, 2048, 2048, 8), (4, 2048, 2048, 8), (16, 512, 512, 2)):
        times = []
        for add in (1 if args.red else 0, 2):
            s = SplitK(w, R, BK, BC, warps, add)
            w.x.copy_(x0)
            s.chain()
            if add < 2:
                check_close(w.logits, ref, 5e-2, f"split-K R={R}")
            times.append(graph_us(lambda: (w.x.copy_(x0), s.chain())))
        print(f"split-K R={R:2d} BK={BK} BC={BC} warps={warps}  {times[0]:8.1f} us  "
              f"{100 * w.floor_us / times[0]:5.1f}%   stores instead: {times[1]:8.1f} us",
              flush=True)


if __name__ == "__main__":
    main()
