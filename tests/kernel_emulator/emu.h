// CPU emulation of the CUDA subset that kernels/*.cu use, for tests only (tests/kernel_emulator.py).
//
// A grid runs one block at a time, blocks in a seeded random order (so the "last block of a row" is not
// always the same one); a block runs its threads as real std::threads. __syncthreads is a barrier of the
// block, warp shuffles exchange through a per-warp slot array between two barriers of the warp (so every
// lane of the warp must take part, as with a full mask on the GPU), __shared__ variables are function
// statics (one copy for the block that is running), atomics are GCC atomics, and arithmetic is host
// IEEE arithmetic without contraction (build with -ffp-contract=off). expf/logf are the host libm's, which
// may differ from CUDA's libdevice in the last bit. Each library is built with hidden visibility and without
// GNU unique symbols, so libraries built for different block sizes never share a static or a template.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

struct EmuDim { unsigned x = 0, y = 0, z = 0; };
inline thread_local EmuDim threadIdx, blockIdx;
inline EmuDim blockDim, gridDim;

struct EmuWarp {
    std::barrier<> bar{32};
    uint64_t slot[32];
};
struct EmuBlock {
    explicit EmuBlock(unsigned n) : bar(n), warps(n / 32) {}
    std::barrier<> bar;
    std::vector<EmuWarp> warps;
};
inline EmuBlock* emu_block = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline void __syncthreads() { emu_block->bar.arrive_and_wait(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <class T> T emu_shuffle(T v, int (*source)(int, int), int arg) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 64 bits");
    EmuWarp& w = emu_block->warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    w.bar.arrive_and_wait();
    T out;
    std::memcpy(&out, &w.slot[source(lane, arg)], sizeof(T));
    w.bar.arrive_and_wait();
    return out;
}
inline int emu_xor(int lane, int m) { return lane ^ m; }
inline int emu_up(int lane, int d) { return lane >= d ? lane - d : lane; }
inline int emu_down(int lane, int d) { return lane + d < 32 ? lane + d : lane; }
inline int emu_idx(int, int src) { return src; }
template <class T> T __shfl_xor_sync(unsigned, T v, int m) { return emu_shuffle(v, emu_xor, m); }
template <class T> T __shfl_up_sync(unsigned, T v, int d) { return emu_shuffle(v, emu_up, d); }
template <class T> T __shfl_down_sync(unsigned, T v, int d) { return emu_shuffle(v, emu_down, d); }
template <class T> T __shfl_sync(unsigned, T v, int src) { return emu_shuffle(v, emu_idx, src); }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline int min(int a, int b) { return a < b ? a : b; }
// expf, logf, fmaxf: the global C functions of <math.h>

// ---- launching -------------------------------------------------------------------------------------------
using EmuEntry = std::function<void(unsigned, unsigned, void**, unsigned)>;

inline void emu_run_grid(unsigned grid, unsigned block, unsigned seed, const std::function<void()>& body) {
    std::vector<unsigned> order(grid);
    for (unsigned b = 0; b < grid; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b : order) {
        EmuBlock state(block);
        emu_block = &state;
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([&, t, b] {
                threadIdx = {t, 0, 0};
                blockIdx = {b, 0, 0};
                body();
            });
        }
        for (auto& th : threads) th.join();
        emu_block = nullptr;
    }
}

template <class... A, std::size_t... I>
std::tuple<A...> emu_unpack(void** args, std::index_sequence<I...>) {
    return std::tuple<A...>(*static_cast<A*>(args[I])...);
}

template <class... A> EmuEntry emu_entry(void (*kernel)(A...)) {
    return [kernel](unsigned grid, unsigned block, void** args, unsigned seed) {
        const auto values = emu_unpack<A...>(args, std::index_sequence_for<A...>{});
        emu_run_grid(grid, block, seed, [&] { std::apply(kernel, values); });
    };
}

inline std::map<std::string, EmuEntry>& emu_registry() {
    static std::map<std::string, EmuEntry> registry;
    return registry;
}
struct EmuRegister {
    template <class K> EmuRegister(const char* name, K kernel) { emu_registry()[name] = emu_entry(kernel); }
};
#define EMU_REGISTER(name) static EmuRegister emu_register_##name(#name, &name);

extern "C" __attribute__((visibility("default"))) int emu_launch(const char* name, unsigned grid, unsigned block, void** args, unsigned seed) {
    auto it = emu_registry().find(name);
    if (it == emu_registry().end()) return 1;
    it->second(grid, block, args, seed);
    return 0;
}
