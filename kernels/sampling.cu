// Fused sampling from logits with temperature / top-k / top-p (reference: kernels/reference/fused.py,
// sample_logits): the draft model's step. common.cuh is prepended.
//
// One block per row: max, thresholds, kept mass Z and per-tile sums of the law weights, one inverse-CDF
// choice from the tile sums, and (optionally) the processed probabilities w / Z written as float32, which
// verification needs as the draft law q.

#ifndef SAMPLING_THREADS
#define SAMPLING_THREADS 512
#endif

template <int DT>
__device__ void sample_logits(
    const typename Raw<DT>::type* logits,  // [N, V]
    const double* uniforms,                // [N]
    int N, i64 V, float inv_t, i64 top_k, double top_p, i64 tile, int ntiles,
    i64* st_sums,                          // [N, ntiles] scratch
    int write_probs,
    float* probs,                          // [N, V] when write_probs (else a dummy)
    i64* ids)                              // [N]
{
    const i64 n = blockIdx.x;
    LogitRow<DT> p;
    p.base = logits + n * V;
    p.inv_t = inv_t;
    const i64 z = process_row<SAMPLING_THREADS>(p, V, top_k, top_p);
    auto law = [&](i64 y) { return p.weight(y); };
    i64* sums = st_sums + n * ntiles;
    const i64 total = tile_sums<SAMPLING_THREADS>(law, V, tile, ntiles, sums);
    const i64 choice = sample_from_tiles<SAMPLING_THREADS>(law, V, tile, ntiles, sums, sample_target(uniforms[n], total));
    if (threadIdx.x == 0) ids[n] = choice;
    if (write_probs) {
        const double zd = (double)z;
        float* out = probs + n * V;
        for (i64 y = threadIdx.x; y < V; y += SAMPLING_THREADS) out[y] = (float)__ddiv_rn((double)p.weight(y), zd);
    }
}

#define SAMPLING_KERNELS(SUFFIX, DT)                                                                           \
    extern "C" __global__ void __launch_bounds__(SAMPLING_THREADS) sample_logits_##SUFFIX(                     \
        const Raw<DT>::type* logits, const double* uniforms, int N, i64 V, float inv_t, i64 top_k,              \
        double top_p, i64 tile, int ntiles, i64* st_sums, int write_probs, float* probs, i64* ids) {            \
        sample_logits<DT>(logits, uniforms, N, V, inv_t, top_k, top_p, tile, ntiles, st_sums, write_probs,      \
                          probs, ids);                                                                         \
    }

SAMPLING_KERNELS(f32, 0)
SAMPLING_KERNELS(f16, 1)
SAMPLING_KERNELS(bf16, 2)
