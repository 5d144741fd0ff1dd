// cuda:cupy kernels (compiled by NVRTC through cupy.RawModule; see kernels.py).
// T names the storage type of the activations and weights: float, __half or __nv_bfloat16;
// math is float32. Every pointer comes with its strides in elements, so the kernels work on the
// executor's column views (q, k, v of one qkv buffer; gate and up of one w1|w3 output).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define NEG_INF __int_as_float(0xff800000)     // NVRTC has no math.h INFINITY

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// The sum of v over the block (every thread gets it); blockDim.x is a multiple of 32.
__device__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();                      // warp_sums may still be read by a previous call
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = lane < warps ? warp_sums[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// grid (T, column blocks)
template <typename T>
__device__ void embedding(T* out, const T* table, const int* ids, int D, long long s_out,
                          long long s_tab) {
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < D) out[t * s_out + c] = table[(long long)ids[t] * s_tab + c];
}

// grid (T); out = x / sqrt(mean(x^2) + eps) * w
template <typename T>
__device__ void rmsnorm(T* out, const T* x, const T* w, int D, float eps, long long s_out,
                        long long s_x) {
    const T* row = x + blockIdx.x * s_x;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) { float v = to_f(row[c]); ss += v * v; }
    float inv = rsqrtf(block_sum(ss) / D + eps);
    for (int c = threadIdx.x; c < D; c += blockDim.x)
        out[blockIdx.x * s_out + c] = from_f<T>(to_f(row[c]) * inv * to_f(w[c]));
}

// grid (T, H + KV), threads over the hd/2 pairs; pos[0] + t is token t's position
template <typename T>
__device__ void rope(T* q, T* k, const int* pos, const float* cos_t, const float* sin_t,
                     int H, int hd, long long sq_t, long long sq_h, long long sk_t,
                     long long sk_h, long long s_tab) {
    int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    if (i >= hd / 2) return;
    T* x = h < H ? q + t * sq_t + h * sq_h : k + t * sk_t + (h - H) * sk_h;
    long long p = pos[0] + t;
    float c = cos_t[p * s_tab + i], s = sin_t[p * s_tab + i];
    float even = to_f(x[2 * i]), odd = to_f(x[2 * i + 1]);
    x[2 * i] = from_f<T>(even * c - odd * s);
    x[2 * i + 1] = from_f<T>(even * s + odd * c);
}

// grid (T, column blocks)
template <typename T>
__device__ void silu_mul(T* out, const T* gate, const T* up, int N, long long s_out,
                         long long s_g, long long s_u) {
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float g = to_f(gate[t * s_g + c]);
    out[t * s_out + c] = from_f<T>(g / (1.0f + expf(-g)) * to_f(up[t * s_u + c]));
}

template <typename T>
__device__ void add(T* out, const T* a, const T* b, int N, long long s_out, long long s_a,
                    long long s_b) {
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < N) out[t * s_out + c] = from_f<T>(to_f(a[t * s_a + c]) + to_f(b[t * s_b + c]));
}

// Whether (v, i) comes before (bv, bi) in numpy.argmax's order: NaN first, then larger
// values, ties to the smaller index; index V stands for "nothing yet".
__device__ __forceinline__ bool beats(float v, int i, float bv, int bi, int V) {
    if (i == V) return false;
    if (bi == V) return true;
    bool vn = isnan(v), bn = isnan(bv);
    if (vn != bn) return vn;
    if (!vn && v != bv) return v > bv;
    return i < bi;
}

// grid (T): the index of the first largest logit (the first NaN if any, as numpy.argmax)
template <typename T>
__device__ void argmax(int* out, const T* logits, int V, long long s_l) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const T* row = logits + blockIdx.x * s_l;
    float bv = 0.0f;
    int bi = V;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float v = to_f(row[c]);
        if (beats(v, c, bv, bi, V)) { bv = v; bi = c; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, bv, o);
        int oi = __shfl_xor_sync(0xffffffff, bi, o);
        if (beats(ov, oi, bv, bi, V)) { bv = ov; bi = oi; }
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { best_v[warp] = bv; best_i[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < blockDim.x / 32; ++w)
            if (beats(best_v[w], best_i[w], bv, bi, V)) { bv = best_v[w]; bi = best_i[w]; }
        out[blockIdx.x] = bi;
    }
}

