// cuda:cupy kernels but the GEMV (compiled by NVRTC after common.cuh; see kernels.py, which
// also defines the limits ATTN_WARPS, MAX_HD, DEC_WARPS, MAX_G and MAX_SPLITS). Every pointer
// comes with its strides in elements, so the kernels work on the executor's column views
// (q, k, v of one qkv buffer; gate and up of one w1|w3 output). Each kernel calls pdl_start
// before it reads anything an earlier kernel writes.
#define NEG_INF __int_as_float(0xff800000)     // NVRTC has no math.h INFINITY

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
    pdl_start();
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < D) out[t * s_out + c] = table[(long long)ids[t] * s_tab + c];
}

// grid (T); out = x / sqrt(mean(x^2) + eps) * w
template <typename T>
__device__ void rmsnorm(T* out, const T* x, const T* w, int D, float eps, long long s_out,
                        long long s_x) {
    pdl_start();
    const T* row = x + blockIdx.x * s_x;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < D; c += blockDim.x) { float v = to_f(row[c]); ss += v * v; }
    float inv = rsqrtf(block_sum(ss) / D + eps);
    for (int c = threadIdx.x; c < D; c += blockDim.x)
        out[blockIdx.x * s_out + c] = from_f<T>(to_f(row[c]) * inv * to_f(w[c]));
}

// Element d of a head rotated by RoPE: the pair (x[2i], x[2i+1]) turns by the angle of
// cos[i], sin[i]; x is element d, partner element d ^ 1. Rounded to T, as rope's in-place
// result would be.
template <typename T>
__device__ __forceinline__ float rotated(float x, float partner, int d, const float* cos_row,
                                         const float* sin_row) {
    float c = cos_row[d / 2], s = sin_row[d / 2];
    return to_f(from_f<T>(d & 1 ? partner * s + x * c : x * c - partner * s));
}

// grid (T, H + KV), threads over the hd/2 pairs; pos[0] + t is token t's position
template <typename T>
__device__ void rope(T* q, T* k, const int* pos, const float* cos_t, const float* sin_t,
                     int H, int hd, long long sq_t, long long sq_h, long long sk_t,
                     long long sk_h, long long s_tab) {
    pdl_start();
    int t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    if (i >= hd / 2) return;
    T* x = h < H ? q + t * sq_t + h * sq_h : k + t * sk_t + (h - H) * sk_h;
    const float* cos_row = cos_t + (pos[0] + t) * s_tab;
    const float* sin_row = sin_t + (pos[0] + t) * s_tab;
    float even = to_f(x[2 * i]), odd = to_f(x[2 * i + 1]);
    x[2 * i] = from_f<T>(rotated<T>(even, odd, 2 * i, cos_row, sin_row));
    x[2 * i + 1] = from_f<T>(rotated<T>(odd, even, 2 * i + 1, cos_row, sin_row));
}

// grid (T, column blocks)
template <typename T>
__device__ void silu_mul(T* out, const T* gate, const T* up, int N, long long s_out,
                         long long s_g, long long s_u) {
    pdl_start();
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float g = to_f(gate[t * s_g + c]);
    out[t * s_out + c] = from_f<T>(g / (1.0f + expf(-g)) * to_f(up[t * s_u + c]));
}

template <typename T>
__device__ void add(T* out, const T* a, const T* b, int N, long long s_out, long long s_a,
                    long long s_b) {
    pdl_start();
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < N) out[t * s_out + c] = from_f<T>(to_f(a[t * s_a + c]) + to_f(b[t * s_b + c]));
}

// q8_0 weights (plugins/int8/pack.py) as dense rows, for prefill's GEMM:
// out[n, k] = q[n, k] * s[n, k / group]. grid (N, column blocks): a thread takes 16
// consecutive values. Where vec (K and both row strides multiples of 16, both pointers
// 16-byte aligned), it loads them in one 16-byte piece and stores them in whole 16-byte
// pieces; with a group of whole 16s they share one scale.
template <typename T>
__device__ void dequantize_q8(T* out, const signed char* q, const float* s, int K, int group,
                              int vec, long long s_out, long long s_q, long long s_s) {
    pdl_start();                          // the GEMM of a matrix before may still read out
    long long n = blockIdx.x;
    int k0 = (blockIdx.y * blockDim.x + threadIdx.x) * 16;
    if (k0 >= K) return;
    const signed char* row = q + n * s_q;
    const float* scales = s + n * s_s;
    T* dst = out + n * s_out + k0;
    if (vec) {
        uint4 piece = *reinterpret_cast<const uint4*>(row + k0);
        const signed char* v = reinterpret_cast<const signed char*>(&piece);
        union { T values[16]; uint4 pieces[16 * sizeof(T) / 16]; } w;
        float scale = scales[k0 / group];
#pragma unroll
        for (int i = 0; i < 16; ++i)
            w.values[i] = from_f<T>(v[i] * (group % 16 == 0 ? scale : scales[(k0 + i) / group]));
#pragma unroll
        for (int p = 0; p < 16 * (int)sizeof(T) / 16; ++p)
            reinterpret_cast<uint4*>(dst)[p] = w.pieces[p];
        return;
    }
    for (int i = 0; i < 16 && k0 + i < K; ++i)
        dst[i] = from_f<T>(row[k0 + i] * scales[(k0 + i) / group]);
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

// The block's best (value, index) by beats, in thread 0.
__device__ void block_best(float& bv, int& bi, int V) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, bv, o);
        int oi = __shfl_xor_sync(0xffffffff, bi, o);
        if (beats(ov, oi, bv, bi, V)) { bv = ov; bi = oi; }
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { best_v[warp] = bv; best_i[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < blockDim.x / 32; ++w)
            if (beats(best_v[w], best_i[w], bv, bi, V)) { bv = best_v[w]; bi = best_i[w]; }
}

