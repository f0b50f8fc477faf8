// Fused speculative verification (reference: kernels/reference/fused.py, verify). common.cuh is prepended.
//
// One launch over the batch: block (b, i) of B * (g+1) blocks processes target position i of row b
// (max, top-k / top-p thresholds, kept mass Z, the acceptance test of draft i, and the per-tile sums of
// the residual max(0, p - q) that position i would sample from if it were the first rejection; at i = g
// the bonus law p). The last block of a row to finish (a counter per row) reads the acceptance bits, finds
// the first rejection n and samples the recovered or bonus token from position n's tile sums, then writes
// output_ids [B, g+1] (padded with -1) and num_accepted [B].

#ifndef VERIFY_THREADS
#define VERIFY_THREADS 512
#endif

template <int DT>
__device__ void verify_sample(
    const typename Raw<DT>::type* logits,  // [B, g+1, V]
    const float* q,                        // [B, g, V] draft probabilities (a dummy when g = 0)
    const i64* draft_ids,                  // [B, g]
    const double* uniforms,                // [B, g+1]: g acceptance tests, then the recovered/bonus sample
    int B, int G, i64 V, float inv_t, i64 top_k, double top_p, i64 tile, int ntiles,
    float* st_max,                         // [B, g+1] scratch: row maximum of the scaled scores
    u32* st_lo,                            // [B, g+1] scratch: least kept key
    i64* st_z,                             // [B, g+1] scratch: kept mass Z
    i64* st_r,                             // [B, g+1] scratch: residual (or bonus) mass
    int* st_accept,                        // [B, g]   scratch: acceptance bits
    i64* st_sums,                          // [B, g+1, ntiles] scratch: per-tile residual sums
    u32* counters,                         // [B] zeros: blocks of the row done
    i64* out_ids,                          // [B, g+1]
    i64* num_accepted)                     // [B]
{
    const int G1 = G + 1;
    const int b = blockIdx.x / G1, i = blockIdx.x % G1;
    const i64 pos = (i64)b * G1 + i;
    LogitRow<DT> p;
    p.base = logits + pos * V;
    p.inv_t = inv_t;
    const i64 z = process_row<VERIFY_THREADS>(p, V, top_k, top_p);
    const double zd = (double)z;
    i64 r;
    if (i < G) {
        const float* qrow = q + ((i64)b * G + i) * V;
        auto residual = [&](i64 y) { return residual_weight(p.weight(y), qrow[y], zd); };
        r = tile_sums<VERIFY_THREADS>(residual, V, tile, ntiles, st_sums + pos * ntiles);
        if (threadIdx.x == 0) {
            const i64 x = draft_ids[(i64)b * G + i];
            int accept = 0;
            if (x >= 0 && x < V) {
                const double uq = __dmul_rn(uniforms[pos], (double)qrow[x]);
                accept = __dmul_rn(uq, zd) < (double)p.weight(x);
            }
            st_accept[(i64)b * G + i] = accept;
        }
    } else {
        auto bonus = [&](i64 y) { return p.weight(y); };
        r = tile_sums<VERIFY_THREADS>(bonus, V, tile, ntiles, st_sums + pos * ntiles);
    }
    __shared__ int s_n;
    if (threadIdx.x == 0) {
        st_max[pos] = p.m;
        st_lo[pos] = p.lo;
        st_z[pos] = z;
        st_r[pos] = r;
    }
    if (!last_block_of_row(&counters[b], (u32)G)) return;

    // The last block of row b: first rejection, then the recovered or bonus token.
    if (threadIdx.x == 0) {
        int n = 0;
        while (n < G && load_volatile(st_accept + (i64)b * G + n)) ++n;
        s_n = n;
    }
    __syncthreads();
    const int n = s_n;
    const i64 at = (i64)b * G1 + n;
    LogitRow<DT> pn;
    pn.base = logits + at * V;
    pn.inv_t = inv_t;
    pn.m = load_volatile(st_max + at);
    pn.lo = load_volatile(st_lo + at);
    const i64 zn = load_volatile(st_z + at);
    i64 rn = load_volatile(st_r + at);
    const double u = uniforms[(i64)b * G1 + G];
    i64 choice;
    auto law = [&](i64 y) { return pn.weight(y); };
    if (n < G && rn > 0) {
        const float* qrow = q + ((i64)b * G + n) * V;
        const double znd = (double)zn;
        auto residual = [&](i64 y) { return residual_weight(pn.weight(y), qrow[y], znd); };
        choice = sample_from_tiles<VERIFY_THREADS>(residual, V, tile, ntiles, st_sums + at * ntiles, sample_target(u, rn));
    } else {
        if (n < G) {  // p == q up to rounding: an empty residual; p itself is the law to draw from
            rn = tile_sums<VERIFY_THREADS>(law, V, tile, ntiles, st_sums + at * ntiles);
            __threadfence_block();
        }
        choice = sample_from_tiles<VERIFY_THREADS>(law, V, tile, ntiles, st_sums + at * ntiles, sample_target(u, rn));
    }
    for (int j = threadIdx.x; j < G1; j += VERIFY_THREADS) {
        out_ids[(i64)b * G1 + j] = j < n ? draft_ids[(i64)b * G + j] : (j == n ? choice : -1);
    }
    if (threadIdx.x == 0) num_accepted[b] = n;
}

