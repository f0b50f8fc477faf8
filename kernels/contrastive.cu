// Fused contrastive scoring (reference: kernels/reference/, contrastive_scores and
// contrastive_choose). common.cuh is prepended.
//
// Rows are cut into S chunks. contrastive_partials (grid N * S) is the reduction pass: per chunk the
// expert's maximum and, for the log-probability form's scores, (max, sum exp) of both models. The second
// launch is one pass over the vocabulary: contrastive_scores writes the scores (grid N * S),
// contrastive_argmax takes the greedy choice (grid N * S, the last chunk of a row to finish reduces it),
// contrastive_sample processes the choice scores with temperature / top-k / top-p and samples (one block
// per row, the same machinery as sample_logits).

#ifndef CONTRASTIVE_THREADS
#define CONTRASTIVE_THREADS 256
#endif

// Scores of the two forms. choice(y) is what decoding compares: the logit form's score, or for the
// log-probability form log p_e - log p_a without its per-row constant (lse_a - lse_e), -inf outside the
// plausible set {e >= max e + log alpha} (no mask when `plain`: beta = 0 in the logit form).
template <int DT> struct ContrastiveRow {
    const typename Raw<DT>::type* e;
    const typename Raw<DT>::type* a;
    int form, plain;
    float c_e, c_a, inv_tau, cut, inv_t, m;
    u32 lo;
    __device__ float choice(i64 y) const {
        const float ev = load_logit<DT>(e, y);
        if (plain) return ev;
        if (ev < cut) return NEG_INF;
        const float av = __fmul_rn(load_logit<DT>(a, y), inv_tau);
        if (form == 0) return __fsub_rn(__fmul_rn(c_e, ev), __fmul_rn(c_a, av));
        return __fsub_rn(ev, av);
    }
    __device__ float score(i64 y) const { return __fmul_rn(choice(y), inv_t); }
    __device__ u32 key(i64 y) const { return float_key(score(y)); }
    __device__ i64 weight(i64 y) const {
        const float s = score(y);
        return float_key(s) >= lo ? law_weight(s, m) : 0;
    }
};

struct Partial { float max_e, sum_e, max_a, sum_a; };  // sums are relative to the chunk's maxima

// (max, sum exp(x - max)) of chunk values, in two passes over the (cached) chunk.
template <int DT> __device__ void chunk_lse(const typename Raw<DT>::type* x, float scale, i64 start, i64 stop, float* max_out, float* sum_out) {
    float m = NEG_INF;
    for (i64 y = start + threadIdx.x; y < stop; y += CONTRASTIVE_THREADS) m = fmaxf(m, __fmul_rn(load_logit<DT>(x, y), scale));
    m = block_max<CONTRASTIVE_THREADS>(m);
    float s = 0.0f;
    for (i64 y = start + threadIdx.x; y < stop; y += CONTRASTIVE_THREADS) s += expf(__fmul_rn(load_logit<DT>(x, y), scale) - m);
    // float sum: the block's order is fixed, but not torch's; only the log-probability scores read it
    __shared__ float partial[CONTRASTIVE_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < CONTRASTIVE_THREADS / 32; ++w) total += partial[w];
        *max_out = m;
        *sum_out = total;
    }
    __syncthreads();
}

template <int DT>
__device__ void contrastive_partials(
    const typename Raw<DT>::type* expert,   // [N, V]
    const typename Raw<DT>::type* amateur,  // [N, V]
    int N, i64 V, i64 chunk, int S, float inv_tau, int need_lse,
    Partial* partials)                      // [N, S]
{
    const i64 n = blockIdx.x / S, s = blockIdx.x % S;
    const i64 start = s * chunk, stop = start + chunk < V ? start + chunk : V;
    const typename Raw<DT>::type* e = expert + n * V;
    __shared__ Partial out;
    if (need_lse) {
        chunk_lse<DT>(e, 1.0f, start, stop, &out.max_e, &out.sum_e);
        chunk_lse<DT>(amateur + n * V, inv_tau, start, stop, &out.max_a, &out.sum_a);
    } else {
        float m = NEG_INF;
        for (i64 y = start + threadIdx.x; y < stop; y += CONTRASTIVE_THREADS) m = fmaxf(m, load_logit<DT>(e, y));
        m = block_max<CONTRASTIVE_THREADS>(m);
        if (threadIdx.x == 0) out.max_e = m, out.sum_e = out.max_a = out.sum_a = 0.0f;
    }
    if (threadIdx.x == 0) partials[n * S + s] = out;
}

