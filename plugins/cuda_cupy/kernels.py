"""The ops of core/ops.py on CuPy arrays: CUDA C kernels (kernels.cu, gemv.cu) and cuBLAS.

Every kernel runs on the current CuPy stream (the device's own, see device.py), so a decode
step can be captured as a CUDA graph; nothing here allocates while a step runs, except
workspaces allocated once per shape and kept (the first, eager run of a step makes them).
While a step is being recorded, kernels launch with programmatic dependent launch where the
GPU has it (launch.py), so each one loads its weights while the one before drains.
One token's linear is a GEMV (gemv.cu; RMSNorm, SwiGLU and the residual add fused); more
tokens go through cuBLAS (gemmEx, float32 accumulation). q8_0 weights (`--quant int8`) have
a GEMV of their own (gemv_q8) and, for more tokens, are dequantized for the same GEMM.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from polyllama.errors import DeviceError
from polyllama.plugins.int8.pack import FMT as Q8_0

from .device import BF16
from .launch import launch_pdl

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", BF16: "bf16"}
CUDA_TYPE = {"f32": 0, "f16": 2, "bf16": 14}       # cudaDataType: R_32F, R_16F, R_16BF
COMPUTE_32F = 68                                    # cublasComputeType_t CUBLAS_COMPUTE_32F
GEMM_DEFAULT = -1
OP_N, OP_T = 0, 1
CUDA_NAME = {"f32": "float", "f16": "__half", "bf16": "__nv_bfloat16"}
BLOCK = 256
GEMV_THREADS = 128
GEMV_MAX_PIECES = 16        # 16-byte weight pieces a GEMV thread holds (64 registers)
LIMITS = {                  # the kernels' sizes, given to NVRTC as -D options
    "ATTN_WARPS": 4,        # prefill attention: warps a (token, head) block
    "PF_KEYS": 64,          # prefill attention on tensor cores: keys a shared-memory tile
    "MAX_HD": 256,          # largest head size
    "DEC_WARPS": 8,         # decode attention: warps a (kv head, split) block
    "MAX_G": 8,             # query heads per kv head it takes
    "MAX_SPLITS": 32,       # splits of the cache it merges
    "ARGMAX_CHUNK": 4096,   # logits an argmax block takes
    "ARGMAX_THREADS": 256,
    "SAMPLE_THREADS": 1024, # the sampling block; also the largest top-k sorted in it
    "CANDIDATE_BLOCKS": 16, # slices of the vocabulary handing a top-k up to 64 to it
}
OPTIONS = ("--std=c++17",) + tuple(f"-D{k}={v}" for k, v in LIMITS.items())
_ONE = np.ones(1, np.float32)
_ZERO = np.zeros(1, np.float32)
_NULL = np.uint64(0)                                # a null pointer argument
_workspaces: dict = {}      # per (device, shape, dtype, use); never freed: graphs hold them


def _source(name: str) -> str:
    here = Path(__file__).parent
    return (here / "common.cuh").read_text() + (here / name).read_text()


@functools.lru_cache(maxsize=None)
def _module(device_id: int):
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=_source("kernels.cu"), options=OPTIONS)


@functools.lru_cache(maxsize=None)
def _gemv_function(device_id: int, instance: str):
    """One instance of the gemv template, compiled when first asked for."""
    with cupy.cuda.Device(device_id):
        module = cupy.RawModule(code=_source("gemv.cu"), options=OPTIONS,
                                name_expressions=(instance,))
        return module.get_function(instance)


@functools.lru_cache(maxsize=None)
def _has_pdl(device_id: int) -> bool:
    """Compute capability 9.0 on; POLYLLAMA_NO_PDL=1 turns it off (for comparison)."""
    return (int(cupy.cuda.Device(device_id).compute_capability) >= 90
            and os.environ.get("POLYLLAMA_NO_PDL", "0") == "0")


def _call(function, device_id: int, grid, block: int, args):
    """function on the current stream: with PDL while a step is being recorded (replays are
    what it speeds up; eager launches go through CuPy, which is cheaper to call)."""
    stream = cupy.cuda.get_current_stream()
    if stream.is_capturing() and _has_pdl(device_id):
        launch_pdl(function, grid, block, args, stream)
    else:
        function(tuple(grid), (block,), args)


def _i(v):
    return np.int32(v)


def _l(v):
    return np.int64(v)


def _stride(a, dim):
    """A stride in elements (CuPy keeps them in bytes)."""
    return a.strides[dim] // a.itemsize


def _launch(name, like, grid, block, *args):
    device_id = like.device.id
    _call(_module(device_id).get_function(f"{name}_{SUFFIX[like.dtype]}"), device_id, grid,
          block, args)


def embedding(out, table, ids):
    T, D = out.shape
    _launch("embedding", out, (T, -(-D // BLOCK)), BLOCK, out, table, ids, _i(D),
            _l(_stride(out, 0)), _l(_stride(table, 0)))


def rmsnorm(out, x, weight, eps):
    T, D = x.shape
    _launch("rmsnorm", out, (T,), BLOCK, out, x, weight, _i(D), np.float32(eps),
            _l(_stride(out, 0)), _l(_stride(x, 0)))


def rope(q, k, pos, cos, sin):
    T, H, hd = q.shape
    KV = k.shape[1]
    assert _stride(q, 2) == 1 and _stride(k, 2) == 1, "rope needs unit stride along the head"
    _launch("rope", q, (T, H + KV), max(32, hd // 2), q, k, pos, cos, sin, _i(H), _i(hd),
            _l(_stride(q, 0)), _l(_stride(q, 1)), _l(_stride(k, 0)), _l(_stride(k, 1)),
            _l(_stride(cos, 0)))


def silu_mul(out, gate, up):
    T, N = out.shape
    _launch("silu_mul", out, (T, -(-N // BLOCK)), BLOCK, out, gate, up, _i(N),
            _l(_stride(out, 0)), _l(_stride(gate, 0)), _l(_stride(up, 0)))


def add(out, a, b):
    T, N = out.shape
    _launch("add", out, (T, -(-N // BLOCK)), BLOCK, out, a, b, _i(N), _l(_stride(out, 0)),
            _l(_stride(a, 0)), _l(_stride(b, 0)))


def argmax(out, logits):
    T, V = logits.shape
    chunks = -(-V // LIMITS["ARGMAX_CHUNK"])
    best_v = _workspace(logits, (T, chunks), np.float32, "argmax values")
    best_i = _workspace(logits, (T, chunks), np.int32, "argmax indices")
    counters = _workspace(logits, (T,), np.int32, "argmax arrivals", zeroed=True)
    _launch("argmax", logits, (T, chunks), LIMITS["ARGMAX_THREADS"], out, best_v, best_i,
            counters, logits, _i(V), _l(_stride(logits, 0)))


def sample(out, logits, params, u):
    """One token drawn as core/reference.py's sample draws it (kernels.cu `sample`, one
    block, after sample_candidates for a small top-k): no host round-trip in a sampled
    decode step."""
    V, threads = logits.shape[1], LIMITS["SAMPLE_THREADS"]
    candidates = _workspace(logits, (threads,), np.uint64, "sampling candidates")
    _launch("sample_candidates", logits, (LIMITS["CANDIDATE_BLOCKS"],), threads, candidates,
            logits, params, _i(V))
    _launch("sample", logits, (1,), threads, out, candidates, logits, params, u, _i(V))


def advance(pos, ids, picked):
    device_id = pos.device.id
    _call(_module(device_id).get_function("advance"), device_id, (1,), 1,
          (pos, ids, picked, _i(picked.shape[0])))


def _workspace(like, shape, dtype, use, zeroed=False):
    """A buffer allocated once per (device, shape, dtype, use): the split partials and
    arrival counters of attention and argmax, a prefill's normed input, w1|w3 output or
    dequantized weight."""
    key = (like.device.id, tuple(shape), np.dtype(dtype), use)
    if key not in _workspaces:
        with like.device:
            _workspaces[key] = (cupy.zeros if zeroed else cupy.empty)(shape, dtype=dtype)
    return _workspaces[key]


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id: int) -> int:
    return cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]


@functools.lru_cache(maxsize=None)
def _no_rotation(device_id: int):
    """cos and sin tables (one row, read with stride 0) that rotate by nothing."""
    with cupy.cuda.Device(device_id):
        half = LIMITS["MAX_HD"] // 2
        return cupy.ones((1, half), np.float32), cupy.zeros((1, half), np.float32)


def rope_attention(out, q, k, v, k_cache, v_cache, pos, cos, sin, scale):
    """One token: attention_decode rotates q and the new key itself, so no rope kernel runs
    before it. More tokens: the cache write rotates the keys and attention_prefill_mma the
    queries; where that kernel does not take the prompt, rope runs first."""
    if q.shape[0] == 1 and _decodes(q, k_cache):
        _attention_decode(out, q, k, v, k_cache, v_cache, pos, cos, sin, _stride(cos, 0), scale)
        return
    if q.shape[0] > 1 and _prefills_on_tensor_cores(q, k_cache, v_cache):
        _prefill(out, q, k, v, k_cache, v_cache, pos, cos, sin, _stride(cos, 0), scale)
        return
    rope(q, k, pos, cos, sin)
    attention(out, q, k, v, k_cache, v_cache, pos, scale)


def attention(out, q, k, v, k_cache, v_cache, pos, scale):
    """One token: attention_decode (kernels.cu). More tokens: their keys and values go into
    the cache first, then attention_prefill_mma takes blocks of 64 queries on the tensor
    cores, or (float32, other head sizes) a (token, head) block walks the token's visible
    keys."""
    if q.shape[0] == 1 and _decodes(q, k_cache):
        cos, sin = _no_rotation(q.device.id)
        _attention_decode(out, q, k, v, k_cache, v_cache, pos, cos, sin, 0, scale)
        return
    cos, sin = _no_rotation(q.device.id)
    _prefill(out, q, k, v, k_cache, v_cache, pos, cos, sin, 0, scale)


def _prefill(out, q, k, v, k_cache, v_cache, pos, cos, sin, s_tab, scale):
    """More tokens: the keys (rotated by the tables) and values into the cache, then the
    attention of the queries (rotated too by attention_prefill_mma; the scalar kernel takes
    them as they are)."""
    _check_attention(q, k, v, k_cache, v_cache)
    T, H, hd = q.shape
    KV = k_cache.shape[1]
    _launch("cache_write", k, (T, -(-KV * hd // BLOCK)), BLOCK, k_cache, v_cache, k, v, pos,
            cos, sin, _i(KV), _i(hd), _l(_stride(k, 0)), _l(_stride(k, 1)), _l(_stride(v, 0)),
            _l(_stride(v, 1)), _l(_stride(k_cache, 0)), _l(s_tab))
    strides = (_l(_stride(q, 0)), _l(_stride(q, 1)), _l(_stride(out, 0)), _l(_stride(out, 1)),
               _l(_stride(k_cache, 0)))
    if _prefills_on_tensor_cores(q, k_cache, v_cache):
        _launch(f"attention_prefill_mma{hd}", q, (-(-T // 64), H), 128, out, q, k_cache, v_cache,
                pos, cos, sin, _i(T), _i(H), _i(KV), np.float32(scale * np.log2(np.e)),
                *strides, _l(s_tab))
        return
    _launch("attention_prefill", q, (T, H), 32 * LIMITS["ATTN_WARPS"], out, q, k_cache,
            v_cache, pos, _i(H), _i(KV), _i(hd), np.float32(scale), *strides)


def _prefills_on_tensor_cores(q, k_cache, v_cache):
    """Whether attention_prefill_mma takes this prompt: 16-bit types, heads of 64 or 128, and
    cache rows it can stage in 16-byte pieces."""
    return (q.itemsize == 2 and q.shape[2] in (64, 128)
            and all(c.data.ptr % 16 == 0 for c in (k_cache, v_cache))
            and k_cache.strides[0] % 16 == 0)


def _check_attention(q, k, v, k_cache, v_cache):
    hd = q.shape[2]
    if hd > LIMITS["MAX_HD"]:
        raise DeviceError(f"cuda:cupy attention takes head sizes up to {LIMITS['MAX_HD']}; "
                          f"this model's is {hd}: run it on cuda:triton or cpu:numpy")
    assert k_cache.flags.c_contiguous and v_cache.flags.c_contiguous
    assert all(_stride(a, 2) == 1 for a in (q, k, v)), "attention needs unit stride in heads"


def _decodes(q, k_cache):
    """Whether attention_decode takes this shape: query heads per kv head up to MAX_G, head
    sizes 32, 64 or 128 lanes' worth."""
    H, hd = q.shape[1:]
    return H // k_cache.shape[1] <= LIMITS["MAX_G"] and -(-hd // 32) in (1, 2, 4)


