// Shared device code of the pairdecode logit kernels: prepended to each family's .cu by the loader
// (decoding/kernels/cupy_backend.py), so every family compiles as one header-free translation unit with nvcc,
// with NVRTC (CuPy) and, in the tests, as plain C++ in the CPU emulator (tests/kernel_emulator/).
//
// The arithmetic here is the specification in kernels/reference/fused.py, operation for operation:
// every float operation that decides something is written with an explicit rounding intrinsic (__fmul_rn,
// __dmul_rn, ...) so that no multiply-add is contracted, and every sum that decides something is an integer
// sum (exact, order-independent). See docs/KERNELS.md, "Exactness".

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define FULL_MASK 0xffffffffu
// Law weights are floor(exp(s - max) * 2^44): at most 2^44 each, so a row of up to 2^18 ids sums below 2^62.
#define FIXED_POINT_SCALE 17592186044416.0f
#define NEG_INF (-__int_as_float(0x7f800000))

// ---------------------------------------------------------------------------------------------------------
// Loads: DT 0 = float32, 1 = float16, 2 = bfloat16 (16-bit values are read raw and widened exactly).

template <int DT> struct Raw { typedef u16 type; };
template <> struct Raw<0> { typedef float type; };

__device__ __forceinline__ float f16_bits_to_float(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16;
    u32 exponent = ((u32)h >> 10) & 0x1fu;
    u32 mantissa = (u32)h & 0x3ffu;
    if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    float magnitude = (float)mantissa * 5.9604644775390625e-08f;  // subnormal: mantissa * 2^-24, exact
    return sign ? -magnitude : magnitude;
}

template <int DT> __device__ __forceinline__ float load_logit(const typename Raw<DT>::type* row, i64 y) {
    if (DT == 0) return (float)row[y];
    if (DT == 2) return __uint_as_float(((u32)row[y]) << 16);
    return f16_bits_to_float((u16)row[y]);
}

