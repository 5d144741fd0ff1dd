"""Can one persistent kernel for the whole decode pass beat cuda:triton's chain of kernels?

TinyLlama's chain of GEMV kernels alone stays at 83% of the floor on an H100 (each of its
89 dependent launches leaves memory idle for ~1.5 us), so this is the whole one-token pass
as one Gluon kernel (Hopper, bf16, Triton >= 3.6); one program per multiprocessor runs
every stage (per layer: qkv, attention, o, w1|w3, w2; then the classifier):
  - a producer warp streams the program's weight tiles through TMA into a ring in shared
    memory, stage after stage, never waiting for activations; it keeps only INFLIGHT tiles
    on their way, since bytes queued beyond what keeps memory busy delay the stage counters'
    atomics behind them (benchmarks/tma_ring_chain.py);
  - the consumer warps wait until every program has finished the previous stage (an arrival
    counter per stage), stage the input vector in shared memory (rmsnorm, silu(gate) * up, or
    the merge of the attention partials) and multiply their row blocks (block c, c + P, ...);
  - in the attention stage a program takes one (kv head, split of positions) item: it
    rotates q (and, for the split holding the new position, k, which it writes with v into
    the cache) and keeps a partial softmax that the o stage merges.
The residual stream, qkv and w1|w3 outputs stay float32 in scratch buffers.

On random weights of a shape, with a 512-token prompt in the cache (prefilled by
cuda:triton), the script checks one pass's logits against cuda:triton's composed step, then
times both replayed as CUDA graphs (with the argmax pick), and with --timeline prints where
the pass's stages spend their time.

    python benchmarks/decode_megakernel.py tinyllama-1.1b [--timeline]
"""
from __future__ import annotations

import numpy as np
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from polyllama.bench import SHAPES

from decode_ablation import step_us
from tma_ring_chain import (end_stage, load_tile, next_row_block, ring_buffers, row_block_sums,
                            stage_input, stamp, take_slot, wait_stage, weight_stage)
from timing import floor_us, for_each_shape, greedy_step, model_after_prompt, shape_parser

BK = 256            # tile width: a K chunk of 256 weights
BN = 16             # rows per tile and per row block
MAX_SLOTS = 24      # ring slots of [BN, BK], fewer when the staged input needs the room
INFLIGHT = 5        # tiles on their way at once per program
SMEM_BUDGET = 200 * 1024
BLOCK_T = 64        # cached positions per attention tile
MERGE_CHUNK = 12    # attention partials merged per round trip
CONSUMER_WARPS = 8


@gluon.jit
def _producer(dqkv, do, d13, d2, dout, ring, ready, empty, ids, L, D: gl.constexpr,
              F: gl.constexpr, V: gl.constexpr, QKV: gl.constexpr, BN: gl.constexpr,
              BK: gl.constexpr, NS: gl.constexpr, INFLIGHT: gl.constexpr):
    """One warp: streams this program's row blocks of every weight stage into the ring
    and ends each stage with a slot whose id is -1."""
    c = gl.program_id(0)
    P = gl.num_programs(0)
    g = 0
    for ws in range(4 * L + 1):
        m, layer, N, base, KC, NRB = weight_stage(ws, L, D, F, V, QKV, BN, BK)
        for rb in range(c, NRB, P):
            for kc in range(KC):
                slot = take_slot(ready, empty, ids, g, rb, NS, INFLIGHT)
                load_tile(m, dqkv, do, d13, d2, dout, base + rb * BN, kc * BK,
                          ready.index(slot), ring.index(slot))
                g += 1
        end_stage(ready, empty, ids, g, NS)
        g += 1