// grid (T, chunks of ARGMAX_CHUNK logits), ARGMAX_THREADS threads: the index of the first
// largest logit (the first NaN if any, as numpy.argmax). A block finds its chunk's best (all
// its loads in flight at once); the last block of a row to finish (an atomic counter tells)
// picks among the chunks' bests, which part_v and part_i [T, chunks] hold.
template <typename T>
__device__ void argmax(int* out, float* part_v, int* part_i, int* counters, const T* logits,
                       int V, long long s_l) {
    constexpr int EACH = ARGMAX_CHUNK / ARGMAX_THREADS;
    __shared__ bool last;
    pdl_start();
    int t = blockIdx.x, chunks = gridDim.y;
    const T* row = logits + t * s_l;
    int begin = blockIdx.y * ARGMAX_CHUNK, end = min(begin + ARGMAX_CHUNK, V);
    float v[EACH];
#pragma unroll
    for (int i = 0; i < EACH; ++i) v[i] = to_f(row[min(begin + threadIdx.x + i * ARGMAX_THREADS,
                                                       V - 1)]);
    float bv = 0.0f;
    int bi = V;
#pragma unroll
    for (int i = 0; i < EACH; ++i) {
        int c = begin + threadIdx.x + i * ARGMAX_THREADS;
        if (c < end && beats(v[i], c, bv, bi, V)) { bv = v[i]; bi = c; }
    }
    block_best(bv, bi, V);
    int* arrivals = counters + t;
    if (threadIdx.x == 0) {
        part_v[t * chunks + blockIdx.y] = bv;
        part_i[t * chunks + blockIdx.y] = bi;
        __threadfence();                              // the best, before the arrival
        last = atomicAdd(arrivals, 1) == chunks - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    bv = 0.0f;
    bi = V;
    for (int c = threadIdx.x; c < chunks; c += ARGMAX_THREADS) {
        float cv = __ldcg(part_v + t * chunks + c);
        int ci = __ldcg(part_i + t * chunks + c);
        if (beats(cv, ci, bv, bi, V)) { bv = cv; bi = ci; }
    }
    block_best(bv, bi, V);
    if (threadIdx.x == 0) {
        out[t] = bi;
        *arrivals = 0;                                // ready for the next step
    }
}

// ---------------------------------------------------------------- sampling
// sample (core/reference.py's sample, exactly) in one block of SAMPLE_THREADS threads.
// Tokens are ranked by a distinct 64-bit order key, smaller first: the logit descending, then
// the token id ascending (the reference's stable sort). Every rule keeps a prefix of that
// order, so each cut is a key: the smallest key whose count, or weight, of keys up to it
// reaches a target. Radix passes (8 bits of the key each) narrow it down to a bucket of keys
// few enough to sort in shared memory, and one thread walks them. Weights are
// exp((logit - max) / temperature) in float32; only a draw within float32 rounding of the
// boundary between two tokens can land on the neighbour of the reference's.
// With top-k up to SAMPLE_THREADS (the usual case) the top-k itself is sorted, and the
// other rules run on it.
#define KEY_MAX 0xffffffffffffffffULL

__device__ __forceinline__ unsigned long long order_key(float logit, int id) {
    unsigned b = __float_as_uint(logit == 0.0f ? 0.0f : logit);      // -0 ties +0, as in numpy
    unsigned ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);   // larger float, larger
    return ((unsigned long long)~ascending << 32) | (unsigned)id;
}

__device__ __forceinline__ int id_of(unsigned long long key) { return (int)(key & 0xffffffffu); }

struct Sampling {               // the weights' scale, and the ids [begin, end) the block reads
    float max, inv_t;
    int begin, end;
};

template <typename T>
__device__ __forceinline__ float weight_of(const T* logits, int id, const Sampling& s) {
    return expf((to_f(logits[id]) - s.max) * s.inv_t);
}

// The keys [lo, hi] that a search narrowed down to, and the count or weight of the keys
// below lo (up to the search's limit).
struct Window {
    unsigned long long lo, hi;
    float below;
};

// Narrows the search for the smallest key up to limit whose count (MASS: weight) of keys up
// to it is >= target (STRICT: > target) to a window of at most SAMPLE_THREADS keys: the
// bucket of the pass where it lies, or with WHOLE every key up to that bucket's last (so
// the top-k's window holds all of it). lo = KEY_MAX: no key reaches the target.
template <typename T, bool MASS, bool STRICT, bool WHOLE>
__device__ Window narrow(const T* logits, const Sampling& s, unsigned long long limit,
                         float target) {
    __shared__ unsigned counts[256];
    __shared__ float masses[256];
    __shared__ Window found;
    __shared__ bool done;
    unsigned long long prefix = 0;
    float below = 0.0f;
    int lane = threadIdx.x % 32;
    for (int shift = 56; shift >= 0; shift -= 8) {
        unsigned long long settled = shift == 56 ? 0ULL : KEY_MAX << (shift + 8);
        for (int d = threadIdx.x; d < 256; d += blockDim.x) {
            counts[d] = 0;
            masses[d] = 0.0f;
        }
        __syncthreads();
        for (int base = s.begin; base < s.end; base += blockDim.x) { // every lane, every round
            int id = base + threadIdx.x;
            unsigned long long key = id < s.end ? order_key(to_f(logits[id]), id) : KEY_MAX;
            bool take = id < s.end && key <= limit && (key & settled) == prefix;
            int digit = take ? (int)((key >> shift) & 255) : 256;
            unsigned same = __match_any_sync(0xffffffffu, digit);  // the lanes in my bucket
            bool leader = take && lane == __ffs(same) - 1;       // one atomic a bucket a warp:
            if (leader) atomicAdd(&counts[digit], __popc(same)); // most keys share a bucket
            if (MASS) {                                          // in the first passes
                float w = take ? weight_of(logits, id, s) : 0.0f, sum = 0.0f;
                for (int l = 0; l < 32; ++l) {
                    float other = __shfl_sync(0xffffffffu, w, l);
                    if ((same >> l) & 1u) sum += other;
                }
                if (leader) atomicAdd(&masses[digit], sum);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int d = 0;
            for (; d < 256; ++d) {
                float v = MASS ? masses[d] : (float)counts[d];
                if (STRICT ? below + v > target : below + v >= target) break;
                below += v;
            }
            if (d == 256) {
                found = Window{KEY_MAX, KEY_MAX, below};
                done = true;
            } else {
                unsigned long long lo = prefix | ((unsigned long long)d << shift);
                unsigned long long hi = lo | ((1ULL << shift) - 1);
                float n = WHOLE ? below + counts[d] : counts[d];  // WHOLE: below is a count
                done = n <= SAMPLE_THREADS || shift == 0;
                found = done && WHOLE ? Window{0, hi, 0.0f} : Window{lo, hi, below};
            }
        }
        __syncthreads();
        if (done) return found;
        prefix = found.lo;                         // the next pass narrows this bucket
        below = found.below;
        __syncthreads();                           // every thread has them before the next pass
    }
    return found;                                  // not reached: shift 0 is always done
}

// keys[0, count) sorted ascending in place (bitonic; the slots up to the next power of 2 hold
// KEY_MAX).
__device__ void sort_keys(unsigned long long* keys, int count) {
    int size_max = 2;
    while (size_max < count) size_max <<= 1;
    for (int size = 2; size <= size_max; size <<= 1)
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < size_max; i += blockDim.x) {
                int j = i ^ stride;
                if (j > i && (keys[i] > keys[j]) == ((i & size) == 0)) {
                    unsigned long long k = keys[i];
                    keys[i] = keys[j];
                    keys[j] = k;
                }
            }
            __syncthreads();
        }
}

