"""The ops of core/ops.py on CuPy arrays: CUDA C kernels (kernels.cu) and cuBLAS.

Every kernel runs on the current CuPy stream (the device's own, see device.py), so a decode
step can be captured as a CUDA graph; nothing here allocates while a step runs, except
workspaces allocated once per shape and kept (the first, eager run of a step makes them).
One token's linear is a GEMV (a warp per row, 16-byte loads that bypass L1; RMSNorm,
SwiGLU and the residual add fused); more tokens go through cuBLAS (gemmEx, float32
accumulation).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

from polyllama.errors import DeviceError

from .device import BF16

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", BF16: "bf16"}
CUDA_TYPE = {"f32": 0, "f16": 2, "bf16": 14}       # cudaDataType: R_32F, R_16F, R_16BF
COMPUTE_32F = 68                                    # cublasComputeType_t CUBLAS_COMPUTE_32F
GEMM_DEFAULT = -1
OP_N, OP_T = 0, 1
BLOCK = 256
GEMV_ROWS = BLOCK // 32                             # a warp per row
ATTN_THREADS = 128                                  # ATTN_WARPS in kernels.cu
ATTN_MAX_HD = 256                                   # MAX_HD in kernels.cu
DECODE_THREADS = 128                                # DEC_WARPS in kernels.cu
DECODE_MAX_G = 8                                    # MAX_G: query heads per kv head
DECODE_MAX_SPLITS = 32                              # MAX_SPLITS
_ONE = np.ones(1, np.float32)
_ZERO = np.zeros(1, np.float32)
_workspaces: dict = {}      # per (device, shape, dtype, use); never freed: graphs hold them


@functools.lru_cache(maxsize=None)
def _module(device_id: int):
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=(Path(__file__).parent / "kernels.cu").read_text(),
                              options=("--std=c++17",))


def _fn(name: str, like):
    return _module(like.device.id).get_function(f"{name}_{SUFFIX[like.dtype]}")


def _i(v):
    return np.int32(v)


def _l(v):
    return np.int64(v)


def _stride(a, dim):
    """A stride in elements (CuPy keeps them in bytes)."""
    return a.strides[dim] // a.itemsize


def _launch(name, like, grid, block, *args):
    _fn(name, like)(tuple(grid), (block,), args)


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
    _launch("argmax", logits, (T,), 1024, out, logits, _i(V), _l(_stride(logits, 0)))


def advance(pos, ids, picked):
    _module(pos.device.id).get_function("advance")((1,), (1,), (pos, ids, picked,
                                                                _i(picked.shape[0])))


def _workspace(like, shape, dtype, use, zeroed=False):
    """A buffer allocated once per (device, shape, dtype, use): attention's split partials
    and arrival counters, a prefill's normed input or w1|w3 output."""
    key = (like.device.id, tuple(shape), np.dtype(dtype), use)
    if key not in _workspaces:
        with like.device:
            _workspaces[key] = (cupy.zeros if zeroed else cupy.empty)(shape, dtype=dtype)
    return _workspaces[key]


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id: int) -> int:
    return cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]


