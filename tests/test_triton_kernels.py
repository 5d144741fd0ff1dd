"""cuda:triton kernels against core/reference.py on fresh random inputs, odd sizes included.

With a GPU the kernels run compiled at larger sizes; without one they run on the CPU in
Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py before triton is imported) at
small sizes. References take the inputs as stored in the compute dtype, in float64.
"""
import zlib

import numpy as np
import pytest

import refmodel
from polyllama import DeviceSpec, QuantizedArray, get_device, get_registry, reference

torch = pytest.importorskip("torch")
pytest.importorskip("triton")            # conftest sets TRITON_INTERPRET=1 when there is no GPU

from polyllama.plugins.cuda_triton import attention as attn_mod          # noqa: E402
from polyllama.plugins.cuda_triton import ffn, kernels, linear, sampling  # noqa: E402
from polyllama.plugins.cuda_triton.device import TritonDevice, interpreting  # noqa: E402
from polyllama import model as model_mod                                  # noqa: E402
from polyllama.generate import SamplingParams, TokenLoop                   # noqa: E402
from polyllama.model import Model                                         # noqa: E402
from polyllama.ops import Weight                                          # noqa: E402

if not interpreting() and not torch.cuda.is_available():
    pytest.skip("no CUDA GPU and TRITON_INTERPRET=0", allow_module_level=True)

SMALL = interpreting()
DTYPES = ["float32", "bfloat16", "float16"]
TOL = {"float32": 1e-5, "bfloat16": 1.2e-2, "float16": 2e-3}


@pytest.fixture(scope="module")
def dev():
    """cuda:triton's device, made directly (get_device calls the backend unavailable without
    CUDA, where these tests run under the interpreter), with the id get_device would give it:
    Model.build looks its kernels up by that id."""
    device = TritonDevice(DeviceSpec("cuda", "triton", 0), 0)
    device.backend_id = "cuda_triton"
    return device


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def up(dev, host, dtype):
    return dev.upload(np.asarray(host, dtype=np.float32), dtype).native


def host(t):
    return t.detach().float().cpu().numpy().astype(np.float64)


def poisoned(dev, shape, dtype):
    return dev.empty(shape, dtype).native.fill_(float("nan"))


def close(out, ref, dtype, roundings=1):
    """roundings: how many results in the compute dtype the op chains (each adds its error)."""
    out, ref = host(out) if not isinstance(out, np.ndarray) else out, np.asarray(ref)
    assert out.shape == ref.shape
    assert np.isfinite(out).all(), "an output element was not written"
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    tol = TOL[dtype] * roundings
    assert err < tol, f"relative error {err:.2e} over {tol:.0e} ({dtype})"


def pos_buf(dev, p):
    return dev.upload(np.array([p], dtype=np.int32)).native


# ---------------------------------------------------------------- allocator / device


@pytest.mark.parametrize("dtype", DTYPES + ["int32"])
def test_copy_roundtrip_and_views(dev, rng, dtype):
    a = rng.standard_normal((5, 7)).astype(np.float32)
    if dtype == "int32":
        a = rng.integers(-100, 100, (5, 7)).astype(np.int32)
    t = dev.upload(a, dtype)
    back = t.numpy()
    assert back.dtype == (np.int32 if dtype == "int32" else np.float32)
    assert np.allclose(back, a, rtol=TOL.get(dtype, 0), atol=0)
    cols = t.narrow(1, 2, 3)                       # a strided column view
    assert np.array_equal(cols.numpy(), back[:, 2:5])


def test_device_reports(dev):
    assert dev.default_dtype == "bfloat16" and "float32" in dev.supported_dtypes
    assert isinstance(dev.name(), str) and dev.name()
    if not SMALL:
        held = dev.empty((1 << 20,), "float32")
        mem = dev.memory()
        assert held.buffer.nbytes <= mem["used"] <= mem["peak"] <= mem["total"]
        dev.empty((1 << 28,), "uint8")                 # 256 MiB, freed at once
        assert dev.memory()["peak"] >= mem["used"] + (1 << 28)
        dev.reset_peak_memory()
        assert dev.memory()["peak"] == dev.memory()["used"]


