"""Causal GQA attention over the KV cache (core/ops.py `attention`).

Decode (one token) is split-K "flash decoding" in one kernel: a fixed grid of (kv head,
split) programs each reduce a slice of the cached keys 0..pos-1 for every query head that
shares the kv head (slice bounds come from pos, read on the device, so a CUDA graph replays
at any position); the last program of a kv head to finish (an atomic counter tells) merges
the slices with the new token's own key and value, and writes that key and value into cache
row pos. Prefill copies its keys and values into the cache, then runs a tiled causal
flash-attention kernel over the cache rows 0..pos+T-1, so a chunk may continue an earlier
prompt.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import interpreting, multiprocessors, pdl_enabled
from .kernels import LOG2E, pdl_start

SPLIT_PER_SM = 1
MERGE_ROWS = 256          # query heads x splits one merging program holds
DECODE_BLOCK_S = 64       # cached positions per tile of a decode program
WIDE_GROUP_BLOCK_S = 128  # ... with WIDE_GROUP or more query heads a kv head (_decode_block_s)
WIDE_GROUP = 8
DECODE_WARPS = 4
FEW_PROGRAMS_WARPS = 8    # when the (kv head, split) programs are no more than the SMs
_workspaces: dict = {}      # per (device, shape); never freed, so graphs may hold them


def _workspace(device, H, n_split, block_d):
    """Split partials [H, n_split, acc | max | sum] per query head and arrival counters per
    kv head (H allocated, zeroed; the merging program resets its counter)."""
    key = (str(device), H, n_split, block_d)
    if key not in _workspaces:
        _workspaces[key] = (torch.empty((H, n_split, block_d + 2), dtype=torch.float32,
                                        device=device),
                            torch.zeros(H, dtype=torch.int32, device=device))
    return _workspaces[key]


@triton.jit
def _split_bounds(n, sp, N_SPLIT: tl.constexpr, BLOCK_S: tl.constexpr):
    """Split sp's slice [start, end) of the cached keys 0..n-1 (empty when start >= end)."""
    chunk = tl.cdiv(tl.cdiv(n, N_SPLIT), BLOCK_S) * BLOCK_S
    start = sp * chunk
    return start, tl.minimum(start + chunk, n)