def attention(out, q, k, v, k_cache, v_cache, pos, scale):
    """The new keys and values go into the cache first. One token: (kv head, split) blocks,
    about one per multiprocessor, the last of a kv head merging (attention_decode in
    kernels.cu). Otherwise a (token, head) block walks the token's visible keys. The split
    count follows the cache length, not the position, so a recorded step replays at any
    position."""
    T, H, hd = q.shape
    S, KV, _ = k_cache.shape
    G = H // KV
    if hd > ATTN_MAX_HD:
        raise DeviceError(f"cuda:cupy attention takes head sizes up to {ATTN_MAX_HD}; this "
                          f"model's is {hd}: run it on cuda:triton or cpu:numpy")
    assert k_cache.flags.c_contiguous and v_cache.flags.c_contiguous
    _launch("cache_write", k, (T, -(-KV * hd // BLOCK)), BLOCK, k_cache, v_cache, k, v, pos,
            _i(KV), _i(hd), _l(_stride(k, 0)), _l(_stride(k, 1)), _l(_stride(v, 0)),
            _l(_stride(v, 1)), _l(_stride(k_cache, 0)))
    per = -(-hd // 32)
    if T == 1 and G <= DECODE_MAX_G and per in (1, 2, 4):
        splits = max(1, min(DECODE_MAX_SPLITS, _multiprocessors(q.device.id) // KV, S))
        part = _workspace(q, (H, splits, hd + 2), np.float32, "attention")
        counters = _workspace(q, (KV,), np.int32, "arrivals", zeroed=True)
        _launch(f"attention_decode{per}", q, (KV, splits), DECODE_THREADS, out, part, counters,
                q, k_cache, v_cache, pos, _i(H), _i(KV), _i(hd), np.float32(scale),
                _i(splits), _l(_stride(q, 1)), _l(_stride(out, 1)), _l(_stride(k_cache, 0)))
        return
    _launch("attention_prefill", q, (T, H), ATTN_THREADS, out, q, k_cache, v_cache, pos,
            _i(H), _i(KV), _i(hd), np.float32(scale), _l(_stride(q, 0)), _l(_stride(q, 1)),
            _l(_stride(out, 0)), _l(_stride(out, 1)), _l(_stride(k_cache, 0)))


def _vectorizable(x, w, g=None):
    """Whether the GEMV may read w's rows, x (and g) in 16-byte pieces."""
    per = 16 // w.itemsize
    aligned = all(a.data.ptr % 16 == 0 for a in (x, w) + ((g,) if g is not None else ()))
    return (w.shape[1] % per == 0 and _stride(w, 0) % per == 0 and aligned
            and _stride(x, 1) == 1)


def _check(x, W):
    if W.dtype != x.dtype or _stride(W, 1) != 1:
        raise ValueError(f"cuda:cupy linear needs a row-major weight of the input's dtype "
                         f"({W.dtype}, strides {W.strides})")


def _run(out, x, W, residual=None):
    T, K = x.shape
    N = W.shape[0]
    _check(x, W)
    if T == 1:
        _launch("gemv", out, (-(-N // GEMV_ROWS),), BLOCK, out, x, W,
                residual if residual is not None else np.uint64(0), _i(N), _i(K),
                _l(_stride(W, 0)), _i(_vectorizable(x, W)))
        return
    if residual is not None and residual.data.ptr != out.data.ptr:
        out[...] = residual
    # row-major out[T, N] = x[T, K] W[N, K]^T is column-major out^T = W^T^T x^T
    kind = CUDA_TYPE[SUFFIX[x.dtype]]
    beta = _ONE if residual is not None else _ZERO
    cublas.gemmEx(cupy.cuda.device.get_cublas_handle(), OP_T, OP_N, N, T, K, _ONE.ctypes.data,
                  W.data.ptr, kind, _stride(W, 0), x.data.ptr, kind, _stride(x, 0),
                  beta.ctypes.data, out.data.ptr, kind, _stride(out, 0), COMPUTE_32F,
                  GEMM_DEFAULT)


def _normed_gemv(name, out, x, weight, eps, W, N):
    K = x.shape[1]
    _check(x, W)
    _launch(name, out, (-(-N // GEMV_ROWS),), BLOCK, out, x, weight, W, _i(N), _i(K),
            _l(_stride(W, 0)), _i(_vectorizable(x, W, weight)), np.float32(eps))


def linear(out, x, w):
    _run(out, x, w.parts["w"])


def linear_add(out, x, w, residual):
    _run(out, x, w.parts["w"], residual)


def rmsnorm_linear(out, x, weight, eps, w):
    W = w.parts["w"]
    if x.shape[0] == 1:
        _normed_gemv("gemv_norm", out, x, weight, eps, W, W.shape[0])
        return
    h = _workspace(x, x.shape, x.dtype, "normed")
    rmsnorm(h, x, weight, eps)
    _run(out, h, W)


def rmsnorm_swiglu(out, x, weight, eps, w):
    W = w.parts["w"]
    T, F = out.shape
    if T == 1:
        _normed_gemv("gemv_swiglu", out, x, weight, eps, W, F)
        return
    h = _workspace(x, x.shape, x.dtype, "normed")
    gu = _workspace(x, (T, 2 * F), x.dtype, "gate|up")
    rmsnorm(h, x, weight, eps)
    _run(gu, h, W)
    silu_mul(out, gu[:, :F], gu[:, F:])