// Every block combines its row's S partials in the same order: the same maximum and constants everywhere.
template <int DT> __device__ void combine(const Partial* partials, i64 n, int S, int need_lse, float* max_e, float* lse_e, float* lse_a) {
    float me = NEG_INF, ma = NEG_INF;
    for (int s = 0; s < S; ++s) {
        me = fmaxf(me, partials[n * S + s].max_e);
        ma = fmaxf(ma, partials[n * S + s].max_a);
    }
    *max_e = me;
    if (!need_lse) return;
    float se = 0.0f, sa = 0.0f;
    for (int s = 0; s < S; ++s) {
        const Partial p = partials[n * S + s];
        se += p.sum_e * expf(p.max_e - me);
        sa += p.sum_a * expf(p.max_a - ma);
    }
    *lse_e = me + logf(se);
    *lse_a = ma + logf(sa);
}

template <int DT> __device__ ContrastiveRow<DT> make_row(const typename Raw<DT>::type* expert, const typename Raw<DT>::type* amateur, i64 n, i64 V,
                                                         int form, int plain, float c_e, float c_a, float inv_tau, float log_alpha, float max_e) {
    ContrastiveRow<DT> row;
    row.e = expert + n * V;
    row.a = amateur + n * V;
    row.form = form;
    row.plain = plain;
    row.c_e = c_e;
    row.c_a = c_a;
    row.inv_tau = inv_tau;
    row.cut = __fadd_rn(max_e, log_alpha);
    row.inv_t = 1.0f;
    row.m = 0.0f;
    row.lo = 0;
    return row;
}

template <int DT>
__device__ void contrastive_scores(
    const typename Raw<DT>::type* expert, const typename Raw<DT>::type* amateur,  // [N, V] each
    int N, i64 V, i64 chunk, int S, const Partial* partials, int form, int plain, float c_e, float c_a,
    float inv_tau, float log_alpha,
    float* scores)                          // [N, V]
{
    const i64 n = blockIdx.x / S, s = blockIdx.x % S;
    const i64 start = s * chunk, stop = start + chunk < V ? start + chunk : V;
    float max_e, lse_e = 0.0f, lse_a = 0.0f;
    combine<DT>(partials, n, S, form == 1, &max_e, &lse_e, &lse_a);
    const ContrastiveRow<DT> row = make_row<DT>(expert, amateur, n, V, form, plain, c_e, c_a, inv_tau, log_alpha, max_e);
    float* out = scores + n * V;
    for (i64 y = start + threadIdx.x; y < stop; y += CONTRASTIVE_THREADS) {
        if (form == 0) {
            out[y] = row.choice(y);
        } else {
            const float ev = load_logit<DT>(row.e, y);
            const float av = __fmul_rn(load_logit<DT>(row.a, y), inv_tau);
            out[y] = ev < row.cut ? NEG_INF : __fsub_rn(__fsub_rn(ev, lse_e), __fsub_rn(av, lse_a));
        }
    }
}

template <int DT>
__device__ void contrastive_argmax(
    const typename Raw<DT>::type* expert, const typename Raw<DT>::type* amateur,  // [N, V] each
    int N, i64 V, i64 chunk, int S, const Partial* partials, int form, int plain, float c_e, float c_a,
    float inv_tau, float log_alpha,
    u64* st_best,                           // [N, S] scratch
    u32* counters,                          // [N] zeros
    i64* ids)                               // [N]
{
    const i64 n = blockIdx.x / S, s = blockIdx.x % S;
    const i64 start = s * chunk, stop = start + chunk < V ? start + chunk : V;
    float max_e, unused_e, unused_a;
    combine<DT>(partials, n, S, 0, &max_e, &unused_e, &unused_a);
    const ContrastiveRow<DT> row = make_row<DT>(expert, amateur, n, V, form, plain, c_e, c_a, inv_tau, log_alpha, max_e);
    u64 best = 0;
    for (i64 y = start + threadIdx.x; y < stop; y += CONTRASTIVE_THREADS) {
        const u64 packed = argmax_pack(row.choice(y), y);
        best = packed > best ? packed : best;
    }
    best = block_max_u64<CONTRASTIVE_THREADS>(best);
    __shared__ int s_last;
    if (threadIdx.x == 0) st_best[n * S + s] = best;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&counters[n], 1u) == (u32)(S - 1);
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (threadIdx.x == 0) {
        u64 all = 0;
        for (int k = 0; k < S; ++k) {
            const u64 v = load_volatile(st_best + n * S + k);
            all = v > all ? v : all;
        }
        ids[n] = argmax_index(all);
    }
}