def _attention_decode(out, q, k, v, k_cache, v_cache, pos, cos, sin, s_tab, scale):
    """(kv head, split) blocks, about one per multiprocessor, the last of a kv head merging.
    The split count follows the cache length, not the position, so a recorded step replays
    at any position."""
    _check_attention(q, k, v, k_cache, v_cache)
    _, H, hd = q.shape
    S, KV, _ = k_cache.shape
    splits = max(1, min(LIMITS["MAX_SPLITS"], _multiprocessors(q.device.id) // KV, S))
    part = _workspace(q, (H, splits, hd + 2), np.float32, "attention")
    counters = _workspace(q, (KV,), np.int32, "arrivals", zeroed=True)
    _launch(f"attention_decode{-(-hd // 32)}", q, (KV, splits), 32 * LIMITS["DEC_WARPS"], out,
            part, counters, q, k, v, k_cache, v_cache, pos, cos, sin, _i(H), _i(KV), _i(hd),
            np.float32(scale), _i(splits), _l(_stride(q, 1)), _l(_stride(k, 1)),
            _l(_stride(v, 1)), _l(_stride(out, 1)), _l(_stride(k_cache, 0)), _l(s_tab))


def _vectorizable(x, w, g=None):
    """Whether the GEMV may read w's rows, x (and g) in 16-byte pieces (of 16 values for
    int8 rows)."""
    per = 16 // w.itemsize
    aligned = all(a.data.ptr % 16 == 0 for a in (x, w) + ((g,) if g is not None else ()))
    return w.shape[1] % per == 0 and _stride(w, 0) % per == 0 and aligned


def _check(x, W, dtype=None):
    """W row-major in dtype (the input's unless given), x with unit stride along K."""
    if W.dtype != (dtype or x.dtype) or _stride(W, 1) != 1 or _stride(x, 1) != 1:
        raise ValueError(f"cuda:cupy linear needs a row-major weight of the input's dtype "
                         f"(int8 for q8_0) and an input with unit stride along K (weight "
                         f"{W.dtype}, strides {W.strides}; input {x.dtype}, strides {x.strides})")


def _gemv_config(N, K, swiglu, itemsize):
    """(threads, ROWS, VECS, TILED) of gemv.cu for an output of N rows over K columns: 4 weight
    rows to a block (2 gate and 2 up rows for SwiGLU), loaded whole where they fit
    GEMV_MAX_PIECES; longer rows in tiles of one piece a thread for twice the threads, two
    tiles held at once, and half the rows for wide outputs. Swept in whole decode steps
    (TinyLlama, Llama-2-7B)."""
    threads = GEMV_THREADS
    held = 2 if swiglu else 1                       # weight rows an output row reads
    whole = -(-K // (threads * (16 // itemsize)))
    if 4 * whole <= GEMV_MAX_PIECES:
        return threads, 4 // held, whole, False
    return 2 * threads, (4 if N <= 2048 else 2) // held, 1, True


def _gemv(out, x, w, N, residual=None, g=None, eps=0.0, swiglu=False):
    """One token: out[0, :N] (see gemv.cu for what NORM and SWIGLU fuse)."""
    if w.fmt == Q8_0:
        _gemv_q8(out, x, w, N, residual, g, eps, swiglu)
        return
    W = w.parts["w"]
    K = x.shape[1]
    _check(x, W)
    threads, rows, vecs, tiled = _gemv_config(N, K, swiglu, W.itemsize)
    flags = (g is not None, swiglu, rows, vecs, _vectorizable(x, W, g), tiled)
    _call_gemv("gemv", flags, x, W, (-(-N // rows),), threads,
               (out, x, _NULL if g is None else g, W, _NULL if residual is None else residual,
                _i(N), _i(K), _l(_stride(W, 0)), np.float32(eps)))


def _gemv_q8_rows(K, swiglu):
    """ROWS of gemv_q8 (GEMV_THREADS threads, a 16-value piece of each weight row a thread
    and tile): 4 weight rows to a block where a row fits one tile, 8 where it takes more.
    Swept in whole decode steps (H100, perf-notes): more pieces a thread, other thread counts
    or rows were up to 2.6x slower on TinyLlama, Llama-3.2-1B and Llama-2-7B."""
    rows = 4 if K <= GEMV_THREADS * 16 else 8
    return rows // 2 if swiglu else rows


def _gemv_q8(out, x, w, N, residual, g, eps, swiglu):
    """One token over q8_0 weights: gemv_q8 (gemv.cu)."""
    Q, S, group = w.parts["q"], w.parts["s"], w.meta["group"]
    K = x.shape[1]
    _check(x, Q, np.dtype(np.int8))
    rows = _gemv_q8_rows(K, swiglu)
    flags = (g is not None, swiglu, rows, _vectorizable(x, Q, g), group % 16 == 0)
    _call_gemv("gemv_q8", flags, x, Q, (-(-N // rows),), GEMV_THREADS,
               (out, x, _NULL if g is None else g, Q, S, _NULL if residual is None else residual,
                _i(N), _i(K), _l(_stride(Q, 0)), _l(_stride(S, 0)), _i(group), np.float32(eps)))


def _call_gemv(template, flags, x, W, grid, threads, args):
    """The instance of a gemv.cu template for x's storage type and these flags."""
    instance = (f"{template}<{CUDA_NAME[SUFFIX[x.dtype]]}, "
                + ", ".join(str(f).lower() for f in flags) + ">")
    device_id = W.device.id
    _call(_gemv_function(device_id, instance), device_id, grid, threads, args)


def _dense(w, like):
    """w's rows in like's dtype: dense weights as they are; q8_0 ones dequantized into a
    workspace (one per shape, kept), for prefill's GEMM."""
    if w.fmt != Q8_0:
        return w.parts["w"]
    Q, S = w.parts["q"], w.parts["s"]
    N, K = Q.shape
    W = _workspace(like, (N, K), like.dtype, "dequantized")
    vec = (K % 16 == 0 and _stride(Q, 0) % 16 == 0 and _stride(W, 0) % 16 == 0
           and Q.data.ptr % 16 == 0 and W.data.ptr % 16 == 0)
    _launch("dequantize_q8", W, (N, -(-K // (16 * BLOCK))), BLOCK, W, Q, S, _i(K),
            _i(w.meta["group"]), _i(vec), _l(_stride(W, 0)), _l(_stride(Q, 0)),
            _l(_stride(S, 0)))
    return W


def _run(out, x, w, residual=None):
    T, K = x.shape
    if T == 1:
        _gemv(out, x, w, w.shape[0], residual)
        return
    W = _dense(w, x)
    N = W.shape[0]
    _check(x, W)
    if residual is not None and residual.data.ptr != out.data.ptr:
        out[...] = residual
    # row-major out[T, N] = x[T, K] W[N, K]^T is column-major out^T = W^T^T x^T
    kind = CUDA_TYPE[SUFFIX[x.dtype]]
    beta = _ONE if residual is not None else _ZERO
    cublas.gemmEx(cupy.cuda.device.get_cublas_handle(), OP_T, OP_N, N, T, K, _ONE.ctypes.data,
                  W.data.ptr, kind, _stride(W, 0), x.data.ptr, kind, _stride(x, 0),
                  beta.ctypes.data, out.data.ptr, kind, _stride(out, 0), COMPUTE_32F,
                  GEMM_DEFAULT)


def linear(out, x, w):
    _run(out, x, w)


def linear_add(out, x, w, residual):
    _run(out, x, w, residual)


def rmsnorm_linear(out, x, weight, eps, w):
    if x.shape[0] == 1:
        _gemv(out, x, w, w.shape[0], g=weight, eps=eps)
        return
    h = _workspace(x, x.shape, x.dtype, "normed")
    rmsnorm(h, x, weight, eps)
    _run(out, h, w)


def rmsnorm_swiglu(out, x, weight, eps, w):
    T, F = out.shape
    if T == 1:
        _gemv(out, x, w, F, g=weight, eps=eps, swiglu=True)
        return
    h = _workspace(x, x.shape, x.dtype, "normed")
    gu = _workspace(x, (T, 2 * F), x.dtype, "gate|up")
    rmsnorm(h, x, weight, eps)
    _run(gu, h, w)
    silu_mul(out, gu[:, :F], gu[:, F:])
