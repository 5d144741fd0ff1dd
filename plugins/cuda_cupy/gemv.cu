// One token's linear (compiled by NVRTC after common.cuh; kernels.py names the instance it
// needs, e.g. gemv<__nv_bfloat16, true, false, 2, 2, true, false>; gemv_q8, at the end, for
// q8_0 weights):
//   out[n] = sum_k W[n, k] x[k] (+ residual[n])
// NORM: x is RMS-normed with weight g first (its scale applied to the row sums). SWIGLU: W
// holds 2N rows, gate then up, and out = silu(gate) * up.
//
// Grid (row blocks). A block owns ROWS output rows (SWIGLU: ROWS gate rows and their up rows)
// and its threads share the columns in pieces of PER values, VECS pieces a row per thread and
// tile: a tile is blockDim.x * PER * VECS columns. The first tile loads before pdl_start, so
// weights stream while the kernel before finishes; TILED = false means a row fits one tile
// and loads whole. Otherwise each next tile loads while the current one is summed.
// VEC: a piece is one 16-byte load (K and the row stride multiples of PER, 16-byte aligned);
// else PER loads of one value. Weights are read once per step: their loads are streaming
// (__ldcs), so they do not push out of L2 what the step reads again.

template <typename T> struct Piece { static constexpr int PER = 16 / sizeof(T); };

// The piece of a row at column c; past K, values from a valid address, which the caller
// multiplies by zero (a load under a condition would not be in flight with the others).
template <typename T, bool VEC, bool STREAM>
__device__ __forceinline__ uint4 load_piece(const T* row, int c, int K) {
    constexpr int PER = Piece<T>::PER;
    if (VEC) {
        const uint4* p = reinterpret_cast<const uint4*>(row + min(c, K - PER));
        return STREAM ? __ldcs(p) : *p;
    }
    uint4 r;
    T* e = reinterpret_cast<T*>(&r);
#pragma unroll
    for (int i = 0; i < PER; ++i) e[i] = row[min(c + i, K - 1)];
    return r;
}

template <typename T, int WR, int VECS, bool VEC>
__device__ __forceinline__ void load_tile(uint4 (&dst)[WR][VECS], const T* (&rows)[WR],
                                          int k0, int K) {
#pragma unroll
    for (int r = 0; r < WR; ++r)
#pragma unroll
        for (int v = 0; v < VECS; ++v)
            dst[r][v] = load_piece<T, VEC, true>(
                rows[r], k0 + (threadIdx.x + v * blockDim.x) * Piece<T>::PER, K);
}

// x's piece at column c as floats (0 past K), times g's where NORM; the squares of x (before
// g) added to ss.
template <typename T, bool NORM, bool VEC>
__device__ __forceinline__ void x_piece(float* xe, float& ss, const T* x, const T* g, int c,
                                        int K) {
    uint4 xr = load_piece<T, VEC, false>(x, c, K), gr;
    if (NORM) gr = load_piece<T, VEC, false>(g, c, K);
    const T* xp = reinterpret_cast<const T*>(&xr);
    const T* gp = reinterpret_cast<const T*>(&gr);
#pragma unroll
    for (int e = 0; e < Piece<T>::PER; ++e) {
        float v = c + e < K ? to_f(xp[e]) : 0.0f;
        if (NORM) {
            ss += v * v;
            v *= to_f(gp[e]);
        }
        xe[e] = v;
    }
}

// Adds a tile's products into acc (and x's squares into ss).
template <typename T, bool NORM, int WR, int VECS, bool VEC>
__device__ __forceinline__ void sum_tile(float (&acc)[WR], float& ss, const uint4 (&w)[WR][VECS],
                                         const T* x, const T* g, int k0, int K) {
    constexpr int PER = Piece<T>::PER;
#pragma unroll
    for (int v = 0; v < VECS; ++v) {
        int c = k0 + (threadIdx.x + v * blockDim.x) * PER;
        float xe[PER];
        x_piece<T, NORM, VEC>(xe, ss, x, g, c, K);
#pragma unroll
        for (int r = 0; r < WR; ++r) {
            const T* wp = reinterpret_cast<const T*>(&w[r][v]);
#pragma unroll
            for (int e = 0; e < PER; ++e) acc[r] += to_f(wp[e]) * xe[e];
        }
    }
}