// Ends a replayed decode step (one thread): the picked id waits in slot pos % R, where the
// next R - 1 steps leave it alone, and the next step finds its position on the device.
extern "C" __global__ void advance(int* pos, const int* ids, int* picked, int R) {
    int p = pos[0];
    picked[p % R] = ids[0];
    pos[0] = p + 1;
}

// One token: grid (row blocks), a warp per row; 16-byte loads where K and the row stride
// allow them (vec), else one value per lane; weights are read once, so their loads skip L1.
// A warp keeps GEMV_AHEAD pieces per lane in flight, the first ones issued before the norm.
// NORM: x is RMS-normed with weight g first (its scale applied to the row sums); SWIGLU: w
// holds 2N rows, gate then up, and out = silu(gate) * up; residual (or null) is added.
#define GEMV_AHEAD 2
template <typename T, bool NORM, bool SWIGLU>
__device__ void gemv(T* out, const T* x, const T* g, const T* w, const T* residual, int N,
                     int K, long long s_w, int vec, float eps) {
    constexpr int PER = 16 / sizeof(T), STEP = 32 * PER * GEMV_AHEAD;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    const T* wr = w + min(row, N - 1) * s_w;
    const T* ur = wr + (long long)N * s_w;
    uint4 wb[GEMV_AHEAD], ub[GEMV_AHEAD];
    if (vec) {
#pragma unroll
        for (int j = 0; j < GEMV_AHEAD; ++j) {
            int c = min((lane + 32 * j) * PER, K - PER);   // past K: a valid piece, unused
            wb[j] = __ldcs(reinterpret_cast<const uint4*>(wr + c));
            if (SWIGLU) ub[j] = __ldcs(reinterpret_cast<const uint4*>(ur + c));
        }
    }
    float inv = 1.0f;
    if (NORM) {                                        // every thread, before any returns
        float ss = 0.0f;
        for (int c = threadIdx.x; c < K; c += blockDim.x) { float v = to_f(x[c]); ss += v * v; }
        inv = rsqrtf(block_sum(ss) / K + eps);
    }
    if (row >= N) return;
    float acc = 0.0f, acc_u = 0.0f;
    if (vec) {
        for (int base = 0; base < K; base += STEP) {
            uint4 wn[GEMV_AHEAD], un[GEMV_AHEAD];
#pragma unroll
            for (int j = 0; j < GEMV_AHEAD; ++j) {     // the next pieces, while these are summed
                int c = min(base + STEP + (lane + 32 * j) * PER, K - PER);
                wn[j] = __ldcs(reinterpret_cast<const uint4*>(wr + c));
                if (SWIGLU) un[j] = __ldcs(reinterpret_cast<const uint4*>(ur + c));
            }
#pragma unroll
            for (int j = 0; j < GEMV_AHEAD; ++j) {
                int c = base + (lane + 32 * j) * PER;
                if (c >= K) break;
                uint4 xv = *reinterpret_cast<const uint4*>(x + c);
                uint4 gv;
                if (NORM) gv = *reinterpret_cast<const uint4*>(g + c);
                const T* wp = reinterpret_cast<const T*>(&wb[j]);
                const T* up = reinterpret_cast<const T*>(&ub[j]);
                const T* xp = reinterpret_cast<const T*>(&xv);
                const T* gp = reinterpret_cast<const T*>(&gv);
#pragma unroll
                for (int e = 0; e < PER; ++e) {
                    float xe = NORM ? to_f(xp[e]) * to_f(gp[e]) : to_f(xp[e]);
                    acc += to_f(wp[e]) * xe;
                    if (SWIGLU) acc_u += to_f(up[e]) * xe;
                }
            }
#pragma unroll
            for (int j = 0; j < GEMV_AHEAD; ++j) {
                wb[j] = wn[j];
                if (SWIGLU) ub[j] = un[j];
            }
        }
    } else {
        for (int c = lane; c < K; c += 32) {
            float xe = NORM ? to_f(x[c]) * to_f(g[c]) : to_f(x[c]);
            acc += to_f(wr[c]) * xe;
            if (SWIGLU) acc_u += to_f(ur[c]) * xe;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        acc += __shfl_xor_sync(0xffffffff, acc, o);
        if (SWIGLU) acc_u += __shfl_xor_sync(0xffffffff, acc_u, o);
    }
    if (lane == 0) {
        float y = acc * inv;
        if (SWIGLU) y = y / (1.0f + expf(-y)) * (acc_u * inv);
        if (residual) y += to_f(residual[row]);
        out[row] = from_f<T>(y);
    }
}

// grid (T, element blocks); writes the T new keys and values into cache rows pos[0] ..
template <typename T>
__device__ void cache_write(T* kc, T* vc, const T* k, const T* v, const int* pos, int KV, int hd,
                            long long s_kt, long long s_kh, long long s_vt, long long s_vh,
                            long long s_c) {
    int t = blockIdx.x, e = blockIdx.y * blockDim.x + threadIdx.x;
    if (e >= KV * hd) return;
    long long row = (long long)(pos[0] + t) * s_c;
    int h = e / hd, d = e % hd;
    kc[row + e] = k[t * s_kt + h * s_kh + d];
    vc[row + e] = v[t * s_vt + h * s_vh + d];
}

// More tokens: grid (T, H), ATTN_WARPS warps; query t sees the keys 0..pos[0]+t. An online
// softmax per warp (a key per warp step, head dims over lanes), the warps merged in shared
// memory.
#define ATTN_WARPS 4
#define MAX_HD 256
template <typename T>
__device__ void attention_prefill(T* out, const T* q, const T* kc, const T* vc, const int* pos,
                                  int H, int KV, int hd, float scale, long long s_qt,
                                  long long s_qh, long long s_ot, long long s_oh, long long s_c) {
    __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS], sm_acc[ATTN_WARPS][MAX_HD];
    int t = blockIdx.x, h = blockIdx.y;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int n = pos[0] + t + 1;                            // visible keys
    const int PER = (hd + 31) / 32;                    // head dims per lane (<= MAX_HD / 32)
    float qv[MAX_HD / 32], acc[MAX_HD / 32];
    const T* qr = q + t * s_qt + h * s_qh;
    for (int j = 0; j < PER; ++j) {
        int d = lane + 32 * j;
        qv[j] = d < hd ? to_f(qr[d]) * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    long long col = (long long)(h / (H / KV)) * hd;
    for (int s = warp; s < n; s += ATTN_WARPS) {
        const T* kr = kc + s * s_c + col;
        float dot = 0.0f;
        for (int j = 0; j < PER; ++j) {
            int d = lane + 32 * j;
            if (d < hd) dot += qv[j] * to_f(kr[d]);
        }
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
        float m_new = fmaxf(m, dot), alpha = expf(m - m_new), p = expf(dot - m_new);
        const T* vr = vc + s * s_c + col;
        for (int j = 0; j < PER; ++j) {
            int d = lane + 32 * j;
            acc[j] = acc[j] * alpha + (d < hd ? p * to_f(vr[d]) : 0.0f);
        }
        l = l * alpha + p;
        m = m_new;
    }
    if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
    for (int j = 0; j < PER; ++j) {
        int d = lane + 32 * j;
        if (d < hd) sm_acc[warp][d] = acc[j];
    }
    __syncthreads();
    float top = NEG_INF;
    for (int w = 0; w < ATTN_WARPS; ++w) top = fmaxf(top, sm_m[w]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            if (sm_m[w] == NEG_INF) continue;              // a warp that saw no key
            float f = expf(sm_m[w] - top);
            num += f * sm_acc[w][d];
            den += f * sm_l[w];
        }
        out[t * s_ot + h * s_oh + d] = from_f<T>(num / den);
    }
}