// The keys in [lo, hi], up to limit, sorted ascending into keys (at most SAMPLE_THREADS);
// their number.
template <typename T>
__device__ int gather_sorted(const T* logits, const Sampling& s, unsigned long long lo,
                             unsigned long long hi, unsigned long long* keys) {
    __shared__ int n;
    if (threadIdx.x == 0) n = 0;
    for (int i = threadIdx.x; i < SAMPLE_THREADS; i += blockDim.x) keys[i] = KEY_MAX;
    __syncthreads();
    for (int id = s.begin + threadIdx.x; id < s.end; id += blockDim.x) {
        unsigned long long key = order_key(to_f(logits[id]), id);
        if (key >= lo && key <= hi) keys[atomicAdd(&n, 1)] = key;
    }
    __syncthreads();
    int count = n;
    sort_keys(keys, count);
    return count;
}

// The smallest key up to limit whose count (MASS: weight) of keys up to it is >= target
// (STRICT: > target); KEY_MAX if none. Every thread gets it.
template <typename T, bool MASS, bool STRICT>
__device__ unsigned long long find_key(const T* logits, const Sampling& s,
                                       unsigned long long limit, float target,
                                       unsigned long long* keys) {
    __shared__ unsigned long long result;
    Window w = narrow<T, MASS, STRICT, false>(logits, s, limit, target);
    if (w.lo == KEY_MAX) return KEY_MAX;
    int n = gather_sorted(logits, s, w.lo, min(w.hi, limit), keys);
    if (threadIdx.x == 0) {
        float acc = w.below;
        result = n > 0 ? keys[n - 1] : KEY_MAX;     // past the end by rounding: the last one
        for (int j = 0; j < n; ++j) {
            acc += MASS ? weight_of(logits, id_of(keys[j]), s) : 1.0f;
            if (STRICT ? acc > target : acc >= target) { result = keys[j]; break; }
        }
    }
    __syncthreads();
    unsigned long long key = result;
    __syncthreads();
    return key;
}

// The block's minimum of v (every thread gets it).
__device__ unsigned long long block_min(unsigned long long v) {
    __shared__ unsigned long long warp_min[32];
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) warp_min[warp] = v;
    __syncthreads();
    v = lane < warps ? warp_min[lane] : KEY_MAX;
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Over the keys up to limit: the total weight, and the largest key whose weight is >= floor
// (KEY_MAX for none). Weights fall along the order, so those keys are a prefix.
template <typename T>
__device__ void prefix_stats(const T* logits, const Sampling& s, unsigned long long limit,
                             float floor, float& total, unsigned long long& last_heavy) {
    float sum = 0.0f;
    unsigned long long heavy = 0;                      // 0: none yet
    for (int id = s.begin + threadIdx.x; id < s.end; id += blockDim.x) {
        unsigned long long key = order_key(to_f(logits[id]), id);
        if (key > limit) continue;
        float w = weight_of(logits, id, s);
        sum += w;
        if (w >= floor) heavy = max(heavy, key + 1);
    }
    total = block_sum(sum);
    heavy = ~block_min(~heavy);                        // the block's maximum
    last_heavy = heavy == 0 ? KEY_MAX : heavy - 1;
}

// The rules and the draw on the first n keys of the order, sorted: the block weighs them
// once, then one thread cuts and draws, and writes the token to out.
template <typename T>
__device__ void pick_sorted(int* out, const T* logits, const Sampling& s,
                            const unsigned long long* keys, int n, float top_p, float min_p,
                            float u) {
    __shared__ float weights[SAMPLE_THREADS];
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        weights[j] = weight_of(logits, id_of(keys[j]), s);
    __syncthreads();
    if (threadIdx.x != 0) return;
    float total = 0.0f;
    for (int j = 0; j < n; ++j) total += weights[j];
    if (top_p < 1.0f) {
        float cum = 0.0f;
        for (int j = 0; j < n; ++j) {
            cum += weights[j];
            if (cum >= top_p * total) { n = j + 1; break; }
        }
    }
    if (min_p > 0.0f) {                    // the first key has weight 1: the largest
        int c = 0;
        while (c < n && weights[c] >= min_p) ++c;
        n = max(1, c);
    }
    total = 0.0f;
    for (int j = 0; j < n; ++j) total += weights[j];
    float target = u * total, cum = 0.0f;
    int pick = n - 1;
    for (int j = 0; j < n; ++j) {
        cum += weights[j];
        if (cum > target) { pick = j; break; }
    }
    *out = id_of(keys[pick]);
}