template <int DT>
__device__ void contrastive_sample(
    const typename Raw<DT>::type* expert, const typename Raw<DT>::type* amateur,  // [N, V] each
    int N, i64 V, int S, const Partial* partials, int form, int plain, float c_e, float c_a, float inv_tau,
    float log_alpha, float inv_t, i64 top_k, double top_p, i64 tile, int ntiles,
    i64* st_sums,                           // [N, ntiles] scratch
    const double* uniforms,                 // [N]
    i64* ids)                               // [N]
{
    const i64 n = blockIdx.x;
    float max_e, unused_e, unused_a;
    combine<DT>(partials, n, S, 0, &max_e, &unused_e, &unused_a);
    ContrastiveRow<DT> row = make_row<DT>(expert, amateur, n, V, form, plain, c_e, c_a, inv_tau, log_alpha, max_e);
    row.inv_t = inv_t;
    process_row<CONTRASTIVE_THREADS>(row, V, top_k, top_p);
    auto law = [&](i64 y) { return row.weight(y); };
    i64* sums = st_sums + n * ntiles;
    const i64 total = tile_sums<CONTRASTIVE_THREADS>(law, V, tile, ntiles, sums);
    const i64 choice = sample_from_tiles<CONTRASTIVE_THREADS>(law, V, tile, ntiles, sums, sample_target(uniforms[n], total));
    if (threadIdx.x == 0) ids[n] = choice;
}

#define CONTRASTIVE_KERNELS(SUFFIX, DT)                                                                         \
    extern "C" __global__ void __launch_bounds__(CONTRASTIVE_THREADS) contrastive_partials_##SUFFIX(           \
        const Raw<DT>::type* expert, const Raw<DT>::type* amateur, int N, i64 V, i64 chunk, int S,             \
        float inv_tau, int need_lse, float* partials) {                                                        \
        contrastive_partials<DT>(expert, amateur, N, V, chunk, S, inv_tau, need_lse, (Partial*)partials);      \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(CONTRASTIVE_THREADS) contrastive_scores_##SUFFIX(             \
        const Raw<DT>::type* expert, const Raw<DT>::type* amateur, int N, i64 V, i64 chunk, int S,             \
        const float* partials, int form, int plain, float c_e, float c_a, float inv_tau, float log_alpha,      \
        float* scores) {                                                                                        \
        contrastive_scores<DT>(expert, amateur, N, V, chunk, S, (const Partial*)partials, form, plain, c_e,    \
                               c_a, inv_tau, log_alpha, scores);                                               \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(CONTRASTIVE_THREADS) contrastive_argmax_##SUFFIX(             \
        const Raw<DT>::type* expert, const Raw<DT>::type* amateur, int N, i64 V, i64 chunk, int S,             \
        const float* partials, int form, int plain, float c_e, float c_a, float inv_tau, float log_alpha,      \
        u64* st_best, u32* counters, i64* ids) {                                                               \
        contrastive_argmax<DT>(expert, amateur, N, V, chunk, S, (const Partial*)partials, form, plain, c_e,    \
                               c_a, inv_tau, log_alpha, st_best, counters, ids);                               \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(CONTRASTIVE_THREADS) contrastive_sample_##SUFFIX(             \
        const Raw<DT>::type* expert, const Raw<DT>::type* amateur, int N, i64 V, int S, const float* partials, \
        int form, int plain, float c_e, float c_a, float inv_tau, float log_alpha, float inv_t, i64 top_k,     \
        double top_p, i64 tile, int ntiles, i64* st_sums, const double* uniforms, i64* ids) {                  \
        contrastive_sample<DT>(expert, amateur, N, V, S, (const Partial*)partials, form, plain, c_e, c_a,      \
                               inv_tau, log_alpha, inv_t, top_k, top_p, tile, ntiles, st_sums, uniforms, ids); \
    }

CONTRASTIVE_KERNELS(f32, 0)
CONTRASTIVE_KERNELS(f16, 1)
CONTRASTIVE_KERNELS(bf16, 2)