// One token: grid (kv heads, splits), DEC_WARPS warps; PER = head dims per lane (hd <= 32 PER).
// A block reduces its split of the cached keys 0..pos (the new key is in the cache already)
// for the G <= MAX_G query heads sharing its kv head, so each key and value is read once.
// Keys come in tiles of 32 through shared memory: warp w owns query heads w, w + DEC_WARPS..,
// a lane scores one key of the tile, then sums a slice of the head dims over the tile's keys.
// The last block of a kv head to finish (an atomic counter tells) merges the splits'
// partials [H, splits, acc | max | sum] and writes out.
#define DEC_WARPS 4
#define MAX_G 8
#define MAX_SPLITS 32
template <typename T, int PER>
__device__ void attention_decode(T* out, float* part, int* counters, const T* q, const T* kc,
                                 const T* vc, const int* pos, int H, int KV, int hd,
                                 float scale, int splits, long long s_qh, long long s_oh,
                                 long long s_c) {
    constexpr int HD = 32 * PER;
    __shared__ float sk[32][HD + 1], sv[32][HD], sq[MAX_G][HD];
    __shared__ float sw[MAX_G][MAX_SPLITS], sl[MAX_G][MAX_SPLITS];
    __shared__ bool last;
    int kvh = blockIdx.x, sp = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int G = H / KV, n = pos[0] + 1;
    int chunk = (n + splits - 1) / splits, start = sp * chunk, end = min(start + chunk, n);
    // Loops over a block's share of a tile run unrolled, their loads unconditional (at a
    // clamped address when out of range): every load is in flight at once, one round trip
    // to memory instead of one per iteration.
    constexpr int THREADS = 32 * DEC_WARPS, Q_EACH = MAX_G * HD / THREADS;
    constexpr int T_EACH = HD / DEC_WARPS;             // 32 keys x HD values over the threads
#pragma unroll
    for (int i = 0; i < Q_EACH; ++i) {
        int e = threadIdx.x + i * THREADS, g = e / HD, d = e % HD;
        float v = to_f(q[(kvh * G + min(g, G - 1)) * s_qh + min(d, hd - 1)]);
        sq[g][d] = g < G && d < hd ? v * scale : 0.0f;
    }
    constexpr int MINE = MAX_G / DEC_WARPS;            // query heads per warp
    float m[MINE], l[MINE], acc[MINE][PER];
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < PER; ++j) acc[i][j] = 0.0f;
    }
    long long col = (long long)kvh * hd;
    for (int s0 = start; s0 < end; s0 += 32) {
        __syncthreads();                               // the previous tile is used up
        float kt[T_EACH], vt[T_EACH];
#pragma unroll
        for (int i = 0; i < T_EACH; ++i) {
            int e = threadIdx.x + i * THREADS, r = e / HD, d = e % HD, s = s0 + r;
            bool in = s < end && d < hd;
            long long at = min(s, end - 1) * s_c + col + min(d, hd - 1);
            float k = to_f(kc[at]), v = to_f(vc[at]);
            kt[i] = in ? k : 0.0f;
            vt[i] = in ? v : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < T_EACH; ++i) {
            int e = threadIdx.x + i * THREADS;
            sk[e / HD][e % HD] = kt[i];
            sv[e / HD][e % HD] = vt[i];
        }
        __syncthreads();
        bool key = s0 + lane < end;
#pragma unroll
        for (int i = 0; i < MINE; ++i) {
            int g = warp + DEC_WARPS * i;
            if (g >= G) break;
            float score = 0.0f;
#pragma unroll 8
            for (int d = 0; d < HD; ++d) score += sq[g][d] * sk[lane][d];
            score = key ? score : NEG_INF;
            float top = score;
            for (int o = 16; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, o));
            float m_new = fmaxf(m[i], top), alpha = expf(m[i] - m_new);
            float p = key ? expf(score - m_new) : 0.0f, sum = p;
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
#pragma unroll
            for (int j = 0; j < PER; ++j) acc[i][j] *= alpha;
            for (int r = 0; r < 32; ++r) {
                float pr = __shfl_sync(0xffffffff, p, r);
#pragma unroll
                for (int j = 0; j < PER; ++j) acc[i][j] += pr * sv[r][lane + 32 * j];
            }
        }
    }
    int row = hd + 2;                                  // a partial: acc, then max, then sum
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
        int g = warp + DEC_WARPS * i;
        if (g >= G) break;
        float* mine = part + ((long long)(kvh * G + g) * splits + sp) * row;
