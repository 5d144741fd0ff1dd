"""Every kernel of every backend against core/reference.py (float64) on fresh random inputs.

Inputs are laid out exactly as the executor lays them out (q, k, v as column slices of one
fused qkv buffer, outputs as the first rows of larger buffers, KV caches as slices of one
stacked cache), and every output starts as NaN so an element a kernel forgets to write
shows. Only the Device/Tensor API and registry.kernel() are used, so the suite runs
unchanged on any backend plugin. A failing case prints POLYLLAMA_TEST_SEED to replay it.
"""
from __future__ import annotations

import numpy as np
import pytest

from polyllama import Tensor, Weight, get_registry, reference
from polyllama.ops import DENSE, OPTIONAL_OPS, REQUIRED_OPS

from backends import (assert_close, check_out, kernel, normed_reference, poisoned, read,
                      upload)

HEADS = {"mha-hd12": (4, 4, 12), "gqa-hd16": (6, 2, 16), "mqa-hd64": (8, 1, 64),
         "gqa-hd64": (4, 2, 64), "mha-hd128": (2, 2, 128)}   # last two: few heads a kv head, wide


# ---------------------------------------------------------------- helpers


def optional_kernel(device, op):
    if not get_registry().has_kernel(device.backend_id, op):
        pytest.skip(f"{device.spec} registers no {op} kernel (optional op)")
    return kernel(device, op)


def heads(t, T, n, hd):
    """[T, n*hd] column slice -> [T, n, hd] view keeping the row stride (as core/model.py)."""
    return Tensor(t.buffer, (T, n, hd), (t.strides[0], hd, 1), t.offset)


def fused_qkv(device, rng, T, H, KV, hd, dtype):
    """One [T, (H+2KV)*hd] buffer and its q, k, v head views, like the executor's qkv."""
    qkv = upload(device, rng.standard_normal((T, (H + 2 * KV) * hd)), dtype)
    q, k, v = qkv.split_last(H * hd, KV * hd, KV * hd)
    return qkv, heads(q, T, H, hd), heads(k, T, KV, hd), heads(v, T, KV, hd)


def split_qkv(host, H, KV, hd):
    T = host.shape[0]
    q, k, v = np.split(host, [H * hd, (H + KV) * hd], axis=1)
    return q.reshape(T, H, hd), k.reshape(T, KV, hd), v.reshape(T, KV, hd)


def cache_rows(pos, T):
    return max(24, pos + T + 5)


def cache_with_history(device, rng, pos, T, KV, hd, dtype):
    """(cache, k_cache, v_cache, history): one stacked [2, S, KV, hd] cache whose rows before
    pos hold random history and rows from pos on are NaN, so a kernel that reads rows it
    has not written, or writes past pos + T - 1, shows."""
    S = cache_rows(pos, T)
    host = np.full((2, S, KV, hd), np.nan)
    host[:, :pos] = rng.standard_normal((2, pos, KV, hd))
    cache = upload(device, host, dtype)
    k_cache, v_cache = (cache.narrow(0, i, 1).view(S, KV, hd) for i in (0, 1))
    return cache, k_cache, v_cache, cache.numpy()[:, :pos]


def dense(device, w, dtype):
    t = upload(device, w, dtype)
    return Weight(DENSE, tuple(w.shape), {"w": t.native}), t.numpy()


def column_major(device, w, dtype):
    """A dense Weight whose W [N, K] is stored column-major, as the executor stores w2 for a
    backend with linear_add_ffn: W^T uploaded row-major, W its view with strides (1, N)."""
    t = upload(device, np.ascontiguousarray(w.T), dtype)
    view = Tensor(t.buffer, w.shape, (1, w.shape[0]), t.offset)
    return Weight(DENSE, tuple(w.shape), {"w": view.native}), t.numpy().T


# ---------------------------------------------------------------- registration


def test_every_required_op_resolves(backend):
    for op in REQUIRED_OPS:
        assert callable(kernel(backend, op)), op
    for op in OPTIONAL_OPS:
        if get_registry().has_kernel(backend.backend_id, op):
            assert callable(kernel(backend, op)), op


# ---------------------------------------------------------------- required ops