// Whether the sampling takes the candidates of CANDIDATE_BLOCKS slices of the vocabulary:
// a top-k below the vocabulary and up to CANDIDATES each (the usual 40 or 50).
#define CANDIDATES (SAMPLE_THREADS / CANDIDATE_BLOCKS)
__device__ __forceinline__ bool from_candidates(const float* params, int V) {
    int top_k = (int)params[1];
    return params[0] > 0.0f && top_k > 0 && top_k <= CANDIDATES && top_k < V;
}

// grid (CANDIDATE_BLOCKS): block b hands sample the top-k keys of its slice of the
// vocabulary (KEY_MAX in the slots it leaves), candidates[b * CANDIDATES, ...): the top-k of
// the vocabulary are among them. Nothing to do unless from_candidates.
template <typename T>
__device__ void sample_candidates(unsigned long long* candidates, const T* logits,
                                  const float* params, int V) {
    __shared__ unsigned long long sorted[SAMPLE_THREADS];
    pdl_start();
    if (!from_candidates(params, V)) return;
    int slice = (V + gridDim.x - 1) / gridDim.x;
    int begin = min(V, (int)blockIdx.x * slice);
    Sampling s{0.0f, 0.0f, begin, min(V, begin + slice)};
    int length = s.end - s.begin, take = min((int)params[1], length);
    unsigned long long hi = take < length ? narrow<T, false, false, true>(logits, s, KEY_MAX,
                                                                          take).hi
                                          : KEY_MAX;
    gather_sorted(logits, s, 0, hi, sorted);
    for (int i = threadIdx.x; i < CANDIDATES; i += blockDim.x)
        candidates[blockIdx.x * CANDIDATES + i] = i < take ? sorted[i] : KEY_MAX;
}

// params = (temperature, top_k, top_p, min_p); u ~ U[0, 1).
template <typename T>
__device__ void sample(int* out, const unsigned long long* candidates, const T* logits,
                       const float* params, const float* u, int V) {
    __shared__ unsigned long long sorted[SAMPLE_THREADS];
    pdl_start();
    float temperature = params[0], top_p = params[2], min_p = params[3];
    int top_k = (int)params[1];
    if (from_candidates(params, V)) {      // the slices' candidates sorted: the top-k first
        for (int i = threadIdx.x; i < SAMPLE_THREADS; i += blockDim.x)
            sorted[i] = __ldcg(candidates + i);
        __syncthreads();
        sort_keys(sorted, SAMPLE_THREADS);
        Sampling s{to_f(logits[id_of(sorted[0])]), 1.0f / temperature, 0, V};
        pick_sorted(out, logits, s, sorted, top_k, top_p, min_p, u[0]);
        return;
    }
    unsigned long long first = KEY_MAX;
    for (int id = threadIdx.x; id < V; id += blockDim.x)
        first = min(first, order_key(to_f(logits[id]), id));
    first = block_min(first);
    if (temperature <= 0.0f) {
        if (threadIdx.x == 0) *out = id_of(first);
        return;
    }
    Sampling s{to_f(logits[id_of(first)]), 1.0f / temperature, 0, V};
    int keep = top_k > 0 ? min(top_k, V) : V;
    if (keep <= SAMPLE_THREADS) {          // the top-k (or the whole vocabulary) sorted
        unsigned long long hi = keep < V ? narrow<T, false, false, true>(logits, s, KEY_MAX,
                                                                         keep).hi
                                         : KEY_MAX;
        gather_sorted(logits, s, 0, hi, sorted);
        pick_sorted(out, logits, s, sorted, keep, top_p, min_p, u[0]);
        return;
    }
    unsigned long long limit = keep < V ? find_key<T, false, false>(logits, s, KEY_MAX, keep,
                                                                    sorted)
                                        : KEY_MAX;
    float total;
    unsigned long long heavy;
    if (top_p < 1.0f) {
        prefix_stats(logits, s, limit, 0.0f, total, heavy);
        limit = min(limit, find_key<T, true, false>(logits, s, limit, top_p * total, sorted));
    }
    prefix_stats(logits, s, limit, min_p, total, heavy);
    if (min_p > 0.0f) {                    // the first key has weight 1: the largest
        limit = heavy == KEY_MAX ? first : min(limit, heavy);
        prefix_stats(logits, s, limit, 0.0f, total, heavy);
    }
    unsigned long long drawn = find_key<T, true, true>(logits, s, limit, u[0] * total, sorted);
    if (threadIdx.x == 0) *out = id_of(min(drawn, limit));
}

// Ends a replayed decode step (one thread): the picked id waits in slot pos % R, where the
// next R - 1 steps leave it alone, and the next step finds its position on the device.
extern "C" __global__ void advance(int* pos, const int* ids, int* picked, int R) {
    pdl_start();
    int p = pos[0];
    picked[p % R] = ids[0];
    pos[0] = p + 1;
}

