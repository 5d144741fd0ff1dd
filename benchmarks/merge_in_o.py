"""Does the decode step gain when the o projection merges the attention's splits?

The shipped decode attention ends with a merge: the last (kv head, split) program to arrive
(an atomic counter tells) reads every split's partial softmax and writes the attention
output, which the o GEMV then loads. Here the split programs only store their partials,
and each o program merges the splits of the query heads whose columns it owns (and adds the
new token's key and value), multiplies them into its weight tile (rows x those heads'
columns), and adds its row sums into a float32 residual stream with atomics. The counter's
round trip and the merging program's leave the step; in return o's programs each add a
part of their rows, and every GEMV reads a float32 input.

Variants, each the whole decode step (random weights, PROMPT tokens cached, argmax pick,
CUDA graph replay), timed in one process, interleaved; logits set against the shipped
step's:
- the shipped step;
- the shipped kernels with the residual stream in float32 (what that alone costs);
- o merging the splits, for 1, 2 or 4 query heads a program;
- o merging, and w2 split over its long rows into programs of one tile each, loaded before
  the wait, adding their row sums with atomics too (rows, columns, warps).

    python benchmarks/merge_in_o.py tinyllama-1.1b llama3.2-1b llama2-7b
"""
from __future__ import annotations

import torch

import triton
import triton.language as tl

from polyllama.plugins.cuda_triton import attention as shipped
from polyllama.plugins.cuda_triton.attention import _split_bounds, _split_softmax
from polyllama.plugins.cuda_triton.device import interpreting, pdl_enabled
from polyllama.plugins.cuda_triton.kernels import LOG2E, pdl_start
from timing import (cuda_triton_and_bandwidth, floor_us, greedy_step, model_after_prompt,
                    print_against_first, shape_parser)

O_VALUES = 16384          # weight values an o program holds (128 a thread, 4 warps)


@triton.jit
def _split_kernel(part_ptr, q_ptr, kc_ptr, vc_ptr, pos_ptr, qk_scale, s_qh, s_c,
                  G: tl.constexpr, HD: tl.constexpr, N_SPLIT: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                  PRECISION: tl.constexpr, DOT_F32: tl.constexpr, PDL: tl.constexpr):
    """The shipped decode kernel's split programs, without the merge."""
    kvh, sp = tl.program_id(0), tl.program_id(1)
    n = tl.load(pos_ptr)
    m, l, acc = _split_softmax(q_ptr, kc_ptr, vc_ptr, n, kvh, sp, qk_scale, s_qh, s_c, G, HD,
                               N_SPLIT, BLOCK_G, BLOCK_S, BLOCK_D, PRECISION, DOT_F32, PDL)
    start, end = _split_bounds(n, sp, N_SPLIT, BLOCK_S)
    if start < end:
        d = tl.arange(0, BLOCK_D)
        g = tl.arange(0, BLOCK_G)
        ROW: tl.constexpr = BLOCK_D + 2
        mine = part_ptr + (kvh * G + g) * (N_SPLIT * ROW) + sp * ROW
        tl.store(mine[:, None] + d[None, :], acc, mask=(g < G)[:, None])
        tl.store(mine + BLOCK_D, m, mask=g < G)
        tl.store(mine + BLOCK_D + 1, l, mask=g < G)