@gluon.jit
def _stage_merge(x_smem, part_ptr, ml_ptr, nsplit, H: gl.constexpr, HD: gl.constexpr,
                 G: gl.constexpr, SMAX: gl.constexpr, NW: gl.constexpr,
                 CHUNK: gl.constexpr):
    """The attention output [H, HD]: every head's split partials (m, l, acc) merged."""
    AL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NW, 1], [1, 0])
    HL: gl.constexpr = gl.SliceLayout(1, AL)
    hh = gl.arange(0, H, layout=HL)
    dd = gl.expand_dims(gl.arange(0, HD, layout=gl.SliceLayout(0, AL)), 0)
    row = (hh // G) * SMAX * G + hh % G           # (kv head, split 0, group member)
    big_m = gl.full([H], float("-inf"), gl.float32, layout=HL)
    l_sum = gl.zeros([H], gl.float32, layout=HL)
    acc = gl.zeros([H, HD], gl.float32, layout=AL)
    for s0 in range(0, nsplit, CHUNK):     # unrolled: the chunk's loads go out together
        for j in gl.static_range(CHUNK):
            ok = s0 + j < nsplit
            r = row + (s0 + j) * G
            m_j = gl.load(ml_ptr + r * 2, mask=ok, other=float("-inf"), cache_modifier=".cg")
            l_j = gl.load(ml_ptr + r * 2 + 1, mask=ok, other=0.0, cache_modifier=".cg")
            a_j = gl.load(part_ptr + gl.expand_dims(r * HD, 1) + dd, mask=ok, other=0.0,
                          cache_modifier=".cg")
            new_m = gl.maximum(big_m, m_j)
            keep = gl.where(new_m == float("-inf"), 0.0, gl.exp(big_m - new_m))
            take = gl.where(new_m == float("-inf"), 0.0, gl.exp(m_j - new_m))
            l_sum = l_sum * keep + l_j * take
            acc = acc * gl.expand_dims(keep, 1) + a_j * gl.expand_dims(take, 1)
            big_m = new_m
    out = acc / gl.expand_dims(l_sum, 1)
    x_smem._reinterpret(gl.bfloat16, [H, HD],
                        gl.SwizzledSharedLayout(1, 1, 1, [1, 0])).store(out.to(gl.bfloat16))


@gluon.jit
def _kv_tile(kc_ptr, vc_ptr, cache, t_start, t_end, KVH: gl.constexpr, HD: gl.constexpr,
             BLOCK_T: gl.constexpr, KL: gl.constexpr):
    """Cached keys and values of positions [t_start, t_end), at most BLOCK_T of them
    (other rows zero), each as its even and odd elements: RoPE rotates adjacent pairs,
    and halves keep the tiles' products small enough for registers."""
    tk = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, KL))
    ik = gl.expand_dims(gl.arange(0, HD // 2, layout=gl.SliceLayout(0, KL)), 0)
    rows = cache + gl.expand_dims((t_start + tk).to(gl.int64) * KVH * HD, 1) + 2 * ik
    valid = gl.expand_dims(t_start + tk < t_end, 1)
    k_even = gl.load(kc_ptr + rows, mask=valid, other=0.0, cache_modifier=".cg")
    k_odd = gl.load(kc_ptr + rows + 1, mask=valid, other=0.0, cache_modifier=".cg")
    v_even = gl.load(vc_ptr + rows, mask=valid, other=0.0, cache_modifier=".cg")
    v_odd = gl.load(vc_ptr + rows + 1, mask=valid, other=0.0, cache_modifier=".cg")
    return k_even, k_odd, v_even, v_odd


@gluon.jit
def _attention_tile(q_even, q_odd, k_even, k_odd, v_even, v_odd, t_start, t_end, m_i,
                    l_i, acc_even, acc_odd, BLOCK_T: gl.constexpr, QL: gl.constexpr,
                    SL: gl.constexpr):
    """Online softmax over one tile of positions [t_start, t_end)."""
    ts = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(0, SL))
    scores = gl.sum(gl.expand_dims(q_even, 1) * gl.expand_dims(k_even.to(gl.float32), 0),
                    axis=2)
    scores += gl.sum(gl.expand_dims(q_odd, 1) * gl.expand_dims(k_odd.to(gl.float32), 0),
                     axis=2)
    scores = gl.where(gl.expand_dims(t_start + ts < t_end, 0), scores, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(scores, axis=1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)     # a tile with no position
    p = gl.expand_dims(gl.exp(scores - gl.expand_dims(m_safe, 1)), 2)
    alpha = gl.exp(m_i - m_safe)
    l_i = l_i * alpha + gl.sum(gl.sum(p, axis=2), axis=1)
    alpha = gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, QL)), 1)
    acc_even = acc_even * alpha + gl.sum(p * gl.expand_dims(v_even.to(gl.float32), 0),
                                         axis=1)
    acc_odd = acc_odd * alpha + gl.sum(p * gl.expand_dims(v_odd.to(gl.float32), 0), axis=1)
    return m_new, l_i, acc_even, acc_odd