// grid (T, element blocks); writes the T new keys, rotated by the tables' rows pos[0] + t
// (rope_attention; attention's tables turn by nothing), and values into cache rows pos[0] ..
template <typename T>
__device__ void cache_write(T* kc, T* vc, const T* k, const T* v, const int* pos,
                            const float* cos_t, const float* sin_t, int KV, int hd,
                            long long s_kt, long long s_kh, long long s_vt, long long s_vh,
                            long long s_c, long long s_tab) {
    pdl_start();
    int t = blockIdx.x, e = blockIdx.y * blockDim.x + threadIdx.x;
    if (e >= KV * hd) return;
    long long row = (long long)(pos[0] + t) * s_c, at = (long long)(pos[0] + t) * s_tab;
    int h = e / hd, d = e % hd;
    const T* kr = k + t * s_kt + h * s_kh;
    kc[row + e] = from_f<T>(rotated<T>(to_f(kr[d]), to_f(kr[d ^ 1]), d, cos_t + at, sin_t + at));
    vc[row + e] = v[t * s_vt + h * s_vh + d];
}

// More tokens: grid (T, H), ATTN_WARPS warps; query t sees the keys 0..pos[0]+t. An online
// softmax per warp (a key per warp step, head dims over lanes), the warps merged in shared
// memory.
template <typename T>
__device__ void attention_prefill(T* out, const T* q, const T* kc, const T* vc, const int* pos,
                                  int H, int KV, int hd, float scale, long long s_qt,
                                  long long s_qh, long long s_ot, long long s_oh, long long s_c) {
    __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS], sm_acc[ATTN_WARPS][MAX_HD];
    pdl_start();
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

// More tokens in 16-bit types, head sizes 64 and 128: a block of 4 warps takes 64 queries
// (16 a warp) of one head, rotated by the tables' rows (rope_attention; attention's turn by
// nothing) as it loads them, and walks the visible keys in tiles of PF_KEYS rows, staged in
// shared memory. Scores and values go through the tensor cores (mma.sync m16n8k16, float32
// accumulation); each thread holds its fragments' rows of the online softmax. Fragment
// layouts are the PTX ISA's: with g = lane / 4 and c = lane % 4, an A register holds row g
// or g + 8, columns 2c and 2c + 1 (+ 8); B holds rows 2c, 2c + 1 (+ 8) of column g; the
// float accumulator rows g and g + 8, columns 2c and 2c + 1. A score fragment so laid out
// is already the A fragment of the next product, so probabilities never leave registers.
#define MMA16816(T, PTX_TYPE)                                                                \
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,   \
                                         unsigned b1, T) {                                    \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 "      \
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                      \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                             \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));             \
}
MMA16816(__nv_bfloat16, "bf16")
MMA16816(__half, "f16")
__device__ __forceinline__ unsigned pack2(float lo, float hi, __nv_bfloat16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, __half) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}
// Two 16-bit values as one register, the first in the low half.
__device__ __forceinline__ unsigned join2(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

template <typename T, int HD>
__device__ void attention_prefill_mma(T* out, const T* q, const T* kc, const T* vc,
                                      const int* pos, const float* cos_t, const float* sin_t,
                                      int n_tok, int H, int KV, float scale_log2, long long s_qt,
                                      long long s_qh, long long s_ot, long long s_oh,
                                      long long s_c, long long s_tab) {
    constexpr int LD = HD + 8;          // padded rows: each fragment load hits 32 banks
    __shared__ __align__(16) unsigned short ks[PF_KEYS * LD], vs[PF_KEYS * LD];
    pdl_start();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int h = blockIdx.y;
    const long long col = (long long)(h / (H / KV)) * HD;
    const int p0 = pos[0], q0 = blockIdx.x * 64 + warp * 16;     // the warp's first query
    unsigned qa[HD / 16][4];                                     // the warp's queries, A
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int t = q0 + g + 8 * (r & 1), d = kk * 16 + 2 * c + 8 * (r >> 1);
            if (t >= n_tok) { qa[kk][r] = 0u; continue; }        // padding queries: zeros
            const T* e = q + h * s_qh + (long long)t * s_qt + d;
            const float* cr = cos_t + (long long)(p0 + t) * s_tab;
            const float* sr = sin_t + (long long)(p0 + t) * s_tab;
            float x0 = to_f(e[0]), x1 = to_f(e[1]);
            qa[kk][r] = pack2(rotated<T>(x0, x1, d, cr, sr), rotated<T>(x1, x0, d + 1, cr, sr),
                              T());
        }
    float o[HD / 8][4] = {};
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};     // rows g and g + 8
    const int last = p0 + min(blockIdx.x * 64 + 63, n_tok - 1);  // the block's last key
    const int warp_last = p0 + q0 + 15;
    for (int k0 = 0; k0 <= last; k0 += PF_KEYS) {
        __syncthreads();                                         // the last tile is used
        for (int i = threadIdx.x; i < PF_KEYS * HD / 8; i += blockDim.x) {
            int r = i / (HD / 8), d = i % (HD / 8) * 8;
            uint4 kr = make_uint4(0, 0, 0, 0), vr = kr;          // past the last key: zeros
            if (k0 + r <= last) {
                long long at = (k0 + r) * s_c + col + d;
                kr = *reinterpret_cast<const uint4*>(kc + at);
                vr = *reinterpret_cast<const uint4*>(vc + at);
            }
            *reinterpret_cast<uint4*>(ks + r * LD + d) = kr;
            *reinterpret_cast<uint4*>(vs + r * LD + d) = vr;
        }
        __syncthreads();
        if (k0 > warp_last) continue;                            // no key here is visible
        float s[PF_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const unsigned short* kr = ks + (n * 8 + g) * LD + 2 * c;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk)
                mma16816(s[n], qa[kk], *reinterpret_cast<const unsigned*>(kr + kk * 16),
                         *reinterpret_cast<const unsigned*>(kr + kk * 16 + 8), T());
        }
        float top[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int key = k0 + n * 8 + 2 * c + (e & 1), row = e >> 1;
                bool seen = key <= p0 + q0 + g + 8 * row;
                s[n][e] = seen ? s[n][e] * scale_log2 : NEG_INF;
                top[row] = fmaxf(top[row], s[n][e]);
            }
        float alpha[2];