#pragma unroll
        for (int j = 0; j < PER; ++j)
            if (lane + 32 * j < hd) mine[lane + 32 * j] = acc[i][j];
        if (lane == 0) { mine[hd] = m[i]; mine[hd + 1] = l[i]; }
    }
    __threadfence();                                   // the partials, before the arrival
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counters + kvh, 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float* base = part + (long long)kvh * G * splits * row;
    for (int e = threadIdx.x; e < G * splits; e += blockDim.x) {    // every split's max, sum
        sw[e / splits][e % splits] = __ldcg(base + (long long)e * row + hd);
        sl[e / splits][e % splits] = __ldcg(base + (long long)e * row + hd + 1);
    }
    __syncthreads();
    for (int g = threadIdx.x; g < G; g += blockDim.x) {   // each split's weight, the total
        float top = NEG_INF, total = 0.0f;
        for (int k = 0; k < splits; ++k) top = fmaxf(top, sw[g][k]);
        for (int k = 0; k < splits; ++k) {
            float f = sw[g][k] == NEG_INF ? 0.0f : expf(sw[g][k] - top);   // an empty split
            total += f * sl[g][k];
            sw[g][k] = f;
        }
        sl[g][0] = total;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * hd; e += blockDim.x) {
        int g = e / hd, d = e % hd;
        const float* p = base + (long long)g * splits * row + d;
        float part_acc[MAX_SPLITS];
#pragma unroll
        for (int k = 0; k < MAX_SPLITS; ++k)          // every load in flight at once
            part_acc[k] = __ldcg(p + min(k, splits - 1) * row);
        float num = 0.0f;
#pragma unroll
        for (int k = 0; k < MAX_SPLITS; ++k) num += k < splits ? sw[g][k] * part_acc[k] : 0.0f;
        out[(kvh * G + g) * s_oh + d] = from_f<T>(num / sl[g][0]);
    }
    if (threadIdx.x == 0) counters[kvh] = 0;           // ready for the next step
}