// The block's row sums to outputs: over each warp by shuffles, then over the warps in shared
// memory; then the RMSNorm scale, the SwiGLU and the residual add. acc holds a thread's
// part of each weight row's sum (SWIGLU: ROWS gate rows, then their up rows), ss its part
// of x's squares.
template <typename T, bool NORM, bool SWIGLU, int ROWS, int WR>
__device__ __forceinline__ void finish(const float (&acc)[WR], float ss, T* out,
                                       const T* residual, int row0, int N, int K, float eps) {
    constexpr int SUMS = WR + 1;                       // every row, then x's squares
    __shared__ float warp_sums[32][SUMS];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
#pragma unroll
    for (int j = 0; j < SUMS; ++j) {
        float s = j < WR ? acc[j] : ss;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        if (lane == 0) warp_sums[warp][j] = s;
    }
    __syncthreads();
    int r = threadIdx.x;
    if (r >= ROWS || row0 + r >= N) return;
    float y = 0.0f, u = 0.0f, sq = 0.0f;
    for (int i = 0; i < warps; ++i) {
        y += warp_sums[i][r];
        if (SWIGLU) u += warp_sums[i][r + ROWS];
        if (NORM) sq += warp_sums[i][WR];
    }
    if (NORM) {
        float inv = rsqrtf(sq / K + eps);
        y *= inv;
        u *= inv;
    }
    if (SWIGLU) y = y / (1.0f + expf(-y)) * u;
    if (residual) y += to_f(residual[row0 + r]);
    out[row0 + r] = from_f<T>(y);
}

template <typename T, bool NORM, bool SWIGLU, int ROWS, int VECS, bool VEC, bool TILED>
__global__ void gemv(T* out, const T* x, const T* g, const T* w, const T* residual, int N,
                     int K, long long s_w, float eps) {
    constexpr int WR = SWIGLU ? 2 * ROWS : ROWS;       // weight rows a block reads
    int row0 = blockIdx.x * ROWS;
    const T* rows[WR];
#pragma unroll
    for (int r = 0; r < WR; ++r)                       // rows past N: a valid row, unused
        rows[r] = w + ((long long)min(row0 + r % ROWS, N - 1) + (r >= ROWS ? N : 0)) * s_w;
    uint4 cur[WR][VECS];
    load_tile<T, WR, VECS, VEC>(cur, rows, 0, K);
    pdl_start();
    float acc[WR], ss = 0.0f;
#pragma unroll
    for (int r = 0; r < WR; ++r) acc[r] = 0.0f;
    if (TILED) {
        const int tile = blockDim.x * Piece<T>::PER * VECS;
        uint4 next[WR][VECS];
        for (int k0 = 0; k0 < K; k0 += tile) {
            bool more = k0 + tile < K;
            if (more) load_tile<T, WR, VECS, VEC>(next, rows, k0 + tile, K);
            sum_tile<T, NORM, WR, VECS, VEC>(acc, ss, cur, x, g, k0, K);
            if (more) {
#pragma unroll
                for (int r = 0; r < WR; ++r)
#pragma unroll
                    for (int v = 0; v < VECS; ++v) cur[r][v] = next[r][v];
            }
        }
    } else {
        sum_tile<T, NORM, WR, VECS, VEC>(acc, ss, cur, x, g, 0, K);
    }
    finish<T, NORM, SWIGLU, ROWS>(acc, ss, out, residual, row0, N, K, eps);
}

// One token's linear over q8_0 weights (plugins/int8/pack.py): int8 rows q[N, K] and one
// float32 scale per `group` values of a row, s[N, K / group]. A thread takes a piece of 16
// values of each of the block's weight rows a tile (one 16-byte load where VEC: K and the
// row stride multiples of 16, pointers 16-byte aligned), so a tile is blockDim.x * 16
// columns; the first tile loads before pdl_start, each next one while the current is
// summed. GROUP16: the group is a multiple of 16, so a piece has one
// scale, loaded with it and applied to the piece's sum; other groups (from files) scale
// value by value.
struct Q8 { static constexpr int PIECE = 16; };      // int8 values in 16 bytes