#pragma unroll
        for (int row = 0; row < 2; ++row) {                      // the quad shares a row
            top[row] = fmaxf(top[row], __shfl_xor_sync(0xffffffff, top[row], 1));
            top[row] = fmaxf(top[row], __shfl_xor_sync(0xffffffff, top[row], 2));
            alpha[row] = exp2f(m[row] - top[row]);
            m[row] = top[row];
            l[row] *= alpha[row];
        }
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2f(s[n][e] - m[e >> 1]);
                l[e >> 1] += s[n][e];
            }
#pragma unroll
        for (int d = 0; d < HD / 8; ++d) {
            o[d][0] *= alpha[0]; o[d][1] *= alpha[0];
            o[d][2] *= alpha[1]; o[d][3] *= alpha[1];
        }
#pragma unroll
        for (int kk = 0; kk < PF_KEYS / 16; ++kk) {
            const unsigned pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1], T()),
                                    pack2(s[2 * kk][2], s[2 * kk][3], T()),
                                    pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T()),
                                    pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T())};
            const unsigned short* vr = vs + (kk * 16 + 2 * c) * LD + g;
#pragma unroll
            for (int d = 0; d < HD / 8; ++d)
                mma16816(o[d], pa, join2(vr[d * 8], vr[LD + d * 8]),
                         join2(vr[8 * LD + d * 8], vr[9 * LD + d * 8]), T());
        }
    }
#pragma unroll
    for (int row = 0; row < 2; ++row) {
        l[row] += __shfl_xor_sync(0xffffffff, l[row], 1);
        l[row] += __shfl_xor_sync(0xffffffff, l[row], 2);
        int t = q0 + g + 8 * row;
        if (t >= n_tok) continue;
        T* orow = out + t * s_ot + h * s_oh + 2 * c;
#pragma unroll
        for (int d = 0; d < HD / 8; ++d) {
            orow[d * 8] = from_f<T>(o[d][2 * row] / l[row]);
            orow[d * 8 + 1] = from_f<T>(o[d][2 * row + 1] / l[row]);
        }
    }
}

// MINE running softmaxes with nothing seen yet: maximum -inf, sum 0, weighted values 0.
template <int MINE, int PER>
__device__ __forceinline__ void empty_softmax(float (&m)[MINE], float (&l)[MINE],
                                              float (&acc)[MINE][PER]) {
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
        m[i] = NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < PER; ++j) acc[i][j] = 0.0f;
    }
}

// One token: grid (kv heads, splits), DEC_WARPS warps; PER = head dims per lane (hd <= 32 PER).
// A block reduces its split of the keys 0..pos for the G <= MAX_G query heads sharing its kv
// head, so each key and value is read once. q and the new key are rotated here by the tables'
// row pos[0] (rope_attention; attention passes tables that rotate by nothing). The new key and
// value come from k_new and v_new: split 0 writes them into the cache row pos[0], and the
// block whose tile holds that row puts them into the tile instead of what it read there.
// Splits are whole tiles of 32 keys, so at short lengths the last splits are empty.
// Keys come in tiles of 32 through shared memory: warp w owns query heads w, w + DEC_WARPS..,
// a lane scores one key of the tile, then sums a slice of the head dims over the tile's keys.
// The last block of a kv head to finish (an atomic counter tells) merges the splits'
// partials [H, splits, acc | max | sum] and writes out.
template <typename T, int PER>
__device__ void attention_decode(T* out, float* part, int* counters, const T* q,
                                 const T* k_new, const T* v_new, T* kc, T* vc, const int* pos,
                                 const float* cos_t, const float* sin_t, int H, int KV, int hd,
                                 float scale, int splits, long long s_qh, long long s_kh,
                                 long long s_vh, long long s_oh, long long s_c,
                                 long long s_tab) {
    constexpr int HD = 32 * PER;
    __shared__ float sk[32][HD + 1], sv[32][HD], sq[MAX_G][HD], fresh_k[HD], fresh_v[HD];
    __shared__ float part_scores[DEC_WARPS][32];
    __shared__ bool last;
    // Loops over a block's share of a tile run unrolled, their loads unconditional (at a
    // clamped address when out of range): every load is in flight at once, one round trip
    // to memory instead of one per iteration.
    constexpr int THREADS = 32 * DEC_WARPS, Q_EACH = MAX_G * HD / THREADS;
    constexpr int T_EACH = HD / DEC_WARPS;             // 32 keys x HD values over the threads
    int kvh = blockIdx.x, sp = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // The position and the cached rows before it are the previous steps' work: the first
    // tile loads before pdl_start, while the kernel before finishes.
    int G = H / KV, newest = pos[0], n = newest + 1;
    int chunk = ((n + splits - 1) / splits + 31) / 32 * 32, used = (n + chunk - 1) / chunk;
    int start = sp * chunk, end = min(start + chunk, n);
    long long col = (long long)kvh * hd;
    float kt[T_EACH], vt[T_EACH];
    auto load_tile = [&](int s0) {
#pragma unroll
        for (int i = 0; i < T_EACH; ++i) {
            int e = threadIdx.x + i * THREADS, r = e / HD, d = e % HD, s = s0 + r;
            bool in = s < end && d < hd;
            long long at = min(s, end - 1) * s_c + col + min(d, hd - 1);
            float k = to_f(kc[at]), v = to_f(vc[at]);
            kt[i] = in ? k : 0.0f;
            vt[i] = in ? v : 0.0f;
        }
    };
    if (start < end) load_tile(start);
    pdl_start();
    const float* cos_row = cos_t + newest * s_tab;
    const float* sin_row = sin_t + newest * s_tab;
    const T* k_row = k_new + kvh * s_kh;
    const T* v_row = v_new + kvh * s_vh;
    if (start < end) {                                 // a split past the keys only arrives
#pragma unroll
        for (int i = 0; i < Q_EACH; ++i) {
            int e = threadIdx.x + i * THREADS, g = e / HD, d = e % HD, dd = min(d, hd - 1);
            const T* head = q + (kvh * G + min(g, G - 1)) * s_qh;
            float x = rotated<T>(to_f(head[dd]), to_f(head[dd ^ 1]), dd, cos_row, sin_row);
            sq[g][d] = g < G && d < hd ? x * scale : 0.0f;
        }
    }
    if (sp == 0 || (start <= newest && newest < end)) {
        for (int d = threadIdx.x; d < hd; d += THREADS) {
            float x = rotated<T>(to_f(k_row[d]), to_f(k_row[d ^ 1]), d, cos_row, sin_row);
            fresh_k[d] = x;
            fresh_v[d] = to_f(v_row[d]);
            if (sp == 0) {
                kc[newest * s_c + col + d] = from_f<T>(x);
                vc[newest * s_c + col + d] = v_row[d];
            }
        }
    }
    // Warps and query heads: with G >= DEC_WARPS warp w takes heads w, w + DEC_WARPS, ...
    // (up to MINE, computed together so each key and value element is read once for all),
    // each over all its dims. With fewer heads, KW warps share a head, each taking a slice of
    // SLICE = HD / KW dims: its part of the scores meets the others' in shared memory, and it
    // sums the values of its slice.
    constexpr int MINE = MAX_G / DEC_WARPS;            // query heads per warp
    const int KW = G >= DEC_WARPS ? 1 : min(DEC_WARPS / G, PER);
    const int SLICE = HD / KW, first_d = warp % KW * SLICE, LANE_DIMS = PER / KW;
    int heads[MINE];                                   // this warp's, clamped to a valid one
    bool mine[MINE];                                   // and whether it is one
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
        int g = KW == 1 ? warp + DEC_WARPS * i : warp / KW;
        mine[i] = g < G && (KW == 1 || i == 0);
        heads[i] = min(g, G - 1);
    }
    float m[MINE], l[MINE], acc[MINE][PER];
    empty_softmax(m, l, acc);
    for (int s0 = start; s0 < end; s0 += 32) {
        __syncthreads();                               // the previous tile is used up
#pragma unroll
        for (int i = 0; i < T_EACH; ++i) {
            int e = threadIdx.x + i * THREADS;
            sk[e / HD][e % HD] = kt[i];
            sv[e / HD][e % HD] = vt[i];
        }
        if (s0 + 32 < end) load_tile(s0 + 32);        // the next tile, while this one is used
        if (s0 <= newest && newest < s0 + 32) {        // the cache row of newest is not
            __syncthreads();                           // written yet: the new key instead
            for (int d = threadIdx.x; d < hd; d += THREADS) {
                sk[newest - s0][d] = fresh_k[d];
                sv[newest - s0][d] = fresh_v[d];
            }
        }
        __syncthreads();
        bool key = s0 + lane < end;                    // the lane's key
        float chains[MINE][4];                         // 4 chains of adds a head, not 1
#pragma unroll
        for (int i = 0; i < MINE; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) chains[i][c] = 0.0f;
        for (int d0 = first_d; d0 < first_d + SLICE; d0 += 4) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float k = sk[lane][d0 + c];
#pragma unroll
                for (int i = 0; i < MINE; ++i)
                    if (mine[i]) chains[i][c] += sq[heads[i]][d0 + c] * k;
            }
        }
        float score[MINE];