@gluon.jit
def _item_bounds(it, nsplit, span, pos, layer, ctx, KVH: gl.constexpr, HD: gl.constexpr):
    """(kv head, split, its positions [t0, t1), cache offset of the kv head's layer)."""
    kvh = it // nsplit
    sp = it % nsplit
    t0 = sp * span
    t1 = gl.minimum(t0 + span, pos + 1)
    return kvh, sp, t0, t1, kvh * HD + layer.to(gl.int64) * ctx * KVH * HD


@gluon.jit
def _attention_item(it, nsplit, span, pos, layer, k_even, k_odd, v_even, v_odd, qkv_ptr,
                    kc_ptr, vc_ptr, cos_ptr, sin_ptr, part_ptr, ml_ptr, scale, ctx,
                    H: gl.constexpr, KVH: gl.constexpr, HD: gl.constexpr, G: gl.constexpr,
                    SMAX: gl.constexpr, BLOCK_T: gl.constexpr, L3: gl.constexpr):
    """One (kv head, split) item: the partial softmax of its G query heads over the
    split's positions. k_even ... v_odd: its first tile of cached positions, loaded
    before the stage began; the new position comes from the qkv output."""
    HD2: gl.constexpr = HD // 2
    QL: gl.constexpr = gl.SliceLayout(1, L3)     # [G, HD2]
    KL: gl.constexpr = gl.SliceLayout(0, L3)     # [BLOCK_T, HD2]
    SL: gl.constexpr = gl.SliceLayout(2, L3)     # [G, BLOCK_T]
    kvh, sp, t0, t1, cache = _item_bounds(it, nsplit, span, pos, layer, ctx, KVH, HD)
    cached_end = gl.minimum(t1, pos)

    gq = gl.arange(0, G, layout=gl.SliceLayout(1, QL))
    iq = gl.arange(0, HD2, layout=gl.SliceLayout(0, QL))
    qoff = gl.expand_dims((kvh * G + gq) * HD, 1) + gl.expand_dims(2 * iq, 0)
    qe = gl.load(qkv_ptr + qoff, cache_modifier=".cg")
    qo = gl.load(qkv_ptr + qoff + 1, cache_modifier=".cg")
    cs = gl.load(cos_ptr + pos * HD2 + iq)
    sn = gl.load(sin_ptr + pos * HD2 + iq)
    # the new position's key and value, used by the split that holds it
    k_new = qkv_ptr + H * HD + kvh * HD + 2 * iq
    ke = gl.load(k_new, cache_modifier=".cg")
    ko = gl.load(k_new + 1, cache_modifier=".cg")
    v_new = qkv_ptr + (H + KVH) * HD + kvh * HD + 2 * iq
    v_new_even = gl.load(v_new, cache_modifier=".cg")
    v_new_odd = gl.load(v_new + 1, cache_modifier=".cg")
    q_even = (qe * gl.expand_dims(cs, 0) - qo * gl.expand_dims(sn, 0)) * scale
    q_odd = (qe * gl.expand_dims(sn, 0) + qo * gl.expand_dims(cs, 0)) * scale
    k_new_even = ke * cs - ko * sn
    k_new_odd = ke * sn + ko * cs

    m_i = gl.full([G], float("-inf"), gl.float32, layout=gl.SliceLayout(1, SL))
    l_i = gl.zeros([G], gl.float32, layout=gl.SliceLayout(1, SL))
    acc_even = gl.zeros([G, HD2], gl.float32, layout=QL)
    acc_odd = gl.zeros([G, HD2], gl.float32, layout=QL)
    m_i, l_i, acc_even, acc_odd = _attention_tile(
        q_even, q_odd, k_even, k_odd, v_even, v_odd, t0, cached_end, m_i, l_i, acc_even,
        acc_odd, BLOCK_T, QL, SL)
    for t in range(t0 + BLOCK_T, cached_end, BLOCK_T):
        k_even, k_odd, v_even, v_odd = _kv_tile(kc_ptr, vc_ptr, cache, t, cached_end, KVH,
                                                HD, BLOCK_T, KL)
        m_i, l_i, acc_even, acc_odd = _attention_tile(
            q_even, q_odd, k_even, k_odd, v_even, v_odd, t, cached_end, m_i, l_i,
            acc_even, acc_odd, BLOCK_T, QL, SL)
    if (t0 <= pos) & (pos < t1):       # this split holds the new position
        row = cache + pos.to(gl.int64) * KVH * HD + 2 * iq
        gl.store(kc_ptr + row, k_new_even.to(kc_ptr.dtype.element_ty))
        gl.store(kc_ptr + row + 1, k_new_odd.to(kc_ptr.dtype.element_ty))
        gl.store(vc_ptr + row, v_new_even.to(vc_ptr.dtype.element_ty))
        gl.store(vc_ptr + row + 1, v_new_odd.to(vc_ptr.dtype.element_ty))
        s_new = gl.sum(q_even * gl.expand_dims(k_new_even, 0)
                       + q_odd * gl.expand_dims(k_new_odd, 0), axis=1)
        m_q = gl.convert_layout(m_i, gl.SliceLayout(1, QL))
        m_new = gl.maximum(m_q, s_new)
        alpha = gl.exp(m_q - m_new)
        p = gl.exp(s_new - m_new)
        l_i = l_i * gl.convert_layout(alpha, gl.SliceLayout(1, SL)) + gl.convert_layout(
            p, gl.SliceLayout(1, SL))
        alpha = gl.expand_dims(alpha, 1)
        p = gl.expand_dims(p, 1)
        acc_even = acc_even * alpha + p * gl.expand_dims(v_new_even, 0)
        acc_odd = acc_odd * alpha + p * gl.expand_dims(v_new_odd, 0)
        m_i = gl.convert_layout(m_new, gl.SliceLayout(1, SL))

    r = gl.expand_dims((kvh * SMAX * G + sp * G + gq) * HD, 1) + gl.expand_dims(2 * iq, 0)
    gl.store(part_ptr + r, acc_even)
    gl.store(part_ptr + r + 1, acc_odd)
    gm = gl.arange(0, G, layout=gl.SliceLayout(1, SL))
    rm = kvh * SMAX * G + sp * G + gm
    gl.store(ml_ptr + rm * 2, m_i)
    gl.store(ml_ptr + rm * 2 + 1, l_i)


