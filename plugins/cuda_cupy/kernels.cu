// cuda:cupy kernels (compiled by NVRTC through cupy.RawModule; see kernels.py).
// T_IN / T_OUT name the storage type of a buffer: float, __half, or __nv_bfloat16; math is
// float32. Every pointer comes with its strides in elements, so the kernels work on the
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

// One token: grid (row blocks), a warp per row; 16-byte loads where K and the row stride
// allow them (VEC), else one value per lane.
template <typename T>
__device__ void gemv(T* out, const T* x, const T* w, const T* residual, int N, int K,
                     long long s_w, int vec) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* wr = w + row * s_w;
    float acc = 0.0f;
    constexpr int PER = 16 / sizeof(T);
    if (vec) {
#pragma unroll 4
        for (int c = lane * PER; c < K; c += 32 * PER) {
            uint4 wv = __ldcs(reinterpret_cast<const uint4*>(wr + c));   // read once: stream
            uint4 xv = *reinterpret_cast<const uint4*>(x + c);
            const T* wp = reinterpret_cast<const T*>(&wv);
            const T* xp = reinterpret_cast<const T*>(&xv);
#pragma unroll
            for (int j = 0; j < PER; ++j) acc += to_f(wp[j]) * to_f(xp[j]);
        }
    } else {
        for (int c = lane; c < K; c += 32) acc += to_f(wr[c]) * to_f(x[c]);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
    if (lane == 0) {
        if (residual) acc += to_f(residual[row]);
        out[row] = from_f<T>(acc);
    }
}

// grid (T); writes the T new keys and values into cache rows pos[0] .. pos[0] + T - 1
template <typename T>
__device__ void cache_write(T* kc, T* vc, const T* k, const T* v, const int* pos, int KV, int hd,
                            long long s_kt, long long s_kh, long long s_vt, long long s_vh,
                            long long s_c) {
    int t = blockIdx.x;
    long long row = (long long)(pos[0] + t) * s_c;
    for (int e = threadIdx.x; e < KV * hd; e += blockDim.x) {
        int h = e / hd, d = e % hd;
        kc[row + e] = k[t * s_kt + h * s_kh + d];
        vc[row + e] = v[t * s_vt + h * s_vh + d];
    }
}

// grid (T, H, splits), ATTN_WARPS warps: split sp of query t's visible keys 0..pos[0]+t,
// an online softmax per warp (a key per warp step, head dims over lanes), warps merged in
// shared memory; writes (acc, max, sum) partials [T, H, splits] for attention_merge.
#define ATTN_WARPS 4
#define MAX_HD 256
template <typename T>
__device__ void attention_split(float* part, const T* q, const T* kc, const T* vc,
                                const int* pos, int H, int KV, int hd, float scale, int splits,
                                long long s_qt, long long s_qh, long long s_c) {
    __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS], sm_acc[ATTN_WARPS][MAX_HD];
    int t = blockIdx.x, h = blockIdx.y, sp = blockIdx.z;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int n = pos[0] + t + 1;                            // visible keys
    int chunk = (n + splits - 1) / splits;
    int start = sp * chunk, end = min(start + chunk, n);
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
    for (int s = start + warp; s < end; s += ATTN_WARPS) {
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
    float* out = part + ((long long)(t * H + h) * splits + sp) * (hd + 2);
    for (int d = threadIdx.x; d < hd + 2; d += blockDim.x) {   // acc, then max, then sum
        float v = 0.0f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            if (sm_m[w] == NEG_INF) continue;                  // a warp that saw no key
            v += expf(sm_m[w] - top) * (d < hd ? sm_acc[w][d] : sm_l[w]);
        }
        out[d] = d == hd ? top : v;
    }
}

// grid (T, H), threads over hd: out[t, h] = the splits' partials merged
template <typename T>
__device__ void attention_merge(T* out, const float* part, int H, int hd, int splits,
                                long long s_ot, long long s_oh) {
    int t = blockIdx.x, h = blockIdx.y;
    const float* p = part + (long long)(t * H + h) * splits * (hd + 2);
    float top = NEG_INF;
    for (int sp = 0; sp < splits; ++sp) top = fmaxf(top, p[sp * (hd + 2) + hd]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int sp = 0; sp < splits; ++sp) {
            const float* r = p + sp * (hd + 2);
            if (r[hd] == NEG_INF) continue;          // an empty split
            float f = expf(r[hd] - top);
            num += f * r[d];
            den += f * r[hd + 1];
        }
        out[t * s_ot + h * s_oh + d] = from_f<T>(num / den);
    }
}

// extern "C" entry points, one per op and storage type (kernels.py picks by suffix)
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
    long long sw, int vec) { gemv<T>(o, x, w, r, N, K, sw, vec); }                           \
extern "C" __global__ void cache_write_##SUF(T* kc, T* vc, const T* k, const T* v,           \
    const int* pos, int KV, int hd, long long a, long long b, long long c, long long d,       \
    long long sc) { cache_write<T>(kc, vc, k, v, pos, KV, hd, a, b, c, d, sc); }             \
extern "C" __global__ void attention_split_##SUF(float* p, const T* q, const T* kc,          \
    const T* vc, const int* pos, int H, int KV, int hd, float scale, int splits,             \
    long long sqt, long long sqh, long long sc) {                                            \
    attention_split<T>(p, q, kc, vc, pos, H, KV, hd, scale, splits, sqt, sqh, sc); }         \
extern "C" __global__ void attention_merge_##SUF(T* o, const float* p, int H, int hd,        \
    int splits, long long sot, long long soh) {                                              \
    attention_merge<T>(o, p, H, hd, splits, sot, soh); }

FOR_TYPE(float, f32)
FOR_TYPE(__half, f16)
FOR_TYPE(__nv_bfloat16, bf16)