@pytest.mark.parametrize("T", [1, 7])
def test_embedding(backend, dtype, rng, T):
    V, D = 53, 37
    table = upload(backend, rng.standard_normal((V, D)), dtype)
    ids = rng.integers(0, V, T).astype(np.int32)
    ids[0], ids[-1] = V - 1, 0
    out, whole = poisoned(backend, (T, D), dtype)
    kernel(backend, "embedding")(out.native, table.native, backend.upload(ids).native)
    check_out(backend, out, whole, reference.embedding(table.numpy(), ids), dtype, "embedding")


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm(backend, dtype, rng, T, eps):
    D = 67
    x = upload(backend, rng.standard_normal((T, D)) * rng.uniform(0.1, 3, (T, 1)), dtype)
    w = upload(backend, 1 + 0.3 * rng.standard_normal(D), dtype)
    out, whole = poisoned(backend, (T, D), dtype)
    kernel(backend, "rmsnorm")(out.native, x.native, w.native, eps)
    want = reference.rmsnorm(x.numpy(), w.numpy(), eps)
    check_out(backend, out, whole, want, dtype, "rmsnorm")


@pytest.mark.parametrize("T", [1, 5, 33])
@pytest.mark.parametrize("N,K", [(45, 67), (96, 128)])
def test_linear(backend, dtype, rng, T, N, K):
    x = upload(backend, rng.standard_normal((T, K)), dtype)
    w, w_used = dense(backend, rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    out, whole = poisoned(backend, (T, N), dtype)
    kernel(backend, "linear")(out.native, x.native, w)
    check_out(backend, out, whole, reference.linear(x.numpy(), w_used), dtype, "linear")


@pytest.mark.parametrize("heads_cfg", sorted(HEADS))
@pytest.mark.parametrize("T,pos", [(1, 0), (1, 9), (6, 0), (5, 11)])
def test_rope(backend, dtype, rng, heads_cfg, T, pos):
    H, KV, hd = HEADS[heads_cfg]
    S = 32
    qkv, q, k, _ = fused_qkv(backend, rng, T, H, KV, hd, dtype)
    before = split_qkv(qkv.numpy(), H, KV, hd)
    cos, sin = reference.rope_tables(hd, S, 10000.0)
    kernel(backend, "rope")(q.native, k.native, backend.upload(np.array([pos], np.int32)).native,
                            backend.upload(cos, "float32").native,
                            backend.upload(sin, "float32").native)
    q_got, k_got, v_got = split_qkv(read(backend, qkv), H, KV, hd)
    assert_close(q_got, reference.rope(before[0], pos, cos, sin), dtype, "rope q")
    assert_close(k_got, reference.rope(before[1], pos, cos, sin), dtype, "rope k")
    np.testing.assert_array_equal(v_got, before[2], err_msg="rope changed v")


# one token at 1,100 keys: a GPU decode kernel splits them over many blocks and merges
LONG = (1, 1100)
# a prompt continuing another over more than one block of 64 queries and tile of 64 keys
LONG_PROMPT = (150, 37)


@pytest.mark.parametrize("heads_cfg", sorted(HEADS))
@pytest.mark.parametrize("T,pos", [(1, 0), (1, 13), (6, 0), (5, 11), LONG, LONG_PROMPT])
def test_attention(backend, dtype, rng, heads_cfg, T, pos):
    """Cache rows before pos hold history, rows from pos on are NaN: the kernel must write
    rows pos..pos+T-1 and never read past them."""
    H, KV, hd = HEADS[heads_cfg]
    qkv, q, k, v = fused_qkv(backend, rng, T, H, KV, hd, dtype)
    cache, k_cache, v_cache, history = cache_with_history(backend, rng, pos, T, KV, hd, dtype)
    q_used, k_used, v_used = split_qkv(qkv.numpy(), H, KV, hd)
    attn, whole = poisoned(backend, (T, H * hd), dtype)
    out = attn.view(T, H, hd)
    scale = 1.0 / np.sqrt(hd)
    kernel(backend, "attention")(out.native, q.native, k.native, v.native, k_cache.native,
                                 v_cache.native, backend.upload(np.array([pos], np.int32)).native,
                                 scale)
    k_all = np.concatenate([history[0], k_used])
    v_all = np.concatenate([history[1], v_used])
    want = reference.attention(q_used, k_all, v_all, pos, scale)
    check_out(backend, attn, whole, want.reshape(T, H * hd), dtype, "attention")
    got_cache = read(backend, cache)
    np.testing.assert_array_equal(got_cache[0, :pos + T], k_all, err_msg="k cache rows")
    np.testing.assert_array_equal(got_cache[1, :pos + T], v_all, err_msg="v cache rows")
    assert np.isnan(got_cache[:, pos + T:]).all(), "attention wrote cache rows past pos + T"


@pytest.mark.parametrize("heads_cfg", sorted(HEADS))
@pytest.mark.parametrize("T,pos", [(1, 0), (1, 13), (5, 11), LONG, LONG_PROMPT])
def test_rope_attention(backend, dtype, rng, heads_cfg, T, pos):
    """rope then attention in one op: the output of the rotated q and keys, the cache holding
    the rotated keys (rounded as rope's in-place result would be)."""
    fn = optional_kernel(backend, "rope_attention")
    H, KV, hd = HEADS[heads_cfg]
    qkv, q, k, v = fused_qkv(backend, rng, T, H, KV, hd, dtype)
    cache, k_cache, v_cache, history = cache_with_history(backend, rng, pos, T, KV, hd, dtype)
    q_used, k_used, v_used = split_qkv(qkv.numpy(), H, KV, hd)
    cos, sin = reference.rope_tables(hd, cache_rows(pos, T), 10000.0)
    q_rot, k_rot = (reference.rope(x, pos, cos, sin) for x in (q_used, k_used))
    attn, whole = poisoned(backend, (T, H * hd), dtype)
    scale = 1.0 / np.sqrt(hd)
    fn(attn.view(T, H, hd).native, q.native, k.native, v.native, k_cache.native, v_cache.native,
       backend.upload(np.array([pos], np.int32)).native, backend.upload(cos, "float32").native,
       backend.upload(sin, "float32").native, scale)
    k_all = np.concatenate([history[0], k_rot])
    v_all = np.concatenate([history[1], v_used])
    want = reference.attention(q_rot, k_all, v_all, pos, scale)
    check_out(backend, attn, whole, want.reshape(T, H * hd), dtype, "rope_attention")
    got_cache = read(backend, cache)
    np.testing.assert_array_equal(got_cache[0, :pos], history[0], err_msg="k cache history")
    assert_close(got_cache[0, pos:pos + T], k_rot, dtype, "rotated keys in the cache")
    np.testing.assert_array_equal(got_cache[1, :pos + T], v_all, err_msg="v cache rows")
    assert np.isnan(got_cache[:, pos + T:]).all(), "rope_attention wrote rows past pos + T"


@pytest.mark.parametrize("T", [1, 6])
def test_silu_mul(backend, dtype, rng, T):
    N = 45
    gu = upload(backend, rng.uniform(-6, 6, (T, 2 * N)), dtype)
    gate, up = gu.split_last(N, N)
    out, whole = poisoned(backend, (T, N), dtype)
    kernel(backend, "silu_mul")(out.native, gate.native, up.native)
    g, u = np.split(gu.numpy(), 2, axis=1)
    check_out(backend, out, whole, reference.silu_mul(g, u), dtype, "silu_mul")


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("alias", [False, True], ids=["out", "out=a"])
def test_add(backend, dtype, rng, T, alias):
    D = 67
    a, whole = poisoned(backend, (T, D), dtype)
    backend.allocator.copyin(a, rng.standard_normal((T, D)).astype(np.float32))
    b = upload(backend, rng.standard_normal((T, D)), dtype)
    want = reference.add(a.numpy(), b.numpy())
    if alias:
        out = a
    else:
        out, whole = poisoned(backend, (T, D), dtype)
    kernel(backend, "add")(out.native, a.native, b.native)
    check_out(backend, out, whole, want, dtype, "add")


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("V", [97, 32003])
def test_argmax(backend, dtype, rng, T, V):
    logits_host = rng.standard_normal((T, V))
    top = rng.integers(0, V, T)
    logits_host[np.arange(T), top] = logits_host.max() + 1.0      # a unique maximum per row
    logits = upload(backend, logits_host, dtype)
    out, whole = poisoned(backend, (T,), "int32")
    kernel(backend, "argmax")(out.native, logits.native)
    check_out(backend, out, whole, reference.argmax(logits.numpy()), "int32", "argmax")


# ---------------------------------------------------------------- optional ops


@pytest.mark.parametrize("T", [1, 6, 130])
@pytest.mark.parametrize("layout", ["out", "out=residual", "W column-major"])
def test_linear_add(backend, dtype, rng, T, layout):
    """W column-major: as the executor stores w2 for a backend with linear_add_ffn, whose
    prefills then add x @ W2^T (130 tokens: a GPU's GEMM through TMA)."""
    fn = optional_kernel(backend, "linear_add")
    N, K = 48, 72
    if layout == "W column-major":
        optional_kernel(backend, "linear_add_ffn")
        if T == 1:
            pytest.skip("one token goes through linear_add_ffn")
        w, w_used = column_major(backend, rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    else:
        w, w_used = dense(backend, rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    x = upload(backend, rng.standard_normal((T, K)), dtype)
    residual, whole = poisoned(backend, (T, N), dtype)
    backend.allocator.copyin(residual, rng.standard_normal((T, N)).astype(np.float32))
    want = reference.add(residual.numpy(), reference.linear(x.numpy(), w_used))
    if layout == "out":
        out, whole = poisoned(backend, (T, N), dtype)
    else:
        out = residual
    fn(out.native, x.native, w, residual.native)
    check_out(backend, out, whole, want, dtype, f"linear_add, {layout}")


@pytest.mark.parametrize("D,F,Q", [(67, 45, 48), (64, 4500, 32)])
def test_linear_add_ffn(backend, dtype, rng, D, F, Q):
    """The second half of a layer for one token on a float32 residual stream: the second
    case gives a GPU's programs several chunks of hidden rows each."""
    fn = optional_kernel(backend, "linear_add_ffn")
    eps = 1e-5
    x = upload(backend, rng.standard_normal((1, D)) * 2, "float32")
    scratch = upload(backend, np.full((1, D), np.nan), "float32")
    attn = upload(backend, rng.standard_normal((1, Q)), dtype)
    wo, wo_used = dense(backend, rng.standard_normal((D, Q)) / np.sqrt(Q), dtype)
    norm = upload(backend, 1 + 0.3 * rng.standard_normal(D), dtype)
    w13, w13_used = dense(backend, rng.standard_normal((2 * F, D)) / np.sqrt(D), dtype)
    w2, w2_used = column_major(backend, rng.standard_normal((D, F)) / np.sqrt(F), dtype)
    mid = x.numpy().astype(np.float64) + reference.linear(attn.numpy(), wo_used)
    want = mid + reference.linear(normed_reference("rmsnorm_swiglu", mid, norm.numpy(), eps,
                                                   w13_used), w2_used)
    fn(x.native, attn.native, wo, norm.native, eps, w13, w2, scratch.native)
    assert_close(read(backend, x), want, dtype, "linear_add_ffn")


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("op", ["rmsnorm_linear", "rmsnorm_swiglu"])
def test_rmsnorm_then_linear(backend, dtype, rng, op, T):
    fn = optional_kernel(backend, op)
    N, K, eps = 23, 67, 1e-5
    x = upload(backend, rng.standard_normal((T, K)) * 2, dtype)
    norm = upload(backend, 1 + 0.3 * rng.standard_normal(K), dtype)
    rows = 2 * N if op == "rmsnorm_swiglu" else N
    w, w_used = dense(backend, rng.standard_normal((rows, K)) / np.sqrt(K), dtype)
    out, whole = poisoned(backend, (T, N), dtype)
    fn(out.native, x.native, norm.native, eps, w)
    check_out(backend, out, whole, normed_reference(op, x.numpy(), norm.numpy(), eps, w_used),
              dtype, op)


@pytest.mark.parametrize("heads_cfg", sorted(HEADS))
@pytest.mark.parametrize("T,pos", [(1, 0), (1, 9), (6, 0), (5, 11)])
def test_rmsnorm_linear_rope(backend, dtype, rng, heads_cfg, T, pos):
    """A fused qkv projection whose q and k heads come out rotated, its v heads as they are."""
    fn = optional_kernel(backend, "rmsnorm_linear_rope")
    H, KV, hd = HEADS[heads_cfg]
    K, eps = 67, 1e-5
    x = upload(backend, rng.standard_normal((T, K)) * 2, dtype)
    norm = upload(backend, 1 + 0.3 * rng.standard_normal(K), dtype)
    w, w_used = dense(backend, rng.standard_normal(((H + 2 * KV) * hd, K)) / np.sqrt(K), dtype)
    cos, sin = reference.rope_tables(hd, 32, 10000.0)
    out, whole = poisoned(backend, (T, (H + 2 * KV) * hd), dtype)
    fn(out.native, x.native, norm.native, eps, w,
       backend.upload(np.array([pos], np.int32)).native, backend.upload(cos, "float32").native,
       backend.upload(sin, "float32").native, H + KV)
    q, k, v = split_qkv(normed_reference("rmsnorm_linear", x.numpy(), norm.numpy(), eps, w_used),
                        H, KV, hd)
    want = np.concatenate([reference.rope(q, pos, cos, sin).reshape(T, -1),
                           reference.rope(k, pos, cos, sin).reshape(T, -1), v.reshape(T, -1)],
                          axis=1)
    check_out(backend, out, whole, want, dtype, "rmsnorm_linear_rope")


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("V", [97, 32003])
def test_rmsnorm_linear_argmax(backend, dtype, rng, T, V):
    """The classifier with its greedy pick: logits against the float64 reference, ids against
    numpy's argmax of the logits as stored, with two equal rows tying for token 0's maximum
    (the first wins)."""
    fn = optional_kernel(backend, "rmsnorm_linear_argmax")
    K, eps = 67, 1e-5
    x_host = rng.standard_normal((T, K)) * 2
    w_host = rng.standard_normal((V, K)) / np.sqrt(K)
    i, j = sorted(rng.choice(V, 2, replace=False))
    w_host[i] = w_host[j] = x_host[0] / np.linalg.norm(x_host[0])      # the top logit, twice
    x = upload(backend, x_host, dtype)
    norm = upload(backend, np.ones(K), dtype)
    w, w_used = dense(backend, w_host, dtype)
    logits, whole = poisoned(backend, (T, V), dtype)
    ids, ids_whole = poisoned(backend, (T,), "int32")
    fn(ids.native, logits.native, x.native, norm.native, eps, w)
    check_out(backend, logits, whole, normed_reference("rmsnorm_linear", x.numpy(),
                                                       norm.numpy(), eps, w_used),
              dtype, "rmsnorm_linear_argmax")
    stored = logits.numpy()
    assert stored[0].max() in (stored[0, i], stored[0, j])
    check_out(backend, ids, ids_whole, reference.argmax(stored), "int32", "rmsnorm_linear_argmax")
    if stored[0, i] == stored[0, j]:   # equal rows may round apart in a GEMM that tiles them
        assert ids.numpy()[0] == i


@pytest.mark.parametrize("op", ["linear", "linear_add", "rmsnorm_linear", "rmsnorm_swiglu"])
@pytest.mark.parametrize("N,K", [(19, 5632), (13, 4611)])
def test_one_token_over_long_rows(backend, dtype, rng, op, N, K):
    """Rows longer than a GPU GEMV loads at once (walked in tiles), K a multiple of 8 (16-byte
    pieces) or not."""
    fn = kernel(backend, op) if op == "linear" else optional_kernel(backend, op)
    rows = 2 * N if op == "rmsnorm_swiglu" else N
    x = upload(backend, rng.standard_normal((1, K)) * 2, dtype)
    w, w_used = dense(backend, rng.standard_normal((rows, K)) / np.sqrt(K), dtype)
    out, whole = poisoned(backend, (1, N), dtype)
    eps = 1e-5
    norm = upload(backend, 1 + 0.3 * rng.standard_normal(K), dtype)
    residual = upload(backend, rng.standard_normal((1, N)), dtype)
    if op == "linear":
        fn(out.native, x.native, w)
        want = reference.linear(x.numpy(), w_used)
    elif op == "linear_add":
        fn(out.native, x.native, w, residual.native)
        want = reference.add(residual.numpy(), reference.linear(x.numpy(), w_used))
    else:
        fn(out.native, x.native, norm.native, eps, w)
        want = normed_reference(op, x.numpy(), norm.numpy(), eps, w_used)
    check_out(backend, out, whole, want, dtype, op)


SAMPLING = {                      # (temperature, top_k, top_p, min_p)
    "plain": (1.0, 0, 1.0, 0.0), "top-k": (0.7, 10, 1.0, 0.0), "top-p": (1.3, 0, 0.75, 0.0),
    "min-p": (1.0, 0, 1.0, 0.1), "all": (0.9, 20, 0.9, 0.05), "greedy": (0.0, 0, 1.0, 0.0),
}
MARGIN = 1e-4                     # how far from a decision boundary every case stays


def unambiguous_draws(rng, logits, params) -> list[float]:
    """Uniform numbers that land well inside one token's CDF interval: the midpoint of every
    kept token's interval plus random ones away from the boundaries."""
    probs = reference.sampling_probs(logits, *params)
    cum = np.cumsum(np.sort(probs)[::-1])
    cum = cum[: np.count_nonzero(probs)] / cum[-1]
    mids = (np.concatenate([[0.0], cum[:-1]]) + cum) / 2
    us = np.concatenate([mids, rng.random(64), [0.0]]).astype(np.float32)
    edges = np.concatenate([[0.0], cum])
    return [float(u) for u in us if np.abs(edges - u).min() > MARGIN or u == 0.0]


def assert_cut_offs_unambiguous(logits, params):
    """The constructed distribution sits no top-p or min-p cut-off on a rounding edge."""
    temperature, top_k, top_p, min_p = params
    if temperature <= 0:
        return
    p = np.sort(reference.softmax(np.asarray(logits, np.float64) / temperature))[::-1]
    p = p[:top_k or len(p)]
    cum = np.cumsum(p) / p.sum()
    assert top_p >= 1.0 or np.abs(cum - top_p).min() > MARGIN
    assert min_p <= 0.0 or np.abs(p / p[0] - min_p).min() > MARGIN


def test_advance(backend, rng):
    """The step's id lands in slot pos % R and pos moves on; the other slots keep theirs."""
    fn = optional_kernel(backend, "advance")
    picked = backend.upload(np.full(5, -1, dtype=np.int32))
    for p in (0, 3, 12, 7, 2147483640):
        pos = backend.upload(np.array([p], dtype=np.int32))
        ids = backend.upload(rng.integers(0, 50000, 1).astype(np.int32))
        want_pos, want = reference.advance([p], read(backend, ids), read(backend, picked))
        fn(pos.native, ids.native, picked.native)
        np.testing.assert_array_equal(read(backend, pos), want_pos, err_msg=f"pos {p}")
        np.testing.assert_array_equal(read(backend, picked), want, err_msg=f"slots at pos {p}")


@pytest.mark.parametrize("case", sorted(SAMPLING))
def test_sample(backend, dtype, rng, case):
    fn = optional_kernel(backend, "sample")
    params = SAMPLING[case]
    V = 67
    logits = upload(backend, -0.3 * rng.permutation(V)[None, :], dtype)   # no ties, clear gaps
    used = logits.numpy()[0]
    assert_cut_offs_unambiguous(used, params)
    draws = unambiguous_draws(rng, used, params)
    assert len(draws) > 16
    assert_draws_match(backend, fn, logits, params, draws, case)


def assert_draws_match(backend, fn, logits, params, draws, case):
    """For each uniform number u of draws, the kernel picks reference.sample's token from the
    logits as stored."""
    used = logits.numpy()[0]
    dev_params = backend.upload(np.array(params, dtype=np.float32), "float32")
    u_dev = backend.upload(np.zeros(1, dtype=np.float32), "float32")
    out, whole = poisoned(backend, (1,), "int32")
    for u in draws:
        backend.allocator.copyin(u_dev, np.array([u], dtype=np.float32))
        fn(out.native, logits.native, dev_params.native, u_dev.native)
        want = np.array([reference.sample(used, *params, u)], dtype=np.int32)
        check_out(backend, out, whole, want, "int32", f"sample {case} u={u}")


LARGE_SAMPLING = dict(SAMPLING, **{"top-k 2000": (1.0, 2000, 0.85, 0.0)})


@pytest.mark.parametrize("case", sorted(LARGE_SAMPLING))
def test_sample_large_vocabulary(backend, dtype, rng, case):
    """5,000 tokens, flat enough that top-p cuts hundreds deep: more than a GPU sampler can
    sort at once (cuda:cupy sorts up to 1,024 in one block, cuda:triton hands chunks of
    4,096 to a merge), so the whole-vocabulary searches run. Ties of the dtype's rounding go
    by token id, as in the reference."""
    fn = optional_kernel(backend, "sample")
    params = LARGE_SAMPLING[case]
    V = 5000
    logits = upload(backend, -0.004 * rng.permutation(V)[None, :], dtype)
    used = logits.numpy()[0]
    assert_cut_offs_unambiguous(used, params)
    draws = unambiguous_draws(rng, used, params)
    draws = [draws[i] for i in sorted(rng.choice(len(draws), min(len(draws), 48), replace=False))]
    assert_draws_match(backend, fn, logits, params, draws, case)
