"""The ops of core/ops.py on CuPy arrays: CUDA C kernels (kernels.cu) and cuBLAS.

Every kernel runs on the current CuPy stream (the device's own, see device.py), so a decode
step can be captured as a CUDA graph; nothing here allocates while a step runs, except the
attention's split partials, allocated once per shape and kept. One token's linear is a GEMV
(a warp per row, 16-byte loads that bypass L1); more tokens go through cuBLAS (gemmEx,
float32 accumulation).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cupy
import numpy as np
from cupy_backends.cuda.libs import cublas

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
ATTN_MAX_SPLITS = 64
ATTN_SPLIT_KEYS = 32                                # cache rows per decode split, up to 64 splits
_ONE = np.ones(1, np.float32)
_ZERO = np.zeros(1, np.float32)
_partials: dict = {}        # per (device, shape); never freed, so graphs may hold them


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


def _launch(name, like, grid, block, *args):
    _fn(name, like)(tuple(grid), (block,), args)


def embedding(out, table, ids):
    T, D = out.shape
    _launch("embedding", out, (T, -(-D // BLOCK)), BLOCK, out, table, ids, _i(D),
            _l(out.strides[0] // out.itemsize), _l(table.strides[0] // table.itemsize))


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


def _stride(a, dim):
    return a.strides[dim] // a.itemsize


def _partials_for(device_id, T, H, splits, hd):
    key = (device_id, T, H, splits, hd)
    if key not in _partials:
        with cupy.cuda.Device(device_id):
            _partials[key] = cupy.empty(T * H * splits * (hd + 2), dtype=np.float32)
    return _partials[key]


def attention(out, q, k, v, k_cache, v_cache, pos, scale):
    """Split-K over the cached keys: (token, head, split) programs write partial softmaxes,
    a second kernel merges them. The split count follows the cache length, not the position,
    so a recorded step replays at any position."""
    T, H, hd = q.shape
    S, KV, _ = k_cache.shape
    if hd > ATTN_MAX_HD:
        raise ValueError(f"cuda:cupy attention takes head sizes up to {ATTN_MAX_HD}, not {hd}")
    assert k_cache.flags.c_contiguous and v_cache.flags.c_contiguous
    _launch("cache_write", k, (T,), BLOCK, k_cache, v_cache, k, v, pos, _i(KV), _i(hd),
            _l(_stride(k, 0)), _l(_stride(k, 1)), _l(_stride(v, 0)), _l(_stride(v, 1)),
            _l(_stride(k_cache, 0)))
    splits = max(1, min(ATTN_MAX_SPLITS, S // ATTN_SPLIT_KEYS)) if T == 1 else 1
    part = _partials_for(q.device.id, T, H, splits, hd)
    _launch("attention_split", q, (T, H, splits), ATTN_THREADS, part, q, k_cache, v_cache, pos,
            _i(H), _i(KV), _i(hd), np.float32(scale), _i(splits), _l(_stride(q, 0)),
            _l(_stride(q, 1)), _l(_stride(k_cache, 0)))
    _launch("attention_merge", out, (T, H), max(32, min(hd, BLOCK)), out, part, _i(H), _i(hd),
            _i(splits), _l(_stride(out, 0)), _l(_stride(out, 1)))


def _vectorizable(x, w):
    """Whether the GEMV may read w's rows and x in 16-byte pieces."""
    per = 16 // w.itemsize
    K = w.shape[1]
    return (K % per == 0 and _stride(w, 0) % per == 0 and w.data.ptr % 16 == 0
            and x.data.ptr % 16 == 0 and _stride(x, 1) == 1)


def _run(out, x, W, residual=None):
    T, K = x.shape
    N = W.shape[0]
    if W.dtype != x.dtype or _stride(W, 1) != 1:
        raise ValueError(f"cuda:cupy linear needs a row-major weight of the input's dtype "
                         f"({W.dtype}, strides {W.strides})")
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


def linear(out, x, w):
    _run(out, x, w.parts["w"])


def linear_add(out, x, w, residual):
    _run(out, x, w.parts["w"], residual)