@gluon.jit
def _consumer(ring, ready, empty, ids, x_smem, tok_ptr, pos_ptr, emb_ptr, h_ptr, qkv_ptr,
              a13_ptr, part_ptr, ml_ptr, logit_ptr, cnt_ptr, norms_ptr, kc_ptr, vc_ptr,
              cos_ptr, sin_ptr, L, eps, scale, ctx, nsplit_max, D: gl.constexpr,
              F: gl.constexpr, V: gl.constexpr, H: gl.constexpr, KVH: gl.constexpr,
              HD: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, NS: gl.constexpr,
              DC: gl.constexpr, FC: gl.constexpr, SMAX: gl.constexpr,
              BLOCK_T: gl.constexpr, CHUNK: gl.constexpr, ATTN: gl.constexpr, time_ptr,
              TIMELINE: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    G: gl.constexpr = H // KVH
    QKV: gl.constexpr = (H + 2 * KVH) * HD
    TILE: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [NW, 1], [1, 0])
    XL: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [NW, 1], [1, 0])
    ONE: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    rows0 = gl.arange(0, BN, layout=gl.SliceLayout(1, TILE))
    c = gl.program_id(0)
    P = gl.num_programs(0)
    pos = gl.load(pos_ptr)
    tok = gl.load(tok_ptr).to(gl.int64)
    # attention: a (kv head, split) item per program; a split is one tile if it can be
    nsplit = gl.minimum(gl.cdiv(pos + 1, BLOCK_T), nsplit_max)
    span = gl.cdiv(gl.cdiv(pos + 1, nsplit), BLOCK_T) * BLOCK_T
    L3: gl.constexpr = ATTN
    g = 0
    for s in range(5 * L + 1):
        layer = s // 5
        m = s % 5           # 0 qkv, 1 attention, 2 o, 3 w13, 4 w2; 5 the classifier
        if s == 5 * L:
            m = 5
        stamps = time_ptr + (c * (5 * L + 1) + s) * 3
        if m == 1:
            # the item's first tile of cached positions does not depend on this layer's
            # qkv: load it before the wait (nothing where the program has no item)
            kvh, sp, t0, t1, cache = _item_bounds(c, nsplit, span, pos, layer, ctx, KVH, HD)
            t_end = gl.where(c < KVH * nsplit, gl.minimum(t1, pos), 0)
            k_even, k_odd, v_even, v_odd = _kv_tile(kc_ptr, vc_ptr, cache, t0, t_end, KVH,
                                                    HD, BLOCK_T, gl.SliceLayout(0, L3))
            wait_stage(cnt_ptr + s - 1, P, False)
            stamp(stamps, TIMELINE)
            if c < KVH * nsplit:
                _attention_item(c, nsplit, span, pos, layer, k_even, k_odd, v_even, v_odd,
                                qkv_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, part_ptr, ml_ptr,
                                scale, ctx, H, KVH, HD, G, SMAX, BLOCK_T, L3)
        else:
            if s > 0:
                wait_stage(cnt_ptr + s - 1, P, False)
            stamp(stamps, TIMELINE)
            N = QKV
            rstd = 1.0
            if m == 0:
                if layer == 0:
                    rstd = stage_input(x_smem, emb_ptr + tok * D, norms_ptr, eps, 0, D, XL,
                                       DC, BK)
                    # the residual stream starts as the token's embedding row
                    e = c * BK + gl.arange(0, BK, layout=ONE)
                    if c * BK < D:
                        gl.store(h_ptr + e, gl.load(emb_ptr + tok * D + e).to(gl.float32))
                else:
                    rstd = stage_input(x_smem, h_ptr, norms_ptr + layer * 2 * D, eps, 0, D,
                                       XL, DC, BK)
            elif m == 2:
                N = D
                _stage_merge(x_smem, part_ptr, ml_ptr, nsplit, H, HD, G, SMAX, NW, CHUNK)
            elif m == 3:
                N = 2 * F
                rstd = stage_input(x_smem, h_ptr, norms_ptr + layer * 2 * D + D, eps, 0, D,
                                   XL, DC, BK)
            elif m == 4:
                N = D
                stage_input(x_smem, a13_ptr, norms_ptr, eps, 2, F, XL, FC, BK)
            else:
                N = V
                rstd = stage_input(x_smem, h_ptr, norms_ptr + L * 2 * D, eps, 0, D, XL, DC,
                                   BK)
            gl.thread_barrier()
            stamp(stamps + 1, TIMELINE)
            KC = D // BK
            if m == 4:
                KC = F // BK
            rb = next_row_block(ready, ids, g, NS, ONE)
            while rb >= 0:
                y, g = row_block_sums(ring, ready, empty, x_smem, g, KC, NS, BN, BK, TILE)
                rows = rb * BN + rows0
                y = y * rstd
                ok = rows < N
                if m == 0:
                    gl.store(qkv_ptr + rows, y, mask=ok)
                elif m == 3:
                    gl.store(a13_ptr + rows, y, mask=ok)
                elif m == 5:
                    gl.store(logit_ptr + rows, y.to(logit_ptr.dtype.element_ty), mask=ok)
                else:   # o and w2 add into the residual rows this program owns
                    y += gl.load(h_ptr + rows, mask=ok, other=0.0, cache_modifier=".cg")
                    gl.store(h_ptr + rows, y, mask=ok)
                rb = next_row_block(ready, ids, g, NS, ONE)
            gl.thread_barrier()   # the end-of-stage slot: hand it back
            mbarrier.arrive(empty.index(g % NS))
            g += 1
        stamp(stamps + 2, TIMELINE)
        gl.thread_barrier()
        gl.atomic_add(cnt_ptr + s, 1, sem="release", scope="gpu")