// Order-preserving key of a float: a < b (as floats) iff key(a) < key(b); -0 and +0 share one key.
__device__ __forceinline__ u32 float_key(float f) {
    if (f == 0.0f) f = 0.0f;
    u32 bits = __float_as_uint(f);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// floor(exp(s - m) * 2^44) in float32 arithmetic, truncated to an integer (reference: _law_weights).
__device__ __forceinline__ i64 law_weight(float s, float m) {
    return (i64)__fmul_rn(expf(__fsub_rn(s, m)), FIXED_POINT_SCALE);
}

// floor(max(0, w - q * z)) in float64 (reference: _residual_weights).
__device__ __forceinline__ i64 residual_weight(i64 w, float q, double z) {
    double r = __dsub_rn((double)w, __dmul_rn((double)q, z));
    return r > 0.0 ? (i64)r : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Warp and block reductions. Every thread of the block must call the block-wide ones (they synchronise).

// The reductions' operators: the identity element and the combining function.
struct MaxF32 {
    static __device__ __forceinline__ float identity() { return NEG_INF; }
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
};
struct MaxU64 {
    static __device__ __forceinline__ u64 identity() { return 0ull; }
    static __device__ __forceinline__ u64 apply(u64 a, u64 b) { return b > a ? b : a; }
};
struct SumI64 {
    static __device__ __forceinline__ i64 identity() { return 0; }
    static __device__ __forceinline__ i64 apply(i64 a, i64 b) { return a + b; }
};

template <class Op, class T> __device__ __forceinline__ T warp_reduce(T v) {
    for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Every thread gets the block's reduction: warps reduce, lane 0 of each posts, the first warp's lanes reduce
// the posts again in every warp.
template <int NT, class Op, class T> __device__ T block_reduce(T v) {
    __shared__ T partial[NT / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce<Op>(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < NT / 32 ? partial[lane] : Op::identity();
    v = warp_reduce<Op>(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ i64 warp_sum(i64 v) { return warp_reduce<SumI64>(v); }
template <int NT> __device__ float block_max(float v) { return block_reduce<NT, MaxF32>(v); }
template <int NT> __device__ u64 block_max_u64(u64 v) { return block_reduce<NT, MaxU64>(v); }
template <int NT> __device__ i64 block_sum(i64 v) { return block_reduce<NT, SumI64>(v); }

// Called by every thread of a block once its results for the row are stored: true in the last of the row's
// `before_last + 1` blocks to get here, which may then read the others' results. The first fence orders this
// block's stores before its count, the second the count before the last block's reads.
__device__ __forceinline__ bool last_block_of_row(u32* counter, u32 before_last) {
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(counter, 1u) == before_last;
    __syncthreads();
    if (!s_last) return false;
    __threadfence();
    return true;
}

// Exclusive prefix sum over the block's threads in thread order; *total receives the block's sum.
template <int NT> __device__ i64 block_exclusive_scan(i64 v, i64* total) {
    __shared__ i64 warp_incl[NT / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i64 x = v;
    for (int o = 1; o < 32; o <<= 1) {
        i64 y = __shfl_up_sync(FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_incl[warp] = x;
    __syncthreads();
    if (warp == 0) {
        i64 w = lane < NT / 32 ? warp_incl[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            i64 y = __shfl_up_sync(FULL_MASK, w, o);
            if (lane >= o) w += y;
        }
        if (lane < NT / 32) warp_incl[lane] = w;
    }
    __syncthreads();
    const i64 before = warp == 0 ? 0 : warp_incl[warp - 1];
    *total = warp_incl[NT / 32 - 1];
    __syncthreads();
    return before + x - v;
}

// Packed (value, index) for an argmax whose ties go to the lowest index, as torch.argmax does.
__device__ __forceinline__ u64 argmax_pack(float v, i64 y) {
    return ((u64)float_key(v) << 32) | (u64)(0xffffffffu - (u32)y);
}
__device__ __forceinline__ i64 argmax_index(u64 packed) { return (i64)(0xffffffffu - (u32)(packed & 0xffffffffull)); }

template <class T> __device__ __forceinline__ T load_volatile(const T* p) { return *(const volatile T*)p; }

// ---------------------------------------------------------------------------------------------------------
// Processing of one row without a sort (reference: _law_weights). A Row provides score(y) (the scaled
// float32 score, -inf for an excluded id), key(y) = float_key(score(y)) and weight(y) (the law weight when
// key(y) >= lo, else 0); m and lo are set here.

// The k-th largest key of the row (k in 1..V), by an 8-bit radix select: 4 counting passes.
template <int NT, class Row> __device__ u32 radix_kth_largest(const Row& row, i64 V, i64 k) {
    __shared__ u32 hist[256];
    __shared__ u32 s_digit;
    __shared__ i64 s_above;
    u32 prefix = 0, mask = 0;
    i64 remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += NT) hist[d] = 0;
        __syncthreads();
        for (i64 y = threadIdx.x; y < V; y += NT) {
            const u32 key = row.key(y);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            i64 lane_count = 0;
            for (int j = 0; j < 8; ++j) lane_count += hist[8 * lane + j];
            i64 suffix = lane_count;  // counts of lanes >= this one (lanes own ascending digit ranges)
            for (int o = 1; o < 32; o <<= 1) {
                i64 other = __shfl_down_sync(FULL_MASK, suffix, o);
                if (lane + o < 32) suffix += other;
            }
            i64 run = suffix - lane_count;
            for (int j = 7; j >= 0; --j) {
                const i64 c = hist[8 * lane + j];
                if (run < remaining && run + c >= remaining) {
                    s_digit = (u32)(8 * lane + j);
                    s_above = run;
                }
                run += c;
            }
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 255u << shift;
        remaining -= s_above;
        __syncthreads();
    }
    return prefix;
}

// Top-p among keys >= lo: the smallest present key v such that the mass A(v) of keys above it is 0 or
// (double)A(v) < top_p * (double)total. *kept receives the mass of keys >= v. Four passes.
template <int NT, class Row> __device__ u32 radix_top_p(const Row& row, i64 V, u32 lo, double top_p, i64* kept) {
    __shared__ u32 count[256];
    __shared__ u64 mass[256];
    __shared__ u32 s_digit;
    __shared__ i64 s_above, s_total;
    u32 prefix = 0, mask = 0;
    i64 above = 0;
    double threshold = 0.0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += NT) {
            count[d] = 0;
            mass[d] = 0;
        }
        __syncthreads();
        for (i64 y = threadIdx.x; y < V; y += NT) {
            const u32 key = row.key(y);
            if (key >= lo && (key & mask) == prefix) {
                const u32 d = (key >> shift) & 255u;
                atomicAdd(&count[d], 1u);
                const i64 w = row.weight(y);
                if (w) atomicAdd(&mass[d], (u64)w);
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            i64 lane_mass = 0;
            for (int j = 0; j < 8; ++j) lane_mass += (i64)mass[8 * lane + j];
            i64 suffix = lane_mass;
            for (int o = 1; o < 32; o <<= 1) {
                i64 other = __shfl_down_sync(FULL_MASK, suffix, o);
                if (lane + o < 32) suffix += other;
            }
            if (shift == 24) {
                const i64 total = __shfl_sync(FULL_MASK, suffix, 0);
                threshold = __dmul_rn(top_p, (double)total);
            }
            i64 run = above + suffix - lane_mass;
            int lowest = 256;
            i64 lowest_above = 0;
            for (int j = 7; j >= 0; --j) {
                const int d = 8 * lane + j;
                if (count[d]) {
                    if (run == 0 || (double)run < threshold) {
                        lowest = d;
                        lowest_above = run;
                    }
                    run += (i64)mass[d];
                }
            }
            int best = lowest;
            for (int o = 16; o > 0; o >>= 1) best = min(best, __shfl_xor_sync(FULL_MASK, best, o));
            if (lowest == best && best < 256) {
                s_digit = (u32)best;
                s_above = lowest_above;
                s_total = lowest_above + (i64)mass[best];
            }
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 255u << shift;
        above = s_above;
        __syncthreads();
    }
    *kept = s_total;
    __syncthreads();
    return prefix;
}

// Sets row.m (max score) and row.lo (the least kept key) and returns Z, the kept mass (> 0).
template <int NT, class Row> __device__ i64 process_row(Row& row, i64 V, i64 top_k, double top_p) {
    float m = NEG_INF;
    for (i64 y = threadIdx.x; y < V; y += NT) m = fmaxf(m, row.score(y));
    row.m = block_max<NT>(m);
    row.lo = 0;
    if (top_k > 0 && top_k < V) row.lo = radix_kth_largest<NT>(row, V, top_k);
    i64 z;
    if (top_p < 1.0) {
        row.lo = radix_top_p<NT>(row, V, row.lo, top_p, &z);
    } else {
        i64 local = 0;
        for (i64 y = threadIdx.x; y < V; y += NT) local += row.weight(y);
        z = block_sum<NT>(local);
    }
    return z;
}

// ---------------------------------------------------------------------------------------------------------
// Inverse-CDF sampling over integer weights f(y), exact: the row is cut into ntiles tiles of `tile` ids;
// tile_sums stores each tile's sum (one warp per tile, coalesced) and returns the row's total;
// sample_from_tiles returns the y with C(y-1) <= t < C(y), C the inclusive prefix sum of f (0 <= t < total).

template <int NT, class F> __device__ i64 tile_sums(const F& f, i64 V, i64 tile, int ntiles, i64* sums) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    i64 local = 0;
    for (int t = warp; t < ntiles; t += NT / 32) {
        const i64 start = (i64)t * tile;
        const i64 end = start + tile < V ? start + tile : V;
        i64 acc = 0;
        for (i64 y = start + lane; y < end; y += 32) acc += f(y);
        acc = warp_sum(acc);
        if (lane == 0) {
            sums[t] = acc;
            local += acc;
        }
    }
    return block_sum<NT>(local);
}

template <int NT, class F> __device__ i64 sample_from_tiles(const F& f, i64 V, i64 tile, int ntiles, const i64* sums, i64 t) {
    __shared__ int s_tile;
    __shared__ i64 s_offset, s_choice;
    const int per = (ntiles + NT - 1) / NT;
    const int first = threadIdx.x * per;
    i64 local = 0;
    for (int k = first; k < first + per && k < ntiles; ++k) local += load_volatile(sums + k);
    i64 total;
    i64 run = block_exclusive_scan<NT>(local, &total);
    if (run <= t && t < run + local) {
        for (int k = first; k < first + per && k < ntiles; ++k) {
            const i64 s = load_volatile(sums + k);
            if (t < run + s) {
                s_tile = k;
                s_offset = run;
                break;
            }
            run += s;
        }
    }
    __syncthreads();
    const i64 start = (i64)s_tile * tile;
    const i64 length = (start + tile < V ? start + tile : V) - start;
    const i64 target = t - s_offset;
    const i64 per_item = (length + NT - 1) / NT;
    const i64 mine = start + threadIdx.x * per_item;
    const i64 stop = mine + per_item < start + length ? mine + per_item : start + length;
    i64 own = 0;
    for (i64 y = mine; y < stop; ++y) own += f(y);
    run = block_exclusive_scan<NT>(own, &total);
    if (run <= target && target < run + own) {
        for (i64 y = mine; y < stop; ++y) {
            run += f(y);
            if (target < run) {
                s_choice = y;
                break;
            }
        }
    }
    __syncthreads();
    const i64 choice = s_choice;
    __syncthreads();
    return choice;
}

// floor(u * total) clamped to [0, total - 1] (reference: _sample_index).
__device__ __forceinline__ i64 sample_target(double u, i64 total) {
    const double x = __dmul_rn(u, (double)total);
    i64 t = x > 0.0 ? (i64)x : 0;
    return t < total ? t : total - 1;
}

// A row of logits scaled by 1 / temperature (float32 multiply, as the reference).
template <int DT> struct LogitRow {
    const typename Raw<DT>::type* base;
    float inv_t, m;
    u32 lo;
    __device__ float score(i64 y) const { return __fmul_rn(load_logit<DT>(base, y), inv_t); }
    __device__ u32 key(i64 y) const { return float_key(score(y)); }
    __device__ i64 weight(i64 y) const {
        const float s = score(y);
        return float_key(s) >= lo ? law_weight(s, m) : 0;
    }
};