// extern "C" entry points, one per op and storage type (kernels.py picks by suffix)
#define DECODE(T, SUF, PER)                                                                  \
extern "C" __global__ void attention_decode##PER##_##SUF(T* o, float* p, int* cnt,           \
    const T* q, const T* kc, const T* vc, const int* pos, int H, int KV, int hd, float scale,\
    int splits, long long sqh, long long soh, long long sc) {                                \
    attention_decode<T, PER>(o, p, cnt, q, kc, vc, pos, H, KV, hd, scale, splits, sqh, soh,  \
                             sc); }

#define FOR_TYPE(T, SUF)                                                                     \
extern "C" __global__ void embedding_##SUF(T* o, const T* tab, const int* ids, int D,         \
    long long so, long long st) { embedding<T>(o, tab, ids, D, so, st); }                    \
extern "C" __global__ void rmsnorm_##SUF(T* o, const T* x, const T* w, int D, float eps,      \
    long long so, long long sx) { rmsnorm<T>(o, x, w, D, eps, so, sx); }                     \
extern "C" __global__ void rope_##SUF(T* q, T* k, const int* pos, const float* c,             \
    const float* s, int H, int hd, long long a, long long b, long long e, long long f,       \
    long long st) { rope<T>(q, k, pos, c, s, H, hd, a, b, e, f, st); }                       \
extern "C" __global__ void silu_mul_##SUF(T* o, const T* g, const T* u, int N, long long so, \
    long long sg, long long su) { silu_mul<T>(o, g, u, N, so, sg, su); }                     \
extern "C" __global__ void add_##SUF(T* o, const T* a, const T* b, int N, long long so,      \
    long long sa, long long sb) { add<T>(o, a, b, N, so, sa, sb); }                          \
extern "C" __global__ void argmax_##SUF(int* o, const T* l, int V, long long sl) {            \
    argmax<T>(o, l, V, sl); }                                                                \
extern "C" __global__ void gemv_##SUF(T* o, const T* x, const T* w, const T* r, int N, int K, \
    long long sw, int vec) { gemv<T, false, false>(o, x, nullptr, w, r, N, K, sw, vec, 0.0f); } \
extern "C" __global__ void gemv_norm_##SUF(T* o, const T* x, const T* g, const T* w, int N,   \
    int K, long long sw, int vec, float eps) {                                               \
    gemv<T, true, false>(o, x, g, w, nullptr, N, K, sw, vec, eps); }                         \
extern "C" __global__ void gemv_swiglu_##SUF(T* o, const T* x, const T* g, const T* w, int N, \
    int K, long long sw, int vec, float eps) {                                               \
    gemv<T, true, true>(o, x, g, w, nullptr, N, K, sw, vec, eps); }                          \
extern "C" __global__ void cache_write_##SUF(T* kc, T* vc, const T* k, const T* v,           \
    const int* pos, int KV, int hd, long long a, long long b, long long c, long long d,       \
    long long sc) { cache_write<T>(kc, vc, k, v, pos, KV, hd, a, b, c, d, sc); }             \
extern "C" __global__ void attention_prefill_##SUF(T* o, const T* q, const T* kc,             \
    const T* vc, const int* pos, int H, int KV, int hd, float scale, long long sqt,          \
    long long sqh, long long sot, long long soh, long long sc) {                             \
    attention_prefill<T>(o, q, kc, vc, pos, H, KV, hd, scale, sqt, sqh, sot, soh, sc); }     \
DECODE(T, SUF, 1) DECODE(T, SUF, 2) DECODE(T, SUF, 4)

FOR_TYPE(float, f32)
FOR_TYPE(__half, f16)
FOR_TYPE(__nv_bfloat16, bf16)