@pytest.mark.skipif(SMALL, reason="CUDA graphs need a GPU")
def test_decode_runner_replays_with_new_inputs(dev, rng):
    a = up(dev, rng.standard_normal((1, 300)), "float32")
    b = up(dev, rng.standard_normal((1, 300)), "float32")
    out = poisoned(dev, (1, 300), "float32")
    run = dev.decode_runner(lambda: kernels.add(out, a, b))
    for _ in range(3):                             # eager and captured, then replays
        a.copy_(torch.randn_like(a))
        out.fill_(float("nan"))
        run()
        dev.synchronize()
        close(out, host(a) + host(b), "float32")


# ---------------------------------------------------------------- element-wise ops


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(dev, rng, dtype):
    V, D, T = (37, 53, 5) if SMALL else (3001, 2111, 33)
    table = up(dev, rng.standard_normal((V, D)), dtype)
    ids = rng.integers(0, V, T).astype(np.int32)
    out = poisoned(dev, (T, D), dtype)
    kernels.embedding(out, table, dev.upload(ids).native)
    assert np.array_equal(host(out), reference.embedding(host(table), ids))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm(dev, rng, dtype):
    T, D = (3, 67) if SMALL else (17, 4099)
    x = up(dev, rng.standard_normal((T, D)) * 3, dtype)
    w = up(dev, 1 + 0.3 * rng.standard_normal(D), dtype)
    out = poisoned(dev, (T, D), dtype)
    kernels.rmsnorm(out, x, w, 1e-5)
    close(out, reference.rmsnorm(host(x), host(w), 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_on_column_views(dev, rng, dtype):
    T, N = (3, 45) if SMALL else (9, 5001)
    gu = up(dev, rng.standard_normal((T, 2 * N)) * 2, dtype)
    gate, upv = gu[:, :N], gu[:, N:]
    out = poisoned(dev, (T, N), dtype)
    kernels.silu_mul(out, gate, upv)
    close(out, reference.silu_mul(host(gate), host(upv)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_in_place(dev, rng, dtype):
    T, D = (3, 45) if SMALL else (9, 5001)
    a = up(dev, rng.standard_normal((T, D)), dtype)
    b = up(dev, rng.standard_normal((T, D)), dtype)
    ref = reference.add(host(a), host(b))
    kernels.add(a, a, b)
    close(a, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_on_qkv_views(dev, rng, dtype):
    T, H, KV, hd, S, p = (5, 4, 2, 12, 16, 3) if SMALL else (37, 32, 8, 128, 300, 100)
    cos, sin = reference.rope_tables(hd, S, 10000.0)
    qkv = up(dev, rng.standard_normal((T, (H + 2 * KV) * hd)), dtype)
    q = qkv[:, :H * hd].unflatten(1, (H, hd))
    k = qkv[:, H * hd:(H + KV) * hd].unflatten(1, (KV, hd))
    v_before = host(qkv[:, (H + KV) * hd:])
    rq, rk = reference.rope(host(q), p, cos, sin), reference.rope(host(k), p, cos, sin)
    kernels.rope(q, k, pos_buf(dev, p), up(dev, cos, "float32"), up(dev, sin, "float32"))
    close(q, rq, dtype)
    close(k, rk, dtype)
    assert np.array_equal(host(qkv[:, (H + KV) * hd:]), v_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, V", [(3, 1001)] if SMALL else [(4, 32003), (2, 128256)])
def test_argmax_first_of_ties(dev, rng, dtype, T, V):
    logits = up(dev, np.round(rng.standard_normal((T, V)) * 4) / 4, dtype)   # many ties
    out = dev.empty((T,), "int32").native.fill_(-1)
    sampling.argmax(out, logits)
    assert np.array_equal(out.cpu().numpy(), reference.argmax(host(logits)))


def test_argmax_negative_zero_ties_zero(dev):
    """-0.0 and 0.0 are equal logits, so the first of them wins, as in numpy."""
    host_logits = np.full((1, 300), -1.0)
    host_logits[0, 7], host_logits[0, 200] = -0.0, 0.0
    out = dev.empty((1,), "int32").native.fill_(-1)
    sampling.argmax(out, up(dev, host_logits, "float32"))
    assert int(out.cpu()[0]) == reference.argmax(host_logits)[0] == 7


# ---------------------------------------------------------------- linear family


# over 128 tokens with rows of 8 values (16 bytes in 16-bit dtypes) go through the TMA GEMM,
# others not; on a GPU (132 multiprocessors), the last four take its four tile configurations
LINEAR_SHAPES = [(1, 45, 83), (1, 22, 300), (7, 45, 83), (130, 72, 96)] if SMALL else [
    (1, 4096, 4096), (1, 1003, 2051), (37, 1003, 2051), (129, 256, 256), (512, 2048, 512),
    (300, 4096, 1024), (1024, 11264, 512)]


def weight(dev, rng, fmt, dtype, N, K, w=None):
    """(Weight, its values as the reference multiplies them) of w (else random): dense in
    dtype, or q8_0 as the int8 scheme packs it."""
    w = rng.standard_normal((N, K)) / np.sqrt(K) if w is None else w
    if fmt == "dense":
        W = up(dev, w, dtype)
        return Weight("dense", (N, K), {"w": W}), host(W)
    return q8_weight(dev, w.astype(np.float32))


def q8_weight(dev, w):
    """(Weight, its values as the reference multiplies them) of w packed by the int8 scheme
    (a float matrix, or a QuantizedArray as a file holds it)."""
    parts, meta = get_registry().quant_schemes["int8"].pack(w)
    return (Weight("q8_0", w.shape, {k: dev.upload(a, a.dtype.name).native
                                     for k, a in parts.items()}, meta),
            reference.dequantize_groups(parts["q"], parts["s"].reshape(-1), meta["group"]))


def swiglu_ref(x, g, W):
    """silu(gate) * up of RMSNorm(x) @ W^T, W = [W1; W3]."""
    gu = reference.linear(reference.rmsnorm(host(x), host(g), 1e-5), W)
    n = gu.shape[1] // 2
    return reference.silu_mul(gu[:, :n], gu[:, n:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N,K", LINEAR_SHAPES)
@pytest.mark.parametrize("op", ["linear", "rmsnorm_linear", "linear_add", "rmsnorm_swiglu"])
@pytest.mark.parametrize("fmt", ["dense", "q8_0"])
def test_linear_family(dev, rng, dtype, T, N, K, op, fmt):
    x = up(dev, rng.standard_normal((T, K)), dtype)
    if op == "rmsnorm_swiglu":                     # W = [W1; W3]: N/2 outputs
        N = N // 2
        w, W = weight(dev, rng, fmt, dtype, 2 * N, K)
        g = up(dev, 1 + 0.3 * rng.standard_normal(K), dtype)
        out = poisoned(dev, (T, N), dtype)
        linear.rmsnorm_swiglu(out, x, g, 1e-5, w)
        close(out, swiglu_ref(x, g, W), dtype, roundings=3 if T > 1 else 1)
        return
    w, W = weight(dev, rng, fmt, dtype, N, K)
    if op == "linear":
        out = poisoned(dev, (T, N), dtype)
        linear.linear(out, x, w)
        ref = reference.linear(host(x), W)
    elif op == "rmsnorm_linear":
        g = up(dev, 1 + 0.3 * rng.standard_normal(K), dtype)
        out = poisoned(dev, (T, N), dtype)
        linear.rmsnorm_linear(out, x, g, 1e-5, w)
        ref = reference.linear(reference.rmsnorm(host(x), host(g), 1e-5), W)
    else:
        out = up(dev, rng.standard_normal((T, N)), dtype)          # residual, updated in place
        ref = reference.add(host(out), reference.linear(host(x), W))
        linear.linear_add(out, x, w, out)
    close(out, ref, dtype)


def column_major(dev, rng, dtype, N, K):
    """(Weight, its values) of a random W [N, K] stored column-major, as the executor stores
    w2 for linear_add_ffn."""
    Wt = up(dev, rng.standard_normal((K, N)) / np.sqrt(K), dtype)
    return Weight("dense", (N, K), {"w": Wt.t()}), host(Wt).T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,N,K", [s for s in LINEAR_SHAPES if s[0] > 1])
def test_linear_add_column_major(dev, rng, dtype, T, N, K):
    """A prefill's w2 GEMM on the column-major w2 (pointer tiles, or TMA over W^T)."""
    x = up(dev, rng.standard_normal((T, K)), dtype)
    w, W = column_major(dev, rng, dtype, N, K)
    out = up(dev, rng.standard_normal((T, N)), dtype)
    ref = reference.add(host(out), reference.linear(host(x), W))
    linear.linear_add(out, x, w, out)
    close(out, ref, dtype)


# (D, F, Q): SmolLM2's (a program a chunk), TinyLlama's and Llama-2-7B's FFN on a GPU
FFN_SHAPES = [(67, 45, 48), (64, 300, 32)] if SMALL else [
    (576, 1536, 576), (2048, 5632, 2048), (4096, 11008, 4096), (1000, 777, 96)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,F,Q", FFN_SHAPES)
def test_linear_add_ffn(dev, rng, dtype, D, F, Q):
    """x += attn @ Wo^T, then x += the SwiGLU FFN of its RMSNorm, x float32."""
    x = up(dev, rng.standard_normal((1, D)) * 2, "float32")
    scratch = poisoned(dev, (1, D), "float32")
    attn = up(dev, rng.standard_normal((1, Q)), dtype)
    wo, Wo = weight(dev, rng, "dense", dtype, D, Q)
    g = up(dev, 1 + 0.3 * rng.standard_normal(D), dtype)
    w13, W13 = weight(dev, rng, "dense", dtype, 2 * F, D)
    w2, W2 = column_major(dev, rng, dtype, D, F)
    mid = host(x) + reference.linear(host(attn), Wo)
    gu = reference.linear(reference.rmsnorm(mid, host(g), 1e-5), W13)
    ref = mid + reference.linear(reference.silu_mul(gu[:, :F], gu[:, F:]), W2)
    ffn.linear_add_ffn(x, attn, wo, g, 1e-5, w13, w2, scratch)
    close(x, ref, dtype, roundings=2)


@pytest.mark.parametrize("peak,wanted", [(3.35e12, {"smollm2-135m", "tinyllama-1.1b",
                                                       "llama3.2-1b", "llama2-7b"}),
                                          (4.8e12, {"llama2-7b"})])
def test_ffn_op_pays_where_timed(monkeypatch, peak, wanted):
    """The shapes the one-kernel FFN was timed on: on an H100's memory it won for all, on an
    H200's only for Llama-2-7B (perf-notes attempt 40)."""
    from polyllama.bench import SHAPES
    monkeypatch.setattr(ffn, "peak_bandwidth", lambda device: peak)
    monkeypatch.setattr(ffn, "multiprocessors", lambda device: 132)
    gpu = type("Gpu", (), {"torch_device": "cuda"})()
    assert {name for name, c in SHAPES.items()
            if ffn.linear_add_ffn.pays(gpu, c, "bfloat16")} == wanted


def test_model_runs_the_ffn_op_only_where_it_pays(dev, monkeypatch):
    """Where linear_add_ffn pays, the executor stores w2 column-major and keeps the decode
    residual stream in float32; where it does not, neither, and the FFN is two GEMVs."""
    hf = refmodel.make_hf_model("gqa-tied", seed=1)
    ckpt = refmodel.reference_checkpoint(hf)
    monkeypatch.setattr(ffn.linear_add_ffn, "pays", lambda device, config, dtype: True)
    model = Model.build(ckpt, dev, "bfloat16")
    assert model.ffn_k is not None and model.layers[0].w2.parts["w"].stride(0) == 1
    assert model.decode_ws.x.dtype == "float32"
    monkeypatch.setattr(ffn.linear_add_ffn, "pays", lambda device, config, dtype: False)
    model = Model.build(ckpt, dev, "float32")
    assert model.ffn_k is None and model.layers[0].w2.parts["w"].stride(1) == 1
    refmodel.assert_greedy_matches(model, hf, steps=12)


ROPE_SHAPES = [(1, 4, 2, 12, 40), (6, 3, 1, 16, 24)] if SMALL else [
    (1, 32, 4, 64, 2048), (1, 32, 32, 128, 4096), (37, 32, 8, 64, 2048)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H,KV,hd,K", ROPE_SHAPES)
@pytest.mark.parametrize("fmt", ["dense", "q8_0"])
def test_rmsnorm_linear_rope(dev, rng, dtype, T, H, KV, hd, K, fmt):
    """The qkv projection with RoPE in its epilogue: q and k heads rotated at pos, v not."""
    S, p = 64, 21
    w, W = weight(dev, rng, fmt, dtype, (H + 2 * KV) * hd, K)
    x = up(dev, rng.standard_normal((T, K)), dtype)
    g = up(dev, 1 + 0.3 * rng.standard_normal(K), dtype)
    cos, sin = reference.rope_tables(hd, S, 10000.0)
    out = poisoned(dev, (T, (H + 2 * KV) * hd), dtype)
    linear.rmsnorm_linear_rope(out, x, g, 1e-5, w, pos_buf(dev, p), up(dev, cos, "float32"),
                               up(dev, sin, "float32"), H + KV)
    qkv = reference.linear(reference.rmsnorm(host(x), host(g), 1e-5), W)
    turned = reference.rope(qkv[:, :(H + KV) * hd].reshape(T, H + KV, hd), p, cos, sin)
    close(out, np.concatenate([turned.reshape(T, -1), qkv[:, (H + KV) * hd:]], axis=1), dtype,
          roundings=2 if T > 1 else 1)


ARGMAX_SHAPES = [(1, 301, 40), (3, 97, 24)] if SMALL else [
    (1, 32000, 2048), (1, 128256, 2048), (4, 1001, 2048)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,V,K", ARGMAX_SHAPES)
@pytest.mark.parametrize("fmt", ["dense", "q8_0"])
def test_rmsnorm_linear_argmax(dev, rng, dtype, T, V, K, fmt):
    """The classifier picking as it goes: logits against the float64 reference, ids against
    numpy's argmax of the logits as stored, where two equal rows tie for the maximum (the
    first wins). Two picks in a row: the second must not see the first's maximum."""
    base = rng.standard_normal((V, K)) / np.sqrt(K)
    i, j = sorted(rng.choice(V, 2, replace=False))
    g = up(dev, 1 + 0.3 * rng.standard_normal(K), dtype)
    for round_ in range(2):
        x_host = rng.standard_normal((T, K))
        normed = x_host / np.sqrt((x_host ** 2).mean(axis=1, keepdims=True))
        w_host = base.copy()
        w_host[i] = w_host[j] = normed[0] * (round_ + 4) / np.sqrt(K)    # the top logit, twice
        w, W = weight(dev, rng, fmt, dtype, V, K, w_host)
        x = up(dev, x_host, dtype)
        ids = dev.empty((T,), "int32").native.fill_(-1)
        logits = poisoned(dev, (T, V), dtype)
        linear.rmsnorm_linear_argmax(ids, logits, x, g, 1e-5, w)
        close(logits, reference.linear(reference.rmsnorm(host(x), host(g), 1e-5), W), dtype)
        stored = host(logits)
        assert stored[0, i] == stored[0, j] == stored[0].max()
        assert host(ids).astype(int).tolist() == reference.argmax(stored).tolist()
        assert host(ids)[0] == i


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("swiglu", [False, True])
def test_q8_linear_with_a_file_group_that_is_not_a_power_of_two(dev, rng, T, swiglu):
    """A file's int8 groups of 12 are kept as they are (plugins/int8/pack.py)."""
    N, K = 10, 36
    wq, scales = reference.quantize_groups(rng.standard_normal((N, K)).astype(np.float32), 12)
    w, W = q8_weight(dev, QuantizedArray(wq, scales, 12))
    assert w.meta == {"group": 12}
    assert np.array_equal(W, reference.dequantize_groups(wq, scales, 12))
    x = up(dev, rng.standard_normal((T, K)), "float32")
    if swiglu:
        g = up(dev, 1 + 0.3 * rng.standard_normal(K), "float32")
        out = poisoned(dev, (T, N // 2), "float32")
        linear.rmsnorm_swiglu(out, x, g, 1e-5, w)
        close(out, swiglu_ref(x, g, W), "float32")
    else:
        out = poisoned(dev, (T, N), "float32")
        linear.linear(out, x, w)
        close(out, reference.linear(host(x), W), "float32")


# ---------------------------------------------------------------- attention


ATTN_HEADS = [(6, 2, 12), (3, 3, 16)] if SMALL else [(32, 8, 64), (32, 32, 128)]
ATTN_CASES = ([(1, 0), (1, 1), (1, 29), (5, 0), (7, 9)] if SMALL else
              [(1, 0), (1, 1), (1, 1000), (1, 4095), (300, 0), (77, 900)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,KV,hd", ATTN_HEADS)
@pytest.mark.parametrize("T,p", ATTN_CASES)
def test_attention(dev, rng, dtype, H, KV, hd, T, p):
    S = 32 if SMALL else 4096
    qkv = up(dev, rng.standard_normal((T, (H + 2 * KV) * hd)), dtype)
    q = qkv[:, :H * hd].unflatten(1, (H, hd))
    k = qkv[:, H * hd:(H + KV) * hd].unflatten(1, (KV, hd))
    v = qkv[:, (H + KV) * hd:].unflatten(1, (KV, hd))
    caches = []
    for _ in range(2):                              # history rows random, the rest poisoned
        c = poisoned(dev, (S, KV, hd), dtype)
        c[:p] = up(dev, rng.standard_normal((p, KV, hd)), dtype)
        caches.append(c)
    kc, vc = caches
    k_all = np.concatenate([host(kc[:p]), host(k)])
    v_all = np.concatenate([host(vc[:p]), host(v)])
    out = poisoned(dev, (T, H, hd), dtype)
    scale = 1 / np.sqrt(hd)
    attn_mod.attention(out, q, k, v, kc, vc, pos_buf(dev, p), scale)
    close(out, reference.attention(host(q), k_all, v_all, p, scale), dtype)
    assert np.array_equal(host(kc[:p + T]), k_all) and np.array_equal(host(vc[:p + T]), v_all)
    assert np.isnan(host(kc[p + T:])).all(), "attention wrote past its cache rows"


# ---------------------------------------------------------------- sampling


SAMPLE_PARAMS = [(0.0, 0, 1.0, 0.0), (0.8, 0, 1.0, 0.0), (1.0, 7, 1.0, 0.0),
                 (1.3, 0, 0.8, 0.0), (0.9, 20, 0.9, 0.05), (1.0, 0, 1.0, 0.3),
                 (0.7, 1, 1.0, 0.0), (1.0, 100, 1.0, 0.0), (0.9, 300, 0.9, 0.0)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("params", SAMPLE_PARAMS)
def test_sample_matches_reference(dev, rng, dtype, params):
    V = 203 if SMALL else 32000
    if dtype == "bfloat16":                          # coarse values: ties broken by token id
        host_logits = np.round(rng.standard_normal(V) * 3)
    else:
        host_logits = rng.standard_normal(V) * 3
    logits = up(dev, host_logits[None], dtype)
    x = host(logits)[0]
    p32 = np.array(params, dtype=np.float32)
    pbuf = dev.upload(p32, "float32").native
    out = dev.empty((1,), "int32").native
    for u in np.array([0.0, 0.42, 0.999999] if SMALL else [0.0, 0.13, 0.5, 0.77, 0.97],
                      dtype=np.float32):
        out.fill_(-1)
        sampling.sample(out, logits, pbuf, dev.upload(np.array([u]), "float32").native)
        want = reference.sample(x, float(p32[0]), int(p32[1]), float(p32[2]), float(p32[3]),
                                float(u))
        assert int(out.cpu()[0]) == want, f"u={u}"


@pytest.mark.parametrize("params", [(0.8, 40, 0.95, 0.05), (1.0, 0, 0.9, 0.0),
                                    (0.7, 0, 1.0, 0.0)])
def test_sample_masked_logits_and_large_vocabularies(dev, rng, params):
    """-inf logits filling whole chunks of the vocabulary and, on a GPU, a Llama-3-sized
    vocabulary."""
    p32 = np.array(params, dtype=np.float32)
    pbuf = dev.upload(p32, "float32").native
    out = dev.empty((1,), "int32").native
    for V in [203] if SMALL else [32000, 128256]:
        host_logits = rng.standard_normal(V) * 3
        host_logits[:V // 2] = -np.inf
        logits = up(dev, host_logits[None], "float32")
        for u in np.array([0.0, 0.6, 0.99], dtype=np.float32):
            out.fill_(-1)
            sampling.sample(out, logits, pbuf, dev.upload(np.array([u]), "float32").native)
            want = reference.sample(host_logits, float(p32[0]), int(p32[1]), float(p32[2]),
                                    float(p32[3]), float(u))
            assert int(out.cpu()[0]) == want, f"V={V} u={u}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sample_draws_on_exact_boundaries(dev, dtype):
    """Equal logits: every cumulative weight is exact, so u * total lands exactly on a
    boundary between two tokens (the draw takes the later one, as the reference's
    searchsorted does; a top-p cut the earlier one)."""
    V = 256 if SMALL else 32768
    logits = up(dev, np.zeros((1, V)), dtype)
    out = dev.empty((1,), "int32").native
    for params in [(1.0, 0, 1.0, 0.0), (1.0, 0, 0.5, 0.0), (1.0, V // 2, 1.0, 0.0)]:
        pbuf = dev.upload(np.array(params, dtype=np.float32), "float32").native
        for u in np.array([0.0, 0.25, 0.5, 0.75, 0.999], dtype=np.float32):
            out.fill_(-1)
            sampling.sample(out, logits, pbuf, dev.upload(np.array([u]), "float32").native)
            want = reference.sample(np.zeros(V), *params, float(u))
            assert int(out.cpu()[0]) == want, f"{params} u={u}"


# ---------------------------------------------------------------- the whole model


@pytest.mark.parametrize("name", sorted(refmodel.CONFIGS))
def test_model_greedy_matches_transformers_fp32(dev, name):
    """Prefill, then decode steps (a replayed CUDA graph on a GPU), argmax on the device."""
    hf = refmodel.make_hf_model(name, seed=1)
    ckpt = refmodel.reference_checkpoint(hf)
    model = Model.build(ckpt, dev, "float32")
    refmodel.assert_greedy_matches(model, hf, steps=12 if SMALL else 32)


def test_token_loop_greedy_matches_transformers_fp32(dev):
    """The engine's token loop: on a GPU it queues each decode step before reading the id
    the step before picked, from that step's own slot, on a second stream."""
    hf = refmodel.make_hf_model("gqa-tied", seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), dev, "float32")
    refmodel.assert_token_loop_matches(model, hf, steps=12 if SMALL else 32)


def test_decode_at_any_position_after_the_device_advanced_it(dev):
    """A decode step leaves the next position on the device (the advance op), so the host
    copies a position only when it differs: steps that repeat a position, go back, or follow
    a prefill must still run where they are asked, with either pick."""
    hf = refmodel.make_hf_model("gqa-tied", seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), dev, "float32")
    seq = list(refmodel.PROMPT)
    model.prefill(seq, 0)
    for pos, token, pick in [(7, 3, "argmax"), (8, 4, "logits"), (9, 1, "argmax"),
                             (9, 6, "argmax"), (5, 2, "logits"), (6, 9, "argmax")]:
        seq = seq[:pos] + [token]
        model.decode(pos, token=token, pick=pick)
        ref = refmodel.hf_logits(hf, seq)[-1]
        got = model.read_logits()
        assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref)), (pos, token, pick)
        if pick == "argmax":
            assert int(dev.read_async(model.picked_id(pos))()[0]) == int(np.argmax(got))
    model.prefill([4, 8], 2)                  # a prefill, then the step right after it
    seq = seq[:2] + [4, 8, 5]
    model.decode(4, token=5)
    ref = refmodel.hf_logits(hf, seq)[-1]
    assert np.max(np.abs(model.read_logits() - ref)) <= 1e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("settings", [(1.0, 0, 1.0, 0.0), (0.9, 0, 0.9, 0.0)])
def test_seeded_sampling_matches_cpu_numpy_fp32(dev, settings):
    """Sampled decode steps (replayed CUDA graphs on a GPU) draw the tokens cpu:numpy draws
    with the same seed. A random model's logits are flat, so most draws go to the
    whole-vocabulary search, over several of its programs."""
    hf = refmodel.make_hf_model("gqa-tied", seed=3, vocab=300 if SMALL else 5000)
    ckpt = refmodel.reference_checkpoint(hf)
    params = SamplingParams(*settings, seed=7)
    want = list(TokenLoop(Model.build(ckpt, get_device("cpu:numpy")), params).run([1, 4, 9], 8))
    got = list(TokenLoop(Model.build(ckpt, dev, "float32"), params).run([1, 4, 9], 8))
    assert got == want


@pytest.mark.skipif(SMALL, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", sorted(refmodel.CONFIGS))
def test_replayed_prefill_logits_match_transformers_fp32(dev, name, monkeypatch):
    """Prefills padded to a recorded length and replayed: lengths sharing a recording,
    chunked and continued prompts, and one near the end of the context (run eagerly)."""
    hf = refmodel.make_hf_model(name, seed=1)
    monkeypatch.setattr(model_mod, "PREFILL_CHUNK", 24)
    model = Model.build(refmodel.reference_checkpoint(hf), dev, "float32", ctx=64)
    ids = np.random.default_rng(0).integers(0, hf.config.vocab_size, 60).tolist()
    ref = refmodel.hf_logits(hf, ids)
    for parts in ([(0, 5)], [(0, 9)], [(0, 17)], [(0, 60)], [(0, 20), (20, 31)],
                  [(0, 56), (56, 60)]):
        for start, end in parts:
            model.prefill(ids[start:end], start)
        got, want = model.read_logits(), ref[end - 1]
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert err <= 1e-4, f"prompt {parts}: {err:.2e}"
    assert sorted(model._prefill_runners) == [16, 24]      # 56 + 16 > 64 ran eagerly


@pytest.mark.parametrize("name", sorted(refmodel.CONFIGS))
def test_model_int8_greedy_matches_transformers_on_int8_weights(dev, name):
    """--quant int8: q8_0 GEMVs and GEMMs through prefill and replayed decode steps."""
    hf = refmodel.make_hf_model(name, seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), dev, "float32", quant="int8")
    assert model.fmt == "q8_0"
    refmodel.assert_greedy_matches(model, refmodel.int8_hf_model(name, seed=1),
                                   steps=12 if SMALL else 32)