#pragma unroll
        for (int i = 0; i < MINE; ++i)
            score[i] = (chains[i][0] + chains[i][1]) + (chains[i][2] + chains[i][3]);
        if (KW > 1) {                                  // the slices' parts of the score
            part_scores[warp][lane] = score[0];
            __syncthreads();
            float sum = 0.0f;
            for (int w = warp / KW * KW; w < warp / KW * KW + KW; ++w) sum += part_scores[w][lane];
            score[0] = sum;
        }
        float p[MINE];
#pragma unroll
        for (int i = 0; i < MINE; ++i) {
            float sc = key ? score[i] : NEG_INF, top = sc;
            for (int o = 16; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, o));
            float m_new = fmaxf(m[i], top), alpha = expf(m[i] - m_new);
            p[i] = key ? expf(sc - m_new) : 0.0f;
            float sum = p[i];
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
#pragma unroll
            for (int j = 0; j < PER; ++j) acc[i][j] *= alpha;
        }
#pragma unroll
        for (int r = 0; r < 32; ++r) {
            float pr[MINE];
#pragma unroll
            for (int i = 0; i < MINE; ++i) pr[i] = __shfl_sync(0xffffffff, p[i], r);
#pragma unroll
            for (int j = 0; j < PER; ++j) {
                if (j >= LANE_DIMS) break;
                float v = sv[r][first_d + lane + 32 * j];
#pragma unroll
                for (int i = 0; i < MINE; ++i)
                    if (mine[i]) acc[i][j] += pr[i] * v;
            }
        }
    }
    int row = hd + 2;                                  // a partial: acc, then max, then sum
    if (sp < used) {
#pragma unroll
        for (int i = 0; i < MINE; ++i) {
            if (!mine[i]) continue;
            float* dst = part + ((long long)(kvh * G + heads[i]) * splits + sp) * row;
#pragma unroll
            for (int j = 0; j < PER; ++j) {
                int d = first_d + lane + 32 * j;
                if (j < LANE_DIMS && d < hd) dst[d] = acc[i][j];
            }
            if (lane == 0 && warp % KW == 0) { dst[hd] = m[i]; dst[hd + 1] = l[i]; }
        }
    }
    __syncthreads();                                   // the block's partials are written
    if (threadIdx.x == 0) {
        __threadfence();                               // and visible, before the arrival
        last = atomicAdd(counters + kvh, 1) == splits - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The merge: warp w takes heads w, w + DEC_WARPS, ... A lane holds its head dims of BATCH
    // splits' partials with their maxima and sums, all loaded at once (one round trip per
    // batch), and folds them into a running softmax.
    constexpr int BATCH = 192 / (MINE * (PER + 2)) < MAX_SPLITS ? 192 / (MINE * (PER + 2))
                                                                : MAX_SPLITS;
    const float* partials = part + (long long)kvh * G * splits * row;
    float top[MINE], total[MINE], num[MINE][PER];
    empty_softmax(top, total, num);
    for (int k0 = 0; k0 < used; k0 += BATCH) {
        float pm[MINE][BATCH], pl[MINE][BATCH], pa[MINE][BATCH][PER];
#pragma unroll
        for (int i = 0; i < MINE; ++i) {
            int g = min(warp + DEC_WARPS * i, G - 1);
#pragma unroll
            for (int k = 0; k < BATCH; ++k) {
                const float* p = partials + ((long long)g * splits + min(k0 + k, used - 1)) * row;
                pm[i][k] = __ldcg(p + hd);
                pl[i][k] = __ldcg(p + hd + 1);
#pragma unroll
                for (int j = 0; j < PER; ++j) pa[i][k][j] = __ldcg(p + min(lane + 32 * j, hd - 1));
            }
        }
#pragma unroll
        for (int i = 0; i < MINE; ++i) {
            float t = top[i];
#pragma unroll
            for (int k = 0; k < BATCH; ++k) t = k0 + k < used ? fmaxf(t, pm[i][k]) : t;
            float keep = expf(top[i] - t);             // 0 on the first batch
            total[i] *= keep;
#pragma unroll
            for (int j = 0; j < PER; ++j) num[i][j] *= keep;
#pragma unroll
            for (int k = 0; k < BATCH; ++k) {
                float f = k0 + k < used ? expf(pm[i][k] - t) : 0.0f;
                total[i] += f * pl[i][k];
#pragma unroll
                for (int j = 0; j < PER; ++j) num[i][j] += f * pa[i][k][j];
            }
            top[i] = t;
        }
    }
#pragma unroll
    for (int i = 0; i < MINE; ++i) {
        int g = warp + DEC_WARPS * i;
        if (g >= G) break;
#pragma unroll
        for (int j = 0; j < PER; ++j)
            if (lane + 32 * j < hd)
                out[(kvh * G + g) * s_oh + lane + 32 * j] = from_f<T>(num[i][j] / total[i]);
    }
    if (threadIdx.x == 0) counters[kvh] = 0;           // ready for the next step
}

