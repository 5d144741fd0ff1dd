"""linear, rmsnorm_linear, linear_add, rmsnorm_linear_rope, rmsnorm_swiglu and
rmsnorm_linear_argmax: out = [residual +] norm?(x) @ W^T (rmsnorm_swiglu: silu(gate) * up of
the two halves of that product; rmsnorm_linear_rope: the q and k heads of that product
rotated; rmsnorm_linear_argmax: also the index of its largest output).

One token (decode) streams W once through a GEMV whose programs each own a few rows: it is
bound by memory bandwidth, so a program loads its rows whole, or walks them in tiles with
the next tile of W and of x in flight; the first tile is issued before it waits for the
previous kernel (PDL). Weights are read once per step, so their loads are marked
evict-first (L2 keeps activations and the KV cache). The RMSNorm of the input is fused
(x * weight, the row's inverse RMS applied to the sum), so are the residual add, the SwiGLU
(a program owns matching gate and up rows) and RoPE (a program owns whole row pairs, and
the executor's rope pairs are adjacent: no rope kernel and no link to it), and so is the
greedy pick (each program offers its rows' largest argmax key to one word). More tokens
(prefill) go through a tiled tl.dot GEMM; there the RMSNorm runs first into a scratch
buffer, since scaling the tiles in registers would keep them off the pipelined
shared-memory path of the tensor cores. In 16-bit dtypes the GEMM is persistent (a program
per multiprocessor walks the output tiles) and its operand tiles arrive by TMA (tensor
descriptors): on an H100, 590-680 TFLOP/s on Llama-2-7B's prefill shapes against 510-560
for per-tile programs loading through pointers, which stay for float32, for rows whose
stride TMA cannot take, and for up to 128 rows (there they were faster).

Weights in q8_0 (`--quant int8`, layout in plugins/int8/pack.py: int8 rows, one float32
scale per group of GROUP values) stream half the bytes: their GEMV reads [rows, values]
int8 tiles as the dense one does (gate and up rows alternating for the SwiGLU), sums each
group of a tile's products and scales the group sums. Its normed input is rounded to the
input dtype, as an unfused RMSNorm would store it: moving x into the tile's layout (through
shared memory) then costs half what float32 would, 5-10% of these GEMVs. For more tokens
the matrix is dequantized into a scratch buffer for the dense GEMM.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from polyllama.ops import DENSE, Weight
from polyllama.plugins.int8.pack import FMT as Q8_0

from .device import hopper, interpreting, multiprocessors, pdl_enabled
from .kernels import pdl_start, rmsnorm, silu_mul
from .kernels import rope as rope_kernel
from .sampling import _order_key, argmax, argmax_key, id_bits, pick_key

_scratch: dict = {}       # prefill intermediates (see _scratch_for)
_outgrown: list = []      # scratch a larger one replaced: recorded prefills still use it
ONE_TILE_K = 4096
Q8_TILE_K = 1024
TMA_MIN_ROWS = 129        # fewer rows: per-tile programs loading through pointers are faster


@triton.jit
def _gemv_kernel(out_ptr, x_ptr, w_ptr, g_ptr, r_ptr, pos_ptr, cos_ptr, sin_ptr, key_ptr,
                 copy_ptr, N, K, s_w, eps, s_tab, ROT, HD, NORM: tl.constexpr,
                 ADD: tl.constexpr, SWIGLU: tl.constexpr, ROPE: tl.constexpr,
                 ARGMAX: tl.constexpr, IDB: tl.constexpr, COPY: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr,
                 EARLY_RES: tl.constexpr, PDL: tl.constexpr):
    """SWIGLU: W holds 2N rows (gate, then up); out = silu(gate) * up, N wide.
    ROPE: outputs below ROT are rotated in pairs (see _rope_factors).
    COPY: the outputs are stored to copy_ptr too.
    ONE_TILE (K <= BLOCK_K): the program's whole weight block loads before the PDL wait;
    else it walks K in tiles, the first loaded before the wait.
    EARLY_RES: the residual loads right after the wait, else after the row sums."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * s_w
    u_rows = w_rows + N.to(tl.int64) * s_w
    rmask = rows[:, None] < N
    w = _w_tile(w_rows, cols, rmask, K)
    if SWIGLU:
        u = _w_tile(u_rows, cols, rmask, K)
    cos_t, sin_t = _rope_factors(pos_ptr, cos_ptr, sin_ptr, s_tab, tl.program_id(0) * BLOCK_N,
                                 ROT, HD, BLOCK_N, ROPE)
    pdl_start(PDL)                  # weights depend on no kernel: they stream while it drains
    if EARLY_RES:
        res = _residual(r_ptr, rows, N, ADD)
    if ONE_TILE:
        x, ss = _x_tile(x_ptr, g_ptr, cols, K, NORM)
        acc = w.to(tl.float32) * x[None, :]
        if SWIGLU:
            acc_u = u.to(tl.float32) * x[None, :]
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        ss = tl.zeros([BLOCK_K], tl.float32)
        x, xx = _x_tile(x_ptr, g_ptr, cols, K, NORM)
        for k0 in range(0, K, BLOCK_K):
            nxt = k0 + BLOCK_K + cols   # the next tiles of W and x load while this one is summed
            w_next = _w_tile(w_rows, nxt, rmask, K)
            if SWIGLU:
                u_next = _w_tile(u_rows, nxt, rmask, K)
            x_next, xx_next = _x_tile(x_ptr, g_ptr, nxt, K, NORM)
            ss += xx
            acc += w.to(tl.float32) * x[None, :]
            w = w_next
            if SWIGLU:
                acc_u += u.to(tl.float32) * x[None, :]
                u = u_next
            x, xx = x_next, xx_next
    y = tl.sum(acc, axis=1)
    y_u = y
    if SWIGLU:
        y_u = tl.sum(acc_u, axis=1)
    if not EARLY_RES:
        res = _residual(r_ptr, rows, N, ADD)
    y = _epilogue(out_ptr, key_ptr, res, rows, N, y, y_u, tl.sum(ss, axis=0), K, eps, cos_t,
                  sin_t, NORM, ADD, SWIGLU, ROPE, ARGMAX, IDB, BLOCK_N)
    if COPY:
        tl.store(copy_ptr + rows, y, mask=rows < N)