@gluon.jit
def _decode_pass_kernel(dqkv, do, d13, d2, dout, tok_ptr, pos_ptr, emb_ptr, h_ptr,
                        qkv_ptr, a13_ptr, part_ptr, ml_ptr, logit_ptr, cnt_ptr, norms_ptr,
                        kc_ptr, vc_ptr, cos_ptr, sin_ptr, L, eps, scale, ctx, nsplit_max,
                        D: gl.constexpr, F: gl.constexpr, V: gl.constexpr,
                        H: gl.constexpr, KVH: gl.constexpr, HD: gl.constexpr,
                        BN: gl.constexpr, BK: gl.constexpr, NS: gl.constexpr,
                        INFLIGHT: gl.constexpr, DC: gl.constexpr, FC: gl.constexpr,
                        SMAX: gl.constexpr, BLOCK_T: gl.constexpr,
                        CHUNK: gl.constexpr, ATTN: gl.constexpr, time_ptr,
                        TIMELINE: gl.constexpr):
    QKV: gl.constexpr = (H + 2 * KVH) * HD
    ring, ready, empty, ids, x_smem = ring_buffers(dqkv, NS, BN, BK, FC)
    gl.warp_specialize([
        (_consumer, (ring, ready, empty, ids, x_smem, tok_ptr, pos_ptr, emb_ptr, h_ptr,
                     qkv_ptr, a13_ptr, part_ptr, ml_ptr, logit_ptr, cnt_ptr, norms_ptr,
                     kc_ptr, vc_ptr, cos_ptr, sin_ptr, L, eps, scale, ctx, nsplit_max, D,
                     F, V, H, KVH, HD, BN, BK, NS, DC, FC, SMAX, BLOCK_T, CHUNK,
                     ATTN, time_ptr, TIMELINE)),
        (_producer, (dqkv, do, d13, d2, dout, ring, ready, empty, ids, L, D, F, V, QKV,
                     BN, BK, NS, INFLIGHT)),
    ], [1], [40])