// extern "C" entry points, one per op and storage type (kernels.py picks by suffix)
#define DECODE(T, SUF, PER)                                                                  \
extern "C" __global__ void attention_decode##PER##_##SUF(T* o, float* p, int* cnt,           \
    const T* q, const T* k, const T* v, T* kc, T* vc, const int* pos, const float* c,         \
    const float* s, int H, int KV, int hd, float scale, int splits, long long sqh,           \
    long long skh, long long svh, long long soh, long long sc, long long st) {               \
    attention_decode<T, PER>(o, p, cnt, q, k, v, kc, vc, pos, c, s, H, KV, hd, scale, splits, \
                             sqh, skh, svh, soh, sc, st); }

#define PREFILL_MMA(T, SUF, HD)                                                              \
extern "C" __global__ void __launch_bounds__(128) attention_prefill_mma##HD##_##SUF(T* o,     \
    const T* q, const T* kc, const T* vc, const int* pos, const float* c, const float* s,     \
    int n, int H, int KV, float scale, long long sqt, long long sqh, long long sot,           \
    long long soh, long long sc, long long st) {                                              \
    attention_prefill_mma<T, HD>(o, q, kc, vc, pos, c, s, n, H, KV, scale, sqt, sqh, sot, soh, \
                                 sc, st); }

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
extern "C" __global__ void argmax_##SUF(int* o, float* pv, int* pi, int* cnt, const T* l,     \
    int V, long long sl) { argmax<T>(o, pv, pi, cnt, l, V, sl); }                            \
extern "C" __global__ void cache_write_##SUF(T* kc, T* vc, const T* k, const T* v,           \
    const int* pos, const float* co, const float* si, int KV, int hd, long long a,            \
    long long b, long long c, long long d, long long sc, long long st) {                      \
    cache_write<T>(kc, vc, k, v, pos, co, si, KV, hd, a, b, c, d, sc, st); }                 \
extern "C" __global__ void attention_prefill_##SUF(T* o, const T* q, const T* kc,             \
    const T* vc, const int* pos, int H, int KV, int hd, float scale, long long sqt,          \
    long long sqh, long long sot, long long soh, long long sc) {                             \
    attention_prefill<T>(o, q, kc, vc, pos, H, KV, hd, scale, sqt, sqh, sot, soh, sc); }     \
extern "C" __global__ void sample_candidates_##SUF(unsigned long long* c, const T* l,         \
    const float* p, int V) { sample_candidates<T>(c, l, p, V); }                             \
extern "C" __global__ void sample_##SUF(int* o, const unsigned long long* c, const T* l,      \
    const float* p, const float* u, int V) { sample<T>(o, c, l, p, u, V); }                  \
extern "C" __global__ void dequantize_q8_##SUF(T* o, const signed char* q, const float* s,   \
    int K, int group, int vec, long long so, long long sq, long long ss) {                   \
    dequantize_q8<T>(o, q, s, K, group, vec, so, sq, ss); }                                  \
DECODE(T, SUF, 1) DECODE(T, SUF, 2) DECODE(T, SUF, 4)

FOR_TYPE(float, f32)
FOR_TYPE(__half, f16)
FOR_TYPE(__nv_bfloat16, bf16)
PREFILL_MMA(__half, f16, 64) PREFILL_MMA(__half, f16, 128)
PREFILL_MMA(__nv_bfloat16, bf16, 64) PREFILL_MMA(__nv_bfloat16, bf16, 128)