@triton.jit
def _offer_argmax(key_ptr, y, rows, N, IDB: tl.constexpr):
    """Raise the argmax key (see sampling.py) to the largest order key of the outputs y
    (as stored) of the program's rows."""
    keys = tl.where(rows < N, _order_key(y.to(tl.float32), rows, IDB, 0), -1)
    tl.atomic_max(key_ptr, tl.max(keys, axis=0), sem="relaxed")


@triton.jit
def _w_tile(rows_ptr, k, rmask, K):
    """Weight columns k of the program's rows, read once a step (evict first)."""
    return tl.load(rows_ptr + k[None, :], mask=rmask & (k[None, :] < K), other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _x_tile(x_ptr, g_ptr, k, K, NORM: tl.constexpr):
    """Input columns k as float32, times the RMSNorm weight when NORM, and their squares."""
    x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    if NORM:
        return x * tl.load(g_ptr + k, mask=k < K, other=0.0).to(tl.float32), x * x
    return x, x * x


@triton.jit
def _residual(r_ptr, rows, N, ADD: tl.constexpr):
    """The residual rows to add (float32). Loaded after the row sums, it costs a round trip of
    its own (the sums end at a barrier); loaded right after the PDL wait, it shares the
    input's (see _early_residual)."""
    if ADD:
        res = tl.load(r_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    else:
        res = 0.0
    return res


@triton.jit
def _rope_factors(pos_ptr, cos_ptr, sin_ptr, s_tab, first, ROT, HD, BLOCK_N: tl.constexpr,
                  ROPE: tl.constexpr):
    """cos and sin for each pair of the program's output rows (first + 2i, first + 2i + 1):
    with ROPE, the rope op's angle for pair (row % HD) / 2 at position pos for the rows below
    ROT (the query and key heads of a qkv projection), no turn (1, 0) for the others. The
    tables and the position are written before the step, so they load before the PDL wait."""
    if ROPE:
        pair_rows = first + 2 * tl.arange(0, BLOCK_N // 2)
        at = tl.load(pos_ptr).to(tl.int64) * s_tab + (pair_rows % HD) // 2
        turned = pair_rows < ROT
        cos_t = tl.load(cos_ptr + at, mask=turned, other=1.0)
        sin_t = tl.load(sin_ptr + at, mask=turned, other=0.0)
    else:
        cos_t, sin_t = 1.0, 0.0
    return cos_t, sin_t


@triton.jit
def _epilogue(out_ptr, key_ptr, res, rows, N, y, y_u, ss, K, eps, cos_t, sin_t,
              NORM: tl.constexpr, ADD: tl.constexpr, SWIGLU: tl.constexpr, ROPE: tl.constexpr,
              ARGMAX: tl.constexpr, IDB: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row sums y (and y_u, the up half) to outputs: RMSNorm scale, RoPE (cos_t and sin_t
    from _rope_factors), SwiGLU, residual add (res from _residual); with ARGMAX the stored
    outputs' largest argmax key is offered to key_ptr. Returns the outputs as stored."""
    if NORM:
        inv = tl.rsqrt(ss / K + eps)
        y = y * inv
        if SWIGLU:
            y_u = y_u * inv
    if ROPE:
        even, odd = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        y = tl.reshape(tl.join(even * cos_t - odd * sin_t, even * sin_t + odd * cos_t),
                       (BLOCK_N,))
    if SWIGLU:
        y = y * tl.sigmoid(y) * y_u
    if ADD:
        y += res
    y = y.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows, y, mask=rows < N)
    if ARGMAX:
        _offer_argmax(key_ptr, y, rows, N, IDB)
    return y


@triton.jit
def _q8_tile(q_rows, s_rows, k0, K, rmask, GROUP: tl.constexpr, BLOCK_K: tl.constexpr,
             POW2: tl.constexpr):
    """int8 values [rows, BLOCK_K] from column k0 on, and their scales: one per group
    [rows, BLOCK_K // GROUP] when GROUP is a power of 2, else one per value."""
    k = k0 + tl.arange(0, BLOCK_K)
    q = tl.load(q_rows[:, None] + k[None, :], mask=rmask[:, None] & (k[None, :] < K), other=0,
                eviction_policy="evict_first")
    if POW2:
        g = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        smask = rmask[:, None] & (g[None, :] < K // GROUP)
    else:
        g = k // GROUP
        smask = rmask[:, None] & (k[None, :] < K)
    sc = tl.load(s_rows[:, None] + g[None, :], mask=smask, other=0.0,
                 eviction_policy="evict_first")
    return q, sc


@triton.jit
def _q8_sum(q, sc, x, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
            POW2: tl.constexpr):
    """Per row: sum over groups of scale * (int8 group . x group)."""
    p = q.to(tl.float32) * x.to(tl.float32)[None, :]
    if POW2:
        p = tl.sum(tl.reshape(p, [BLOCK_N, BLOCK_K // GROUP, GROUP]), axis=2)
    return tl.sum(p * sc, axis=1)


@triton.jit
def _gemv_q8_kernel(out_ptr, x_ptr, q_ptr, s_ptr, g_ptr, r_ptr, pos_ptr, cos_ptr, sin_ptr,
                    key_ptr, N, K, s_q, s_s, eps, s_tab, ROT, HD, NORM: tl.constexpr,
                    ADD: tl.constexpr, SWIGLU: tl.constexpr, ROPE: tl.constexpr,
                    ARGMAX: tl.constexpr, IDB: tl.constexpr, GROUP: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """_gemv_kernel for q8_0 weights: [BLOCK_N, BLOCK_K] int8 tiles, the first issued before
    the PDL wait, each next one while the current is summed. SWIGLU: a tile's rows alternate
    gate and up rows, so both halves stream as one tile."""
    POW2: tl.constexpr = (GROUP & (GROUP - 1)) == 0
    OUT_N: tl.constexpr = BLOCK_N // 2 if SWIGLU else BLOCK_N
    i = tl.arange(0, BLOCK_N)
    rows = tl.program_id(0) * OUT_N + tl.arange(0, OUT_N)      # output rows
    if SWIGLU:              # tile row i: output i // 2's gate row (i even) or up row (i odd)
        out_row = tl.program_id(0) * OUT_N + i // 2
        w_rows = out_row + (i % 2) * N
    else:
        out_row = tl.program_id(0) * BLOCK_N + i
        w_rows = out_row
    rmask = out_row < N
    q_rows = q_ptr + w_rows.to(tl.int64) * s_q
    s_rows = s_ptr + w_rows.to(tl.int64) * s_s
    q, sc = _q8_tile(q_rows, s_rows, 0, K, rmask, GROUP, BLOCK_K, POW2)
    cos_t, sin_t = _rope_factors(pos_ptr, cos_ptr, sin_ptr, s_tab, tl.program_id(0) * OUT_N,
                                 ROT, HD, OUT_N, ROPE)
    pdl_start(PDL)
    y = tl.zeros([BLOCK_N], tl.float32)
    ss = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        q_next, sc_next = _q8_tile(q_rows, s_rows, k0 + BLOCK_K, K, rmask, GROUP, BLOCK_K, POW2)
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        if NORM:
            ss += x * x
            x = x * tl.load(g_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        x = x.to(x_ptr.dtype.element_ty)            # as an unfused RMSNorm would store it
        y += _q8_sum(q, sc, x, BLOCK_N, BLOCK_K, GROUP, POW2)
        q, sc = q_next, sc_next
    y_u = y
    if SWIGLU:
        y, y_u = tl.split(tl.reshape(y, [OUT_N, 2]))
    res = _residual(r_ptr, rows, N, ADD)
    _epilogue(out_ptr, key_ptr, res, rows, N, y, y_u, tl.sum(ss, axis=0), K, eps, cos_t,
              sin_t, NORM, ADD, SWIGLU, ROPE, ARGMAX, IDB, OUT_N)


@triton.jit
def _grouped(tile, n_m, n_n, GROUP_M: tl.constexpr):
    """(row, column) of output tile number `tile` in grouped order: GROUP_M row tiles take
    each column tile in turn, so programs running together share weight tiles in L2."""
    first_m = tile // (GROUP_M * n_n) * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (tile % (GROUP_M * n_n)) % size_m, (tile % (GROUP_M * n_n)) // size_m


@triton.jit
def _gemm_kernel(out_ptr, x_ptr, w_ptr, r_ptr, M, N, K, s_out, s_x, s_wn, s_wk, s_r,
                 ADD: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """Launched without PDL: its resident blocks would hold shared memory while waiting.
    W[n, k] sits at w_ptr + n s_wn + k s_wk (row- or column-major)."""
    pid_m, pid_n = _grouped(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N),
                            GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * s_x
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * s_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(x_rows + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K), other=0.0)
        b = tl.load(w_rows + k.to(tl.int64)[None, :] * s_wk,
                    mask=(rn[:, None] < N) & (k[None, :] < K), other=0.0)
        if DOT_F32:        # the interpreter multiplies bf16 bit patterns, not values
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if ADD:
        acc += tl.load(r_ptr + rm[:, None] * s_r + rn[None, :], mask=mask, other=0.0).to(
            tl.float32)
    tl.store(out_ptr + rm[:, None] * s_out + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _gemm_tma_kernel(out_d, x_d, w_d, r_d, M, N, K, ADD: tl.constexpr, W_T: tl.constexpr,
                     DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, STAGES: tl.constexpr,
                     PROGRAMS: tl.constexpr):
    """_gemm_kernel with tensor descriptors, persistent: PROGRAMS programs take the output
    tiles in turn (grouped order), so the next tile's first loads overlap this one's end.
    W_T: w_d describes W^T (a column-major W), tiles [BLOCK_K, BLOCK_N]."""
    n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), n_m * n_n, PROGRAMS, flatten=True):
        pid_m, pid_n = _grouped(tile, n_m, n_n, GROUP_M)
        m0, n0 = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            a = x_d.load([m0, k0])
            if W_T:
                b = w_d.load([k0, n0])
            else:
                b = w_d.load([n0, k0]).T
            if DOT_F32:    # the interpreter multiplies bf16 bit patterns, not values
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc)
        if ADD:
            acc += r_d.load([m0, n0]).to(tl.float32)
        out_d.store([m0, n0], acc.to(out_d.dtype))


@triton.jit
def _dequant_kernel(out_ptr, q_ptr, s_ptr, K, s_out, s_q, s_s, GROUP: tl.constexpr,
                    BLOCK: tl.constexpr, PDL: tl.constexpr):
    """out[n, k] = q[n, k] * s[n, k // GROUP], in out's dtype."""
    pdl_start(PDL)
    n, cb = tl.program_id(0).to(tl.int64), tl.program_id(1)
    k = cb * BLOCK + tl.arange(0, BLOCK)
    q = tl.load(q_ptr + n * s_q + k, mask=k < K, other=0).to(tl.float32)
    sc = tl.load(s_ptr + n * s_s + k // GROUP, mask=k < K, other=0.0)
    tl.store(out_ptr + n * s_out + k, (q * sc).to(out_ptr.dtype.element_ty), mask=k < K)


def _gemv_config(N, K):
    """(BLOCK_N, BLOCK_K, num_warps) for one token, from sweeps of whole decode steps
    (benchmarks/step_configs.py). Rows up to ONE_TILE_K wide load whole, so the next GEMV
    can stream them during the kernels before it. Rows up to 2,048 wide go 16,384 values
    (128 a thread) to a program: TinyLlama's qkv and o are then few enough programs to be
    resident at once, so all of them load before the kernel waits (Llama-2-7B's rows of
    4,096 keep 2 to a program: 4 were no faster). Long rows of a narrow output (the w2 of a
    1B model) go in fewer, larger programs."""
    if interpreting():
        return 16, min(128, triton.next_power_of_2(K)), 4
    if K <= ONE_TILE_K:
        block_k = triton.next_power_of_2(K)
        return (min(16, 16384 // block_k) if block_k <= 2048 else 2), block_k, 4
    if N * K >= 1 << 26:
        return 2, 2048, 4
    if N <= 2048:
        return 8, 1024, 8
    return 4, 1024, 4


def _early_residual(one_tile, warps):
    """Whether a GEMV loads its residual right after the PDL wait. Timed in whole decode steps
    (H100, one process, perf-notes attempt 33): it pays for whole rows (Llama-2-7B's o: -18 us
    a step) and for tiles walked by 8 warps (the w2 of TinyLlama and Llama-3.2-1B: -5 and
    -3 us), and costs for tiles walked by 4 warps (Llama-2-7B's w2: +90 us). The q8_0 GEMV,
    not timed, loads it late."""
    return one_tile or warps == 8


def _gemv_q8_config(N, K, group):
    """(BLOCK_N, BLOCK_K, num_warps) for one token in q8_0: 8 rows x 1024 values per tile. In
    whole decode steps (benchmarks/step_configs.py --quant int8) it beat 4 x 2048, the best of
    single-GEMV sweeps: Llama-2-7B 7-9% faster on an H100 and an H200."""
    rows, tile = (8, 128) if interpreting() else (8, Q8_TILE_K)
    return rows, max(min(tile, triton.next_power_of_2(K)), triton.next_power_of_2(group)), 4


def _gemm_config(M, N, fp32):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for prefill."""
    if interpreting():
        return 16, 32, 32, 4, 1
    if fp32:
        return 64, 64, 32, 4, 3
    if triton.cdiv(M, 128) * triton.cdiv(N, 128) >= 120:      # big tiles still fill the GPU
        return 128, 128, 64, 8, 4
    return 64, 64, 64, 4, 4


def _gemm_tma_config(M, N, programs, add):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the TMA GEMM, from a sweep of
    the TinyLlama and Llama-2-7B prefill shapes on an H100: the largest tiles that still
    give every program work. The residual add's tile takes the shared memory that the widest
    tiles would need."""
    if interpreting():
        return 16, 32, 32, 4, 1
    if not add and 2 * triton.cdiv(M, 128) * triton.cdiv(N, 256) >= 5 * programs:
        return 128, 256, 64, 8, 3
    if 2 * triton.cdiv(M, 128) * triton.cdiv(N, 128) >= programs:
        return 128, 128, 64, 8, 4
    if 2 * triton.cdiv(M, 64) * triton.cdiv(N, 128) >= programs:
        return 64, 128, 64, 4, 4
    return 64, 64, 64, 4, 4


def _tma_ready(*tensors):
    """TMA (Hopper on) takes 2-D row-major tiles whose base and row stride are multiples of
    16 bytes."""
    if not (interpreting() or hopper(tensors[0].device)):
        return False
    return all(t.stride(1) == 1 and t.stride(0) * t.element_size() % 16 == 0
               and t.data_ptr() % 16 == 0 for t in tensors)


def _gemm_tma(out, x, W, residual, add):
    """W row-major, or column-major (described by its transpose)."""
    M, K = x.shape
    N = W.shape[0]
    sms = multiprocessors(out.device)
    bm, bn, bk, warps, stages = _gemm_tma_config(M, N, sms, add)
    programs = min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn))
    desc = TensorDescriptor.from_tensor
    w_t = _column_major(W)
    w_d = desc(W.t(), [bk, bn]) if w_t else desc(W, [bn, bk])
    _gemm_tma_kernel[(programs,)](
        desc(out, [bm, bn]), desc(x, [bm, bk]), w_d, desc(residual, [bm, bn]),
        M, N, K, ADD=add, W_T=w_t, DOT_F32=interpreting(), BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_K=bk, GROUP_M=8, STAGES=stages, PROGRAMS=programs, num_warps=warps)


def _column_major(W):
    """Whether W [N, K] is stored column-major (W^T row-major: see linear_add_ffn)."""
    return W.stride(0) == 1 and W.shape[1] > 1


def _scratch_for(name, shape, like):
    """A scratch tensor for prefill, kept (and grown) for the next one; decode never uses it.
    An outgrown one stays allocated: a prefill recorded as a CUDA graph may still write it."""
    key = (name, like.device, like.dtype)
    numel = shape[0] * shape[1]
    buf = _scratch.get(key)
    if buf is None or buf.numel() < numel:
        if buf is not None:
            _outgrown.append(buf)
        buf = _scratch[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def _run(out, x, w, g=None, eps=0.0, residual=None, swiglu=False, rope=None, pick=None,
         copy=None):
    """rope: (pos, cos, sin, heads) rotates the first heads * hd outputs
    (rmsnorm_linear_rope). pick: an int64 key raised to the outputs' argmax key. copy: one
    token's outputs are stored there too. W may be column-major for several tokens."""
    q8 = w.fmt == Q8_0
    W = w.parts["q" if q8 else "w"]
    S = w.parts["s"] if q8 else W                    # scales (a placeholder when dense)
    group = w.meta["group"] if q8 else 1
    M, K = x.shape
    N = W.shape[0] // 2 if swiglu else W.shape[0]
    assert x.stride(1) == 1 and out.stride(1) == 1, "rows must be dense"
    assert W.stride(1) == 1 or (M > 1 and _column_major(W) and not (swiglu or rope)), (
        "a column-major weight only goes through the GEMM of linear and linear_add")
    pdl = pdl_enabled(out.device)
    add = residual is not None
    residual = residual if add else out
    pos, cos, sin, rot, hd = out, out, out, 0, 2              # placeholders without rope
    if rope is not None:
        pos, cos, sin, heads = rope
        hd = 2 * cos.shape[1]
        rot = heads * hd
    if M == 1:
        common = dict(NORM=g is not None, ADD=add, SWIGLU=swiglu, ROPE=rope is not None,
                      ARGMAX=pick is not None,
                      IDB=id_bits(N) if pick is not None else 1, PDL=pdl,
                      launch_pdl=pdl)
        g = x if g is None else g
        turn = (pos, cos, sin)
        key = out if pick is None else pick
        if q8:
            bn, bk, warps = _gemv_q8_config(W.shape[0], K, group)
            _gemv_q8_kernel[(triton.cdiv(N, bn // 2 if swiglu else bn),)](
                out, x, W, S, g, residual, *turn, key, N, K, W.stride(0), S.stride(0),
                float(eps), cos.stride(0), rot, hd, GROUP=group, BLOCK_N=bn, BLOCK_K=bk,
                num_warps=warps, **common)
            return
        bn, bk, warps = _gemv_config(W.shape[0], K)
        bn = max(1, bn // 2) if swiglu else bn           # gate and up rows: the same bytes
        bn = max(2, bn) if rope is not None else bn      # rope turns whole row pairs
        _gemv_kernel[(triton.cdiv(N, bn),)](
            out, x, W, g, residual, *turn, key, out if copy is None else copy, N, K,
            W.stride(0), float(eps), cos.stride(0), rot, hd, COPY=copy is not None,
            BLOCK_N=bn, BLOCK_K=bk, ONE_TILE=K <= bk,
            EARLY_RES=_early_residual(K <= bk, warps), num_warps=warps, **common)
        return
    if rope is not None:                 # more tokens: the GEMM, then the rope kernel
        _run(out, x, w, g, eps)
        turned = out[:, :rot].unflatten(1, (rot // hd, hd))
        rope_kernel(turned, turned[:, :0], pos, cos, sin)
        return
    if g is not None:
        h = _scratch_for("normed", x.shape, x)
        rmsnorm(h, x, g, eps)
        x = h
    if q8:                     # prefill is matrix-bound: dequantize once, then the dense GEMM
        W = _scratch_for("dequantized", tuple(W.shape), x)
        block = min(1024, triton.next_power_of_2(K))
        _dequant_kernel[(W.shape[0], triton.cdiv(K, block))](
            W, w.parts["q"], S, K, W.stride(0), w.parts["q"].stride(0), S.stride(0),
            GROUP=group, BLOCK=block, PDL=pdl, launch_pdl=pdl)
        w = Weight(DENSE, tuple(W.shape), {"w": W})
    if swiglu:
        gu = _scratch_for("gate_up", (M, 2 * N), out)
        _run(gu, x, w)
        silu_mul(out, gu[:, :N], gu[:, N:])
        return
    fp32 = x.element_size() == 4
    if not fp32 and M >= TMA_MIN_ROWS and _tma_ready(out, x, W.t() if _column_major(W)
                                                       else W, residual):
        _gemm_tma(out, x, W, residual, add)
        return
    bm, bn, bk, warps, stages = _gemm_config(M, N, fp32)
    _gemm_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        out, x, W, residual, M, N, K, out.stride(0), x.stride(0), W.stride(0), W.stride(1),
        residual.stride(0), ADD=add, PRECISION="ieee" if fp32 else "tf32",
        DOT_F32=interpreting(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        num_warps=warps, num_stages=stages)


def linear(out, x, w):
    _run(out, x, w)


def rmsnorm_linear(out, x, weight, eps, w):
    _run(out, x, w, g=weight, eps=eps)


def linear_add(out, x, w, residual):
    _run(out, x, w, residual=residual)


def rmsnorm_linear_rope(out, x, weight, eps, w, pos, cos, sin, heads):
    _run(out, x, w, g=weight, eps=eps, rope=(pos, cos, sin, heads))


def rmsnorm_swiglu(out, x, weight, eps, w):
    _run(out, x, w, g=weight, eps=eps, swiglu=True)


def rmsnorm_linear_argmax(ids, logits, x, weight, eps, w):
    """One token: every GEMV program raises a shared key to its rows' argmax key, and a
    one-thread kernel turns the key into the id; the argmax kernel and its read of the
    logits leave the decode step."""
    if x.shape[0] > 1:
        _run(logits, x, w, g=weight, eps=eps)
        argmax(ids, logits)
        return
    key = argmax_key(x.device)
    _run(logits, x, w, g=weight, eps=eps, pick=key)
    pick_key(ids, key, logits.shape[1])