@triton.jit
def _attend_tile(q, k, v, visible, m, l, acc, qk_scale, PRECISION: tl.constexpr,
                 DOT_F32: tl.constexpr):
    """One online-softmax step over a key/value tile: (running max, sum, accumulator) after
    the keys where `visible` holds. Scores are in log2 units (qk_scale includes log2 e)."""
    if DOT_F32:                  # the interpreter multiplies bf16 bit patterns, not values
        k, v = k.to(tl.float32), v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(scores - m_new[:, None])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _split_softmax(q_ptr, kc_ptr, vc_ptr, n, kvh, sp, qk_scale, s_qh, s_c, G: tl.constexpr,
                   HD: tl.constexpr, N_SPLIT: tl.constexpr, BLOCK_G: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                   DOT_F32: tl.constexpr, PDL: tl.constexpr):
    """(running max, sum, weighted values) of the G query heads of kv head kvh over split
    sp's slice of the cached keys 0..n-1. The slice's first tile loads before the PDL wait
    (earlier steps wrote those rows), the next one while the current is used."""
    start, end = _split_bounds(n, sp, N_SPLIT, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HD
    g = tl.arange(0, BLOCK_G)
    heads = kvh * G + g
    col = kvh * HD + d
    s = start + tl.arange(0, BLOCK_S)
    offs = s.to(tl.int64)[:, None] * s_c + col[None, :]
    mask2 = (s < end)[:, None] & dmask[None, :]
    k = tl.load(kc_ptr + offs, mask=mask2, other=0.0)
    v = tl.load(vc_ptr + offs, mask=mask2, other=0.0)
    pdl_start(PDL)
    qmask = (g < G)[:, None] & dmask[None, :]
    q = tl.load(q_ptr + heads[:, None] * s_qh + d[None, :], mask=qmask, other=0.0)
    if DOT_F32:                  # the interpreter multiplies bf16 bit patterns, not values
        q = q.to(tl.float32)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for s0 in range(start, end, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        nxt = s + BLOCK_S
        offs = nxt.to(tl.int64)[:, None] * s_c + col[None, :]
        mask2 = (nxt < end)[:, None] & dmask[None, :]
        k_next = tl.load(kc_ptr + offs, mask=mask2, other=0.0)
        v_next = tl.load(vc_ptr + offs, mask=mask2, other=0.0)
        m, l, acc = _attend_tile(q, k, v, (s < end)[None, :], m, l, acc, qk_scale,
                                 PRECISION, DOT_F32)
        k, v = k_next, v_next
    return m, l, acc


@triton.jit
def _decode_kernel(out_ptr, part_ptr, cnt_ptr, q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr,
                   qk_scale, s_qh, s_kh, s_oh, s_c, G: tl.constexpr, HD: tl.constexpr,
                   N_SPLIT: tl.constexpr, BLOCK_G: tl.constexpr, MERGE_G: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                   DOT_F32: tl.constexpr, PDL: tl.constexpr):
    """Program (kv head, split): the G query heads sharing that kv head, so each cached key
    and value is read once."""
    kvh, sp = tl.program_id(0), tl.program_id(1)
    n = tl.load(pos_ptr)                          # cached keys 0..n-1; key n is the new one
    m, l, acc = _split_softmax(q_ptr, kc_ptr, vc_ptr, n, kvh, sp, qk_scale, s_qh, s_c, G, HD,
                               N_SPLIT, BLOCK_G, BLOCK_S, BLOCK_D, PRECISION, DOT_F32, PDL)
    start, end = _split_bounds(n, sp, N_SPLIT, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HD
    g = tl.arange(0, BLOCK_G)
    gmask = g < G
    heads = kvh * G + g
    col = kvh * HD + d
    ROW: tl.constexpr = BLOCK_D + 2               # a partial: acc, then max, then sum
    if start < end:                               # the merge skips empty splits
        mine = part_ptr + heads * (N_SPLIT * ROW) + sp * ROW
        tl.store(mine[:, None] + d[None, :], acc, mask=gmask[:, None])
        tl.store(mine + BLOCK_D, m, mask=gmask)
        tl.store(mine + BLOCK_D + 1, l, mask=gmask)
    tl.debug_barrier()                            # every thread's stores before the release
    if tl.atomic_add(cnt_ptr + kvh, 1, sem="acq_rel") == N_SPLIT - 1:
        mg = tl.arange(0, MERGE_G)                # the merge holds the real heads only
        mheads = kvh * G + mg
        mqmask = (mg < G)[:, None] & dmask[None, :]
        mq = tl.load(q_ptr + mheads[:, None] * s_qh + d[None, :], mask=mqmask, other=0.0)
        k_new = tl.load(k_ptr + kvh * s_kh + d, mask=dmask, other=0.0)
        v_new = tl.load(v_ptr + kvh * s_kh + d, mask=dmask, other=0.0)
        s_new = tl.sum(mq.to(tl.float32) * k_new.to(tl.float32)[None, :], axis=1) * qk_scale
        sps = tl.arange(0, N_SPLIT)
        starts, ends = _split_bounds(n, sps, N_SPLIT, BLOCK_S)
        used = (mg < G)[:, None] & (starts < ends)[None, :]       # [MERGE_G, N_SPLIT]
        base = (part_ptr + mheads * (N_SPLIT * ROW))[:, None] + sps[None, :] * ROW
        ms = tl.load(base + BLOCK_D, mask=used, other=float("-inf"), cache_modifier=".cg")
        ls = tl.load(base + BLOCK_D + 1, mask=used, other=0.0, cache_modifier=".cg")
        accs = tl.load(base[:, :, None] + d[None, None, :], mask=used[:, :, None], other=0.0,
                       cache_modifier=".cg")      # other programs' results: skip L1
        top = tl.maximum(tl.max(ms, axis=1), s_new)
        w = tl.where(used, tl.exp2(ms - top[:, None]), 0.0)
        w_new = tl.exp2(s_new - top)
        total = tl.sum(ls * w, axis=1) + w_new
        o = tl.sum(accs * w[:, :, None], axis=1) + w_new[:, None] * v_new.to(tl.float32)[None, :]
        o = o / total[:, None]
        tl.store(out_ptr + mheads[:, None] * s_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=mqmask)
        row = n.to(tl.int64) * s_c + col          # the new key and value fill cache row n
        tl.store(kc_ptr + row, k_new.to(kc_ptr.dtype.element_ty), mask=dmask)
        tl.store(vc_ptr + row, v_new.to(vc_ptr.dtype.element_ty), mask=dmask)
        tl.store(cnt_ptr + kvh, 0)                # ready for the next step


@triton.jit
def _cache_write_kernel(kc_ptr, vc_ptr, k_ptr, v_ptr, pos_ptr, KV, s_kt, s_kh, s_vt, s_vh, s_c,
                        HD: tl.constexpr, BLOCK_KV: tl.constexpr, BLOCK_D: tl.constexpr,
                        PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    kvh = tl.arange(0, BLOCK_KV)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (kvh < KV) & (d < HD)
    row = (tl.load(pos_ptr) + t).to(tl.int64) * s_c + kvh * HD + d
    k = tl.load(k_ptr + t * s_kt + kvh * s_kh + d, mask=mask)
    v = tl.load(v_ptr + t * s_vt + kvh * s_vh + d, mask=mask)
    tl.store(kc_ptr + row, k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc_ptr + row, v.to(vc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prefill_kernel(out_ptr, q_ptr, kc_ptr, vc_ptr, pos_ptr, T, qk_scale, s_qt, s_qh, s_ot,
                    s_oh, s_c, G: tl.constexpr, HD: tl.constexpr, PRECISION: tl.constexpr,
                    DOT_F32: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    PDL: tl.constexpr):
    pdl_start(PDL)
    mb, h = tl.program_id(0), tl.program_id(1)
    p0 = tl.load(pos_ptr)
    t = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HD
    q = tl.load(q_ptr + t[:, None] * s_qt + h * s_qh + d[None, :],
                mask=(t[:, None] < T) & dmask[None, :], other=0.0)
    if DOT_F32:                  # the interpreter multiplies bf16 bit patterns, not values
        q = q.to(tl.float32)
    head = (h // G) * HD + d
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end = p0 + tl.minimum(mb * BLOCK_M + BLOCK_M, T)     # keys visible to this block's last row
    for j0 in range(0, end, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        offs = j.to(tl.int64)[:, None] * s_c + head[None, :]
        mask2 = (j[:, None] < end) & dmask[None, :]
        k = tl.load(kc_ptr + offs, mask=mask2, other=0.0)
        v = tl.load(vc_ptr + offs, mask=mask2, other=0.0)
        m, l, acc = _attend_tile(q, k, v, j[None, :] <= p0 + t[:, None], m, l, acc, qk_scale,
                                 PRECISION, DOT_F32)
    o = acc / l[:, None]
    tl.store(out_ptr + t[:, None] * s_ot + h * s_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=(t[:, None] < T) & dmask[None, :])


def _n_split(device, KV, S, G, block_s):
    """About SPLIT_PER_SM (kv head, split) programs per multiprocessor: one wave, leaving room
    for the next GEMV's programs to stream their weights meanwhile (PDL). The merging
    program holds every split's partials of its G heads, which caps the splits."""
    want = triton.next_power_of_2(triton.cdiv(SPLIT_PER_SM * multiprocessors(device), KV))
    longest = triton.next_power_of_2(triton.cdiv(S, block_s))
    return max(1, min(want, longest, MERGE_ROWS // triton.next_power_of_2(G)))


def _decode_block_s(G):
    """Cached positions per tile of a decode program, G query heads sharing its kv head.
    Timed in whole decode steps on an H100 (perf-notes attempt 40): tiles of 128 are faster
    for TinyLlama (G 8: -10 us at 576 cached positions, -7 us at 2,000), tiles of 64 for
    SmolLM2 (G 3: 128 cost +17 us), Llama-3.2-1B (G 4: +2 us) and Llama-2-7B (G 1: +190 us)."""
    if interpreting():
        return 16
    return WIDE_GROUP_BLOCK_S if G >= WIDE_GROUP else DECODE_BLOCK_S


def _decode_warps(device, programs):
    """Warps per decode program. With few kv heads (TinyLlama's 4) there are fewer programs
    than multiprocessors, and 8 warps finish each one sooner; with more, 8 warps cost
    (Llama-2-7B's step +1.8%, Llama-3.2-1B's +1.6% at 2,000 positions; perf-notes
    attempt 23)."""
    return FEW_PROGRAMS_WARPS if programs <= multiprocessors(device) else DECODE_WARPS


def attention(out, q, k, v, k_cache, v_cache, pos, scale):
    T, H, hd = q.shape
    S, KV, _ = k_cache.shape
    G = H // KV
    assert q.stride(2) == k.stride(2) == v.stride(2) == out.stride(2) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    block_d = max(16, triton.next_power_of_2(hd))
    qk_scale = float(scale) * LOG2E.value
    pdl = dict(PDL=pdl_enabled(q.device), launch_pdl=pdl_enabled(q.device))
    fp32 = q.element_size() == 4
    dot = dict(PRECISION="ieee" if fp32 else "tf32", DOT_F32=interpreting())
    s_c = k_cache.stride(0)
    if T == 1:
        block_s = _decode_block_s(G)
        block_g = max(16, triton.next_power_of_2(G))          # tl.dot's smallest tile
        n_split = _n_split(q.device, KV, S, G, block_s)
        part, cnt = _workspace(q.device, H, n_split, block_d)
        _decode_kernel[(KV, n_split)](
            out, part, cnt, q, k, v, k_cache, v_cache, pos, qk_scale, q.stride(1), k.stride(1),
            out.stride(1), s_c, G=G, HD=hd, N_SPLIT=n_split, BLOCK_G=block_g,
            MERGE_G=triton.next_power_of_2(G), BLOCK_S=block_s, BLOCK_D=block_d,
            num_warps=_decode_warps(q.device, KV * n_split), **dot, **pdl)
        return
    _cache_write_kernel[(T,)](k_cache, v_cache, k, v, pos, KV, k.stride(0), k.stride(1),
                              v.stride(0), v.stride(1), s_c, HD=hd,
                              BLOCK_KV=triton.next_power_of_2(KV), BLOCK_D=block_d, **pdl)
    if interpreting():
        bm, bn, warps, stages = 16, 16, 4, 1
    elif fp32:
        bm, bn, warps, stages = 64, 32, 4, 2
    else:
        bm, bn, warps, stages = 128, 64, 8, 2
    _prefill_kernel[(triton.cdiv(T, bm), H)](
        out, q, k_cache, v_cache, pos, T, qk_scale, q.stride(0), q.stride(1), out.stride(0),
        out.stride(1), s_c, G=G, HD=hd, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages, **dot, **pdl)
