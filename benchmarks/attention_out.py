"""Does the decode step gain when RoPE, attention and the o projection are one kernel?

Each program of that kernel (below) owns a kv head and a
block of o's output rows: it loads its weight tile before the PDL wait, attends over the
whole cache for the kv head's query heads, and multiplies the result into its tile; the
last program of a row block adds the kv heads' partial sums and the residual. The rope ->
attention -> o links leave the step, at the price of reading the cache once per row block.
The whole decode step (random weights, PROMPT tokens in the KV cache, argmax pick, CUDA
graph replay) is timed against the shipped chain in one process, interleaved; logits are
checked against the shipped step's.

    python benchmarks/attention_out.py tinyllama-1.1b llama3.2-1b --prompt 512 2000
"""
from __future__ import annotations

import torch

import triton
import triton.language as tl

from polyllama.plugins.cuda_triton.attention import _attend_tile
from polyllama.plugins.cuda_triton.device import interpreting, pdl_enabled
from polyllama.plugins.cuda_triton.kernels import LOG2E, pdl_start
from timing import (cuda_triton_and_bandwidth, floor_us, greedy_step, model_after_prompt,
                    print_against_first, shape_parser)

_workspaces: dict = {}      # per (device, shape); never freed, so graphs may hold them


def _workspace(device, KV, D, block_n):
    """Partial sums [KV, D] and arrival counters per row block (zeroed; the last program of
    a row block resets its counter)."""
    key = (str(device), KV, D, block_n)
    if key not in _workspaces:
        _workspaces[key] = (torch.empty((KV, D), dtype=torch.float32, device=device),
                            torch.zeros(triton.cdiv(D, block_n), dtype=torch.int32,
                                        device=device))
    return _workspaces[key]