template <int DT>
__device__ void verify_greedy(
    const typename Raw<DT>::type* logits,  // [B, g+1, V]
    const i64* draft_ids,                  // [B, g]
    int B, int G, i64 V,
    u64* st_best,                          // [B, g+1] scratch: packed argmax per position
    u32* counters,                         // [B] zeros
    i64* out_ids,                          // [B, g+1]
    i64* num_accepted)                     // [B]
{
    const int G1 = G + 1;
    const int b = blockIdx.x / G1;
    const i64 pos = blockIdx.x;
    const typename Raw<DT>::type* row = logits + pos * V;
    u64 best = 0;
    for (i64 y = threadIdx.x; y < V; y += VERIFY_THREADS) {
        const u64 packed = argmax_pack(load_logit<DT>(row, y), y);
        best = packed > best ? packed : best;
    }
    best = block_max_u64<VERIFY_THREADS>(best);
    if (threadIdx.x == 0) st_best[pos] = best;
    if (!last_block_of_row(&counters[b], (u32)G)) return;
    if (threadIdx.x == 0) {
        int n = 0;
        while (n < G && draft_ids[(i64)b * G + n] == argmax_index(load_volatile(st_best + (i64)b * G1 + n))) ++n;
        const i64 last = argmax_index(load_volatile(st_best + (i64)b * G1 + n));
        for (int j = 0; j < G1; ++j) {
            out_ids[(i64)b * G1 + j] = j < n ? draft_ids[(i64)b * G + j] : (j == n ? last : -1);
        }
        num_accepted[b] = n;
    }
}

#define VERIFY_KERNELS(SUFFIX, DT)                                                                           \
    extern "C" __global__ void __launch_bounds__(VERIFY_THREADS) verify_sample_##SUFFIX(                    \
        const Raw<DT>::type* logits, const float* q, const i64* draft_ids, const double* uniforms, int B,     \
        int G, i64 V, float inv_t, i64 top_k, double top_p, i64 tile, int ntiles, float* st_max, u32* st_lo, \
        i64* st_z, i64* st_r, int* st_accept, i64* st_sums, u32* counters, i64* out_ids, i64* num_accepted) { \
        verify_sample<DT>(logits, q, draft_ids, uniforms, B, G, V, inv_t, top_k, top_p, tile, ntiles, st_max, \
                          st_lo, st_z, st_r, st_accept, st_sums, counters, out_ids, num_accepted);            \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(VERIFY_THREADS) verify_greedy_##SUFFIX(                    \
        const Raw<DT>::type* logits, const i64* draft_ids, int B, int G, i64 V, u64* st_best, u32* counters,  \
        i64* out_ids, i64* num_accepted) {                                                                   \
        verify_greedy<DT>(logits, draft_ids, B, G, V, st_best, counters, out_ids, num_accepted);             \
    }

VERIFY_KERNELS(f32, 0)
VERIFY_KERNELS(f16, 1)
VERIFY_KERNELS(bf16, 2)