@triton.jit
def _o_merge_kernel(x_ptr, part_ptr, w_ptr, q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr,
                    qk_scale, D, s_w, s_qh, s_kh, s_c, H: tl.constexpr, G: tl.constexpr,
                    HD: tl.constexpr, HP: tl.constexpr, N_SPLIT: tl.constexpr,
                    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, ATOMIC: tl.constexpr,
                    PDL: tl.constexpr):
    """Program (row block, group of HP query heads): x[rows] += Wo[rows, the heads' columns]
    @ (the heads' attention, merged from the splits' partials here)."""
    pid = tl.program_id(0)
    h0 = (pid % (H // HP)) * HP
    rb = pid // (H // HP)
    rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < D
    cols = h0 * HD + tl.arange(0, HP * HD)
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * s_w + cols[None, :], mask=rmask[:, None],
                other=0.0, eviction_policy="evict_first")
    n = tl.load(pos_ptr)
    sps = tl.arange(0, N_SPLIT)
    starts, ends = _split_bounds(n, sps, N_SPLIT, BLOCK_S)
    used = starts < ends
    pdl_start(PDL)
    hh = h0 + tl.arange(0, HP)
    d = tl.arange(0, HD)
    kvh = h0 // G
    ROW: tl.constexpr = HD + 2
    base = (part_ptr + hh * (N_SPLIT * ROW))[:, None] + sps[None, :] * ROW      # [HP, N_SPLIT]
    u2 = (hh < H)[:, None] & used[None, :]
    ms = tl.load(base + HD, mask=u2, other=float("-inf"), cache_modifier=".cg")
    ls = tl.load(base + HD + 1, mask=u2, other=0.0, cache_modifier=".cg")
    accs = tl.load(base[:, :, None] + d[None, None, :], mask=u2[:, :, None], other=0.0,
                   cache_modifier=".cg")
    q = tl.load(q_ptr + hh[:, None] * s_qh + d[None, :]).to(tl.float32)
    k_new = tl.load(k_ptr + kvh * s_kh + d)
    v_new = tl.load(v_ptr + kvh * s_kh + d)
    s_new = tl.sum(q * k_new.to(tl.float32)[None, :], axis=1) * qk_scale
    top = tl.maximum(tl.max(ms, axis=1), s_new)
    wt = tl.where(u2, tl.exp2(ms - top[:, None]), 0.0)
    w_new = tl.exp2(s_new - top)
    total = tl.sum(ls * wt, axis=1) + w_new
    o = tl.sum(accs * wt[:, :, None], axis=1) + w_new[:, None] * v_new.to(tl.float32)[None, :]
    o = (o / total[:, None]).to(q_ptr.dtype.element_ty).to(tl.float32)   # as attention stores
    y = tl.sum(w.to(tl.float32) * tl.reshape(o, [HP * HD])[None, :], axis=1)
    if ATOMIC:
        tl.atomic_add(x_ptr + rows, y, mask=rmask, sem="relaxed")
    else:
        tl.store(x_ptr + rows, y, mask=rmask)
    if (rb == 0) & (h0 % G == 0):                 # the new key and value fill cache row n
        row = n.to(tl.int64) * s_c + kvh * HD + d
        tl.store(kc_ptr + row, k_new)
        tl.store(vc_ptr + row, v_new)


@triton.jit
def _splitk_kernel(x_ptr, inp_ptr, w_ptr, N, K, s_w, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """Program (row block, column block): x[rows] += W[rows, cols] @ inp[cols], the tile
    loaded whole before the PDL wait."""
    n_cb = tl.cdiv(K, BLOCK_K)
    rb, cb = tl.program_id(0) // n_cb, tl.program_id(0) % n_cb
    rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = cb * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask, cmask = rows < N, cols < K
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * s_w + cols[None, :],
                mask=rmask[:, None] & cmask[None, :], other=0.0, eviction_policy="evict_first")
    pdl_start(PDL)
    a = tl.load(inp_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    tl.atomic_add(x_ptr + rows, y, mask=rmask, sem="relaxed")


def splitk_add(x32, inp, w, block_n, block_k, warps):
    """x32[1, N] (float32) += inp[1, K] @ W^T by (row block, column block) programs."""
    W = w.parts["w"]
    N, K = W.shape
    pdl = pdl_enabled(inp.device)
    _splitk_kernel[(triton.cdiv(N, block_n) * triton.cdiv(K, block_k),)](
        x32, inp, W, N, K, W.stride(0), BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl,
        launch_pdl=pdl, num_warps=warps)


_parts: dict = {}


def attention_o(x32, q, k, v, k_cache, v_cache, pos, scale, wo, heads_per, atomic):
    """x32[1, D] (float32) += attention(q, k, v over the cache) @ Wo^T for one token."""
    _, H, hd = q.shape
    S, KV, _ = k_cache.shape
    G = H // KV
    W = wo.parts["w"]
    D = W.shape[0]
    assert hd == triton.next_power_of_2(hd) and G % heads_per == 0
    block_s = shipped.DECODE_BLOCK_S
    n_split = shipped._n_split(q.device, KV, S, G, block_s)
    key = (H, n_split, hd)
    if key not in _parts:
        _parts[key] = torch.empty((H, n_split, hd + 2), dtype=torch.float32, device=q.device)
    part = _parts[key]
    pdl = dict(PDL=pdl_enabled(q.device), launch_pdl=pdl_enabled(q.device))
    fp32 = q.element_size() == 4
    qk_scale = float(scale) * LOG2E.value
    _split_kernel[(KV, n_split)](
        part, q, k_cache, v_cache, pos, qk_scale, q.stride(1), k_cache.stride(0), G=G, HD=hd,
        N_SPLIT=n_split, BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_S=block_s,
        BLOCK_D=hd, PRECISION="ieee" if fp32 else "tf32", DOT_F32=interpreting(),
        num_warps=shipped._decode_warps(q.device, KV * n_split), **pdl)
    block_n = O_VALUES // (heads_per * hd)
    _o_merge_kernel[(triton.cdiv(D, block_n) * (H // heads_per),)](
        x32, part, W, q, k, v, k_cache, v_cache, pos, qk_scale, D, W.stride(0), q.stride(1),
        k.stride(1), k_cache.stride(0), H=H, G=G, HD=hd, HP=heads_per, N_SPLIT=n_split,
        BLOCK_S=block_s, BLOCK_N=block_n, ATOMIC=atomic, num_warps=4, **pdl)


def float32_step(model, heads_per=None, atomic=True, w2=None):
    """greedy_step with the residual stream in float32; with heads_per, o merges the
    attention's splits (heads_per query heads a program); with w2 = (rows, columns, warps),
    w2 runs split over its columns."""
    a, k, c = model._decode, model.k, model.config
    pos = model.pos.native
    x32 = torch.zeros((1, c.dim), dtype=torch.float32, device=a.x.device)

    def step():
        k.embedding(x32, model.tok_embeddings, a.ids)
        for L in model.layers:
            model.qkv_rope_k(a.qkv, x32, L.attn_norm, c.norm_eps, L.wqkv, pos, model.cos,
                             model.sin, c.n_heads + c.n_kv_heads)
            if heads_per is None:
                k.attention(a.attn3, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, model.scale)
                model.linear_add_k(x32, a.attn, L.wo, x32)
            else:
                attention_o(x32, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, model.scale, L.wo,
                            heads_per, atomic)
            model.swiglu_k(a.act, x32, L.ffn_norm, c.norm_eps, L.w13)
            if w2 is None:
                model.linear_add_k(x32, a.act, L.w2, x32)
            else:
                splitk_add(x32, a.act, L.w2, *w2)
        model.argmax_k(model.decode_ws.ids.native, model.logits.native, x32, model.norm,
                       c.norm_eps, model.output)
    return step


W2_CONFIGS = ((16, 1024, 4), (8, 2048, 4), (32, 512, 4), (8, 1024, 4), (16, 2048, 8),
              (32, 1024, 8))


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b", "llama2-7b"])
    args = p.parse_args(argv)
    dev, bandwidth = cuda_triton_and_bandwidth()
    for shape in args.shapes:
        model = model_after_prompt(dev, shape, ffn_op=False)
        G = model.config.n_heads // model.config.n_kv_heads
        variants = [("shipped", greedy_step(model)),
                    ("float32 residual", float32_step(model))]
        for hp in (1, 2, 4):
            if G % hp == 0:
                variants.append((f"o merges, {hp} heads", float32_step(model, hp)))
        hp = min(G, 4)
        for cfg in W2_CONFIGS:
            variants.append((f"o merges {hp}, w2 split {cfg}", float32_step(model, hp, w2=cfg)))
        print_against_first(dev, model, shape, floor_us(model, bandwidth), variants)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