def attention_layout(G: int, warps: int):
    """The [query heads of a kv head, positions, head dims] layout of the attention tiles:
    up to 4 warps across the G heads (the rest of G in each thread), the other warps and 4
    lanes across positions, 8 lanes x 4 across dims; so neither q nor the K/V tile is held
    many times over."""
    across = min(G, 4)
    return gl.BlockedLayout([G // across, 1, 4], [1, 4, 8], [across, warps // across, 1],
                            [2, 1, 0])


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def unsupported(model) -> str | None:
    """Why the kernel cannot run this model's decode pass, or None."""
    c = model.config
    if torch.cuda.get_device_capability(model.device.torch_device)[0] != 9:
        return "needs a compute capability 9.x GPU (Hopper)"
    if model.dtype != "bfloat16" or model.pack is not None:
        return "needs dense bf16 weights"
    if c.dim % BK or c.hidden_dim % BK or c.n_heads * c.hd != c.dim:
        return f"needs dim and hidden_dim divisible by {BK} and n_heads * head_dim == dim"
    if not (_pow2(c.hd) and c.hd <= 128 and _pow2(c.n_heads) and _pow2(c.n_kv_heads)):
        return "needs a power-of-two head size up to 128 and power-of-two head counts"
    return None


class OneKernelPass:
    """The model's decode pass as the kernel: pass(logits, ids, pos) runs it. Built once:
    every layer's matrices of a kind stacked in one tensor (the layers' weights become
    views of it, so TMA reaches all of them through one descriptor), the norm weights
    stacked, float32 scratch."""

    def __init__(self, model):
        c, dev = model.config, model.device.torch_device
        L, D, F = c.n_layers, c.dim, c.hidden_dim
        self.L, self.c = L, c
        stacked = [self._adopt([getattr(layer, kind) for layer in model.layers])
                   for kind in ("wqkv", "wo", "w13", "w2")]
        stacked.append(model.output.parts["w"])
        layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)
        self.descs = [TensorDescriptor.from_tensor(t, [BN, BK], layout) for t in stacked]
        norms = [t for layer in model.layers for t in (layer.attn_norm, layer.ffn_norm)]
        self.norms = torch.cat(norms + [model.norm]).contiguous()
        self.emb = model.tok_embeddings
        k0, v0 = model.layers[0].k_cache, model.layers[0].v_cache
        self.kc, self.vc = k0, v0
        self.ctx = k0.shape[0]
        if L > 1:
            stride = model.layers[1].k_cache.data_ptr() - k0.data_ptr()
            if stride != self.ctx * c.n_kv_heads * c.hd * k0.element_size():
                raise RuntimeError("the decode kernel expects the layers' caches stacked")
        self.cos, self.sin = model.cos, model.sin
        self.sms = torch.cuda.get_device_properties(dev).multi_processor_count
        self.smax = max(1, min(32, self.sms // c.n_kv_heads))
        G = c.n_heads // c.n_kv_heads
        f32 = dict(device=dev, dtype=torch.float32)
        self.h = torch.empty(D, **f32)
        self.qkv = torch.empty((c.n_heads + 2 * c.n_kv_heads) * c.hd, **f32)
        self.a13 = torch.empty(2 * F, **f32)
        self.part = torch.empty(c.n_kv_heads * self.smax * G * c.hd, **f32)
        self.ml = torch.empty(c.n_kv_heads * self.smax * G * 2, **f32)
        self.counters = torch.zeros(5 * L + 1, device=dev, dtype=torch.int32)
        self.dc = triton.next_power_of_2(D // BK)
        self.fc = triton.next_power_of_2(F // BK)
        x_bytes = self.fc * BK * 2
        self.slots = min(MAX_SLOTS, (SMEM_BUDGET - x_bytes) // (BN * BK * 2))
        self.eps, self.scale = float(c.norm_eps), float(model.scale)
        self.attn_layout = attention_layout(G, CONSUMER_WARPS)

    @staticmethod
    def _adopt(weights) -> torch.Tensor:
        first = weights[0].parts["w"]
        arena = torch.empty((len(weights),) + tuple(first.shape), dtype=first.dtype,
                            device=first.device)
        for i, w in enumerate(weights):
            arena[i].copy_(w.parts["w"])
            w.parts["w"] = arena[i]
        torch.cuda.empty_cache()
        return arena.view(-1, first.shape[1])

    def __call__(self, logits, ids, pos, stamps=None):
        """stamps: an int64 [SMs, stages, 3] tensor to time each stage's parts into."""
        c = self.c
        self.counters.zero_()
        _decode_pass_kernel[(self.sms,)](
            *self.descs, ids, pos, self.emb, self.h, self.qkv, self.a13, self.part, self.ml,
            logits, self.counters, self.norms, self.kc, self.vc, self.cos, self.sin, self.L,
            self.eps, self.scale, self.ctx, self.smax, D=c.dim, F=c.hidden_dim,
            V=c.vocab_size, H=c.n_heads, KVH=c.n_kv_heads, HD=c.hd, BN=BN, BK=BK,
            NS=self.slots, INFLIGHT=INFLIGHT, DC=self.dc, FC=self.fc, SMAX=self.smax,
            BLOCK_T=BLOCK_T, CHUNK=MERGE_CHUNK, ATTN=self.attn_layout,
            time_ptr=self.h if stamps is None else stamps, TIMELINE=stamps is not None,
            num_warps=CONSUMER_WARPS)


KINDS = ("qkv", "attention", "o", "w13", "w2", "classifier")


def print_timeline(stamps: torch.Tensor, L: int) -> None:
    """Per stage kind, in microseconds: the wait from the last program's end of the previous
    stage to this program's start; staging the input (rmsnorm, swiglu, the attention merge);
    the row blocks or the attention item (mean over programs / slowest, and the slowest
    summed over the layers)."""
    t = stamps.double().cpu() / 1e3
    start, staged, done = t[..., 0], t[..., 1], t[..., 2]
    last_done = done.max(dim=0).values
    print("  stage        wait    staging   work mean / max   (slowest, summed)")
    for m, name in enumerate(KINDS):
        stages = [s for s in range(1, 5 * L + 1) if (s % 5 == m and s < 5 * L)
                  or (m == 5 and s == 5 * L)]
        wait = torch.stack([start[:, s] - last_done[s - 1] for s in stages])
        staging = torch.stack([staged[:, s] - start[:, s] for s in stages])
        work = torch.stack([done[:, s] - staged[:, s] for s in stages])
        if name == "attention":                   # no staging stamp: all of it is work
            work = torch.stack([done[:, s] - start[:, s] for s in stages])
            staging = torch.zeros_like(work)
        slowest = work.max(dim=1).values
        print(f"  {name:10s} {wait.mean():6.2f}  {staging.mean():6.2f}    {work.mean():6.2f} / "
              f"{slowest.mean():6.2f}   ({slowest.sum():7.1f})")


def compare(dev, shape: str, bandwidth: float, timeline: bool) -> None:
    c = SHAPES[shape]
    model = model_after_prompt(dev, shape, ffn_op=False)
    why = unsupported(model)
    if why:
        print(f"{shape}: the kernel does not run this model ({why})")
        return
    floor = floor_us(model, bandwidth)
    ids, pos, logits = model.decode_ws.ids.native, model.pos.native, model.logits.native
    one = OneKernelPass(model)
    composed = greedy_step(model)

    def one_kernel():
        one(logits, ids, pos)
        model._pick("argmax")

    # one step at position 512, both ways (each writes the same cache row)
    model._step(model._decode)
    want = model.read_logits()
    model.set_token(3)
    one(logits, ids, pos)
    got = model.read_logits()
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"{shape}: logits at position 512 differ from the composed step's by {err:.2e} "
          f"of the largest (bf16 activations)")
    if not err < 0.03:
        raise SystemExit("the one-kernel pass disagrees with the composed step")

    replays = max(10, int(50_000 / floor))
    for name, step in (("composed step", composed), ("one kernel", one_kernel)):
        model.set_token(3)
        us = step_us(dev, step, replays)
        print(f"{shape:15s} {name:13s} {us:8.1f} us/step  {100 * floor / us:5.1f}% "
              f"of the floor ({floor:.1f} us)", flush=True)
    if timeline:
        stamps = torch.zeros(one.sms, 5 * c.n_layers + 1, 3, dtype=torch.int64,
                             device=logits.device)
        for _ in range(3):
            one(logits, ids, pos, stamps)
        torch.cuda.synchronize()
        print_timeline(stamps, c.n_layers)


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b"])
    p.add_argument("--timeline", action="store_true",
                   help="also time each stage's parts (global-timer stamps)")
    args = p.parse_args(argv)
    for_each_shape(args.shapes, lambda dev, shape, bandwidth:
                   compare(dev, shape, bandwidth, args.timeline))


if __name__ == "__main__":
    main()