@triton.jit
def _rotate(x, c, s, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """RoPE on rows of adjacent pairs (x[2i], x[2i+1]) by the angles with cos c, sin s."""
    even, odd = tl.split(tl.reshape(x, (ROWS, BLOCK_D // 2, 2)))
    return tl.reshape(tl.join(even * c[None, :] - odd * s[None, :],
                              even * s[None, :] + odd * c[None, :]), (ROWS, BLOCK_D))


@triton.jit
def _attention_out_kernel(x_ptr, part_ptr, cnt_ptr, w_ptr, q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr,
                          pos_ptr, cos_ptr, sin_ptr, qk_scale, D, s_w, s_qh, s_kh, s_c, s_tab,
                          KV: tl.constexpr, KV_P2: tl.constexpr, G: tl.constexpr,
                          HD: tl.constexpr, BLOCK_G: tl.constexpr, W_G: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
                          STAGES: tl.constexpr, CACHED: tl.constexpr, PRECISION: tl.constexpr,
                          DOT_F32: tl.constexpr, PDL: tl.constexpr):
    kvh, rb = tl.program_id(0), tl.program_id(1)
    rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < D
    d = tl.arange(0, BLOCK_D)
    dmask = d < HD
    wg = tl.arange(0, W_G)
    wcols = (kvh * G + wg)[:, None] * HD + d[None, :]
    wmask = (wg < G)[:, None] & dmask[None, :]
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None, None] * s_w + wcols[None, :, :],
                mask=rmask[:, None, None] & wmask[None, :, :], other=0.0,
                eviction_policy="evict_first")
    n = tl.load(pos_ptr)                          # cached keys 0..n-1; key n is the new one
    half = tl.arange(0, BLOCK_D // 2)
    c = tl.load(cos_ptr + n * s_tab + half, mask=half < HD // 2, other=0.0)
    s = tl.load(sin_ptr + n * s_tab + half, mask=half < HD // 2, other=0.0)
    pdl_start(PDL)
    g = tl.arange(0, BLOCK_G)
    qmask = (g < G)[:, None] & dmask[None, :]
    q = tl.load(q_ptr + (kvh * G + g)[:, None] * s_qh + d[None, :], mask=qmask, other=0.0)
    q = _rotate(q.to(tl.float32), c, s, BLOCK_G, BLOCK_D).to(q.dtype)
    one = tl.arange(0, 1)
    k_new = tl.load(k_ptr + kvh * s_kh + one[:, None] * 0 + d[None, :], mask=dmask[None, :],
                    other=0.0)
    k_new = _rotate(k_new.to(tl.float32), c, s, 1, BLOCK_D).to(k_new.dtype)
    v_new = tl.load(v_ptr + kvh * s_kh + d, mask=dmask, other=0.0)
    if DOT_F32:                  # the interpreter multiplies bf16 bit patterns, not values
        q = q.to(tl.float32)
    col = kvh * HD + d
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    seen = tl.minimum(n, CACHED)                  # CACHED < n: a diagnostic (wrong output)
    for s0 in tl.range(0, seen, BLOCK_S, num_stages=STAGES):
        pos = s0 + tl.arange(0, BLOCK_S)
        offs = pos.to(tl.int64)[:, None] * s_c + col[None, :]
        mask2 = (pos < seen)[:, None] & dmask[None, :]
        kt = tl.load(kc_ptr + offs, mask=mask2, other=0.0)
        vt = tl.load(vc_ptr + offs, mask=mask2, other=0.0)
        m, l, acc = _attend_tile(q, kt, vt, (pos < seen)[None, :], m, l, acc, qk_scale,
                                 PRECISION, DOT_F32)
    s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32), axis=1) * qk_scale
    m_new = tl.maximum(m, s_new)
    alpha = tl.exp2(m - m_new)
    p_new = tl.exp2(s_new - m_new)
    l = l * alpha + p_new
    acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
    o = (acc / l[:, None]).to(q_ptr.dtype.element_ty).to(tl.float32)   # as attention stores it
    pick = wg[:, None, None] == g[None, :, None]                       # o's rows of real heads
    o = tl.sum(tl.where(pick, o[None, :, :], 0.0), axis=1)            # [W_G, BLOCK_D]
    y = tl.sum(tl.sum(w.to(tl.float32) * o[None, :, :], axis=2), axis=1)
    if rb == 0:                                   # the new key and value fill cache row n
        row = n.to(tl.int64) * s_c + col
        tl.store(kc_ptr + row[None, :] + one[:, None] * 0,
                 k_new.to(kc_ptr.dtype.element_ty), mask=dmask[None, :])
        tl.store(vc_ptr + row, v_new.to(vc_ptr.dtype.element_ty), mask=dmask)
    if KV == 1:
        y += tl.load(x_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(x_ptr + rows, y.to(x_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(part_ptr + kvh * D + rows, y, mask=rmask)
        tl.debug_barrier()                        # every thread's stores before the release
        if tl.atomic_add(cnt_ptr + rb, 1, sem="acq_rel") == KV - 1:
            h = tl.arange(0, KV_P2)
            parts = tl.load(part_ptr + h[:, None] * D + rows[None, :],
                            mask=(h[:, None] < KV) & rmask[None, :], other=0.0,
                            cache_modifier=".cg")     # other programs' results: skip L1
            y = tl.sum(parts, axis=0) + tl.load(x_ptr + rows, mask=rmask,
                                                other=0.0).to(tl.float32)
            tl.store(x_ptr + rows, y.to(x_ptr.dtype.element_ty), mask=rmask)
            tl.store(cnt_ptr + rb, 0)             # ready for the next step


def rope_attention_linear_add(x, q, k, v, k_cache, v_cache, pos, cos, sin, scale, wo,
                              block_n=64, block_s=64, stages=2, warps=8,
                              cached=1 << 30):
    """x[1, D] += attention(rope(q), rope(k), v) @ Wo^T for one token (see module doc)."""
    _, H, hd = q.shape
    S, KV, _ = k_cache.shape
    G = H // KV
    W = wo.parts["w"]
    D = W.shape[0]
    assert q.stride(2) == k.stride(2) == v.stride(2) == 1 and k.stride(1) == v.stride(1)
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and W.stride(1) == 1
    block_d = max(16, triton.next_power_of_2(hd))
    if interpreting():
        block_s, stages = 16, 1
    part, cnt = _workspace(q.device, KV, D, block_n)
    pdl = pdl_enabled(q.device)
    fp32 = q.element_size() == 4
    _attention_out_kernel[(KV, triton.cdiv(D, block_n))](
        x, part, cnt, W, q, k, v, k_cache, v_cache, pos, cos, sin,
        float(scale) * LOG2E.value, D, W.stride(0), q.stride(1), k.stride(1),
        k_cache.stride(0), cos.stride(0), KV=KV, KV_P2=triton.next_power_of_2(KV), G=G,
        HD=hd, BLOCK_G=max(16, triton.next_power_of_2(G)), W_G=triton.next_power_of_2(G),
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_S=block_s, STAGES=stages, CACHED=cached,
        PRECISION="ieee" if fp32 else "tf32", DOT_F32=interpreting(), PDL=pdl,
        launch_pdl=pdl, num_warps=warps)


ALL = 1 << 30
CONFIGS = ((64, 128, 2, 8, ALL), (64, 64, 3, 8, ALL), (64, 256, 2, 8, ALL), (64, 128, 3, 8, ALL),
           (64, 128, 2, 8, 128), (64, 128, 2, 8, 0))
# (rows, positions per tile, stages, warps, cached positions attended: fewer than the
# prompt gives wrong output and shows what the rest of the kernel costs)


def fused_step(model, block_n, block_s, stages, warps, cached):
    """greedy_step with every layer's rope, attention and o projection as the one kernel."""
    a, k, pos = model._decode, model.k, model.pos.native

    def step():
        k.embedding(a.x, model.tok_embeddings, a.ids)
        for L in model.layers:
            model._norm_linear(a.qkv, a.x, L.attn_norm, L.wqkv, a.h)
            rope_attention_linear_add(a.x, a.q, a.k, a.v, L.k_cache, L.v_cache, pos, model.cos,
                                      model.sin, model.scale, L.wo, block_n, block_s, stages,
                                      warps, cached)
            model._ffn(L, a)
        model._classify(a, "argmax")
    return step


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b"])
    p.add_argument("--prompt", type=int, nargs="+", default=[512])
    args = p.parse_args(argv)
    dev, bandwidth = cuda_triton_and_bandwidth()
    for shape in args.shapes:
        for prompt in args.prompt:
            model = model_after_prompt(dev, shape, prompt=prompt, ffn_op=False)
            variants = [("shipped", greedy_step(model))] + [
                (f"fused {bn} rows, {bs} pos, {st} stages, {w} warps"
                 + ("" if c == ALL else f", {c} cached"), fused_step(model, bn, bs, st, w, c))
                for bn, bs, st, w, c in CONFIGS]
            print_against_first(dev, model, f"{shape}@{prompt}", floor_us(model, bandwidth),
                                variants)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