template <bool VEC>
__device__ __forceinline__ uint4 load_q8_piece(const signed char* row, int c, int K) {
    if (VEC) return __ldcs(reinterpret_cast<const uint4*>(row + min(c, K - Q8::PIECE)));
    uint4 r;
    signed char* e = reinterpret_cast<signed char*>(&r);
#pragma unroll
    for (int i = 0; i < Q8::PIECE; ++i) e[i] = __ldcs(row + min(c + i, K - 1));
    return r;
}

// The 16 int8 values of a piece as floats. A byte b, its sign bit flipped, is b + 128 as an
// unsigned byte; put into the low mantissa bits of 2^23 it reads 2^23 + b + 128, so one byte
// permute and one exact subtraction replace a conversion instruction (a quarter of the
// rate of the multiply-adds).
__device__ __forceinline__ void q8_values(const uint4& piece, float (&v)[Q8::PIECE]) {
    const unsigned* words = reinterpret_cast<const unsigned*>(&piece);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        unsigned biased = words[w] ^ 0x80808080u;
#pragma unroll
        for (int b = 0; b < 4; ++b)
            v[4 * w + b] = __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7650 + b))
                           - 8388736.0f;
    }
}

template <int WR, bool VEC, bool GROUP16>
__device__ __forceinline__ void load_q8_tile(uint4 (&q)[WR], float (&sc)[WR],
                                             const signed char* (&qrows)[WR],
                                             const float* (&srows)[WR], int c, int K,
                                             int group) {
#pragma unroll
    for (int r = 0; r < WR; ++r) {
        q[r] = load_q8_piece<VEC>(qrows[r], c, K);
        if (GROUP16) sc[r] = __ldcs(srows[r] + min(c, K - 1) / group);
    }
}

template <typename T, bool NORM, bool SWIGLU, int ROWS, bool VEC, bool GROUP16>
__global__ void gemv_q8(T* out, const T* x, const T* g, const signed char* q, const float* s,
                        const T* residual, int N, int K, long long s_q, long long s_s,
                        int group, float eps) {
    constexpr int WR = SWIGLU ? 2 * ROWS : ROWS;       // weight rows a block reads
    constexpr int PER = Piece<T>::PER;                 // x values in 16 bytes
    int row0 = blockIdx.x * ROWS;
    const signed char* qrows[WR];
    const float* srows[WR];
#pragma unroll
    for (int r = 0; r < WR; ++r) {                     // rows past N: a valid row, unused
        long long row = (long long)min(row0 + r % ROWS, N - 1) + (r >= ROWS ? N : 0);
        qrows[r] = q + row * s_q;
        srows[r] = s + row * s_s;
    }
    const int tile = blockDim.x * Q8::PIECE;
    const int mine = threadIdx.x * Q8::PIECE;          // the thread's piece within a tile
    uint4 cur[WR], next[WR];
    float sc[WR], sc_next[WR];
    load_q8_tile<WR, VEC, GROUP16>(cur, sc, qrows, srows, mine, K, group);
    pdl_start();
    float acc[WR], ss = 0.0f;
#pragma unroll
    for (int r = 0; r < WR; ++r) acc[r] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += tile) {
        int c = k0 + mine;
        bool more = k0 + tile < K;
        if (more) load_q8_tile<WR, VEC, GROUP16>(next, sc_next, qrows, srows, c + tile, K, group);
        float xe[Q8::PIECE];
#pragma unroll
        for (int h = 0; h < Q8::PIECE; h += PER) x_piece<T, NORM, VEC>(xe + h, ss, x, g, c + h, K);
#pragma unroll
        for (int r = 0; r < WR; ++r) {
            float qv[Q8::PIECE];
            q8_values(cur[r], qv);
            if (GROUP16) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < Q8::PIECE; ++e) d += qv[e] * xe[e];
                acc[r] += sc[r] * d;
            } else {
#pragma unroll
                for (int e = 0; e < Q8::PIECE; ++e)
                    acc[r] += qv[e] * xe[e] * srows[r][min(c + e, K - 1) / group];
            }
        }
        if (more) {
#pragma unroll
            for (int r = 0; r < WR; ++r) {
                cur[r] = next[r];
                sc[r] = sc_next[r];
            }
        }
    }
    finish<T, NORM, SWIGLU, ROWS>(acc, ss, out, residual, row0, N, K, eps);
}
