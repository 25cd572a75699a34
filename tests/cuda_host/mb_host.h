// CUDA C on the CPU: the runtime that tests/cudahost.py compiles the project's .cu files against.
//
// Every CUDA thread is a fiber with its own stack; the threads of a launch start together and
// run one at a time, each until it waits at a barrier.  __syncthreads() is a barrier over the
// block's threads; a cooperative launch starts every thread of every block at once and
// cooperative_groups' grid.sync() is one barrier over all of them (an ordinary launch runs its
// blocks one after another, so a function-static __shared__ array is per block).  Warp shuffles
// go through a per-warp barrier and a double buffer.  When a barrier opens, its threads run
// next, ahead of all others, in a chosen order (lowest thread first, highest first, or seeded
// random), so a missing barrier lets a thread or a block run ahead into data not yet written,
// deterministically.  Dynamic shared memory is
// allocated per block, filled with NaN (every 32-bit and every 16-bit word of it is a NaN) and
// framed by guard zones of the same pattern that are checked after the launch.  When no thread
// can run and some have not finished, the launch reports the deadlock and the barrier holding it.
//
// What this cannot model: the GPU's memory model (stale L1 lines, the need for __ldcg or
// volatile: a host load sees every store made before it), two threads racing inside one barrier
// interval (they never interleave there), warp-synchronous code without __sync intrinsics,
// timing, and out-of-bounds global accesses (tests/cudahost.py frames device arrays with guard
// zones instead).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

// -- misaligned accesses: g++ -fsanitize=alignment calls this where the GPU would fault ----------
// (a float4 or uint2 load from an address that is not a multiple of its size).
namespace mbh { inline void fail(const std::string& what); }
extern "C" {
struct mb_ubsan_location { const char* file; uint32_t line, column; };
struct mb_ubsan_type_mismatch {
    mb_ubsan_location loc;
    const void* type;
    unsigned char log_alignment;
    unsigned char kind;
};
inline void mb_misaligned(const mb_ubsan_type_mismatch* d, uintptr_t p) {
    mbh::fail("misaligned access at " + std::string(d->loc.file) + ":" + std::to_string(d->loc.line) +
              ": address " + std::to_string(p) + " is not a multiple of " +
              std::to_string(1u << d->log_alignment) + " (the GPU faults)");
}
__attribute__((visibility("default"))) void __ubsan_handle_type_mismatch_v1(void* d, uintptr_t p) {
    mb_misaligned(static_cast<const mb_ubsan_type_mismatch*>(d), p);
}
__attribute__((visibility("default"))) void __ubsan_handle_type_mismatch_v1_abort(void* d, uintptr_t p) {
    mb_misaligned(static_cast<const mb_ubsan_type_mismatch*>(d), p);
}
}

// -- context switch: a few instructions on x86-64, ucontext elsewhere -------------------------------
#if defined(__x86_64__)
extern "C" void mb_switch(void** save_sp, void* next_sp);
asm(R"(
    .text
    .globl mb_switch
    .hidden mb_switch
    .type mb_switch, @function
mb_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size mb_switch, .-mb_switch
)");
#endif

namespace mbh {

struct Context {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

inline void switch_to(Context& from, Context& to) {
#if defined(__x86_64__)
    mb_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

// -- errors: the first one is kept and returned by the launch ------------------------------------
inline std::string err_text;

inline void fail(const std::string& what) {
    if (err_text.empty()) err_text = what;
}

// -- fibers: one per CUDA thread, switched only where a thread waits -------------------------------
struct Block;
struct Warp;
struct Fiber {
    Context ctx;
    Block* block = nullptr;
    Warp* warp = nullptr;
    dim3 tid;
    unsigned lane = 0;
    unsigned id = 0;        // global thread index (block-major)
    int phase = 0;          // which half of the warp's shuffle buffer is next
    bool done = false;
    char* stack = nullptr;
    Fiber() = default;
    Fiber(const Fiber&) = delete;
    Fiber& operator=(const Fiber&) = delete;
    ~Fiber() { delete[] stack; }
};

inline Context scheduler;
inline Fiber* current = nullptr;
// Threads that can run.  A barrier that opens puts its threads at the front: the group that was
// just released runs ahead of everything else as far as it can (one block may finish several
// steps before another starts its first), which is what exposes a missing barrier between blocks.
inline std::deque<Fiber*> ready;
inline long long order_mode = 0;           // 0: lowest thread first, 1: highest first, else a seed
inline uint64_t rng_state = 0;
inline void (*body)(const void*) = nullptr;
inline const void* body_arg = nullptr;

inline uint64_t next_random() {            // splitmix64
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

inline void enqueue_front(std::vector<Fiber*>& fs) {
    if (order_mode == 0) {
        std::sort(fs.begin(), fs.end(), [](Fiber* a, Fiber* b) { return a->id < b->id; });
    } else if (order_mode == 1) {
        std::sort(fs.begin(), fs.end(), [](Fiber* a, Fiber* b) { return a->id > b->id; });
    } else {
        for (size_t i = fs.size(); i > 1; --i) std::swap(fs[i - 1], fs[next_random() % i]);
    }
    ready.insert(ready.begin(), fs.begin(), fs.end());
}

inline Fiber* pop_ready() {
    if (ready.empty()) return nullptr;
    Fiber* f = ready.front();
    ready.pop_front();
    return f;
}

void enter(Fiber* f);

// Give the CPU to the next ready thread (or back to the launch when none is ready).
inline void yield() {
    Fiber* self = current;
    Fiber* next = pop_ready();
    if (next == self) return;
    if (next) {
        enter(next);
        switch_to(self->ctx, next->ctx);
    } else {
        switch_to(self->ctx, scheduler);
    }
    enter(self);
}

// -- a barrier: arrivals wait until the expected count is reached, then all go on in `order` --------
class Barrier {
 public:
    void reset(unsigned n, std::string what) {
        expected_ = n;
        waiting_.clear();
        what_ = std::move(what);
    }
    void wait() {
        waiting_.push_back(current);
        if (waiting_.size() >= expected_) release();
        yield();
    }
    // A thread that exits no longer holds the barrier (the GPU counts exited threads as arrived).
    void drop() {
        --expected_;
        if (!waiting_.empty() && waiting_.size() >= expected_) release();
    }
    std::string stuck() const {
        if (waiting_.empty()) return "";
        return what_ + ": " + std::to_string(waiting_.size()) + " of " + std::to_string(expected_) +
               " threads arrived";
    }

 private:
    void release() {
        std::vector<Fiber*> go;
        go.swap(waiting_);
        enqueue_front(go);
    }
    unsigned expected_ = 0;
    std::vector<Fiber*> waiting_;
    std::string what_;
};

struct Warp {
    Barrier bar;
    unsigned lanes = 32;
    uint64_t buf[2][32];
    int delta[2][32];
};

struct Block {
    Barrier bar;
    std::vector<Warp> warps;
    std::vector<char> mem;          // guard | dynamic shared memory | guard
    dim3 idx;
};

constexpr size_t kGuard = 16384;   // wide: a store past it would corrupt the test process
constexpr uint32_t kNaN = 0x7fc07fc0u;  // a float NaN whose two halves are fp16 and bf16 NaNs
constexpr size_t kStack = 64 * 1024;

inline Barrier* grid_barrier = nullptr;

}  // namespace mbh

// What a CUDA thread reads: set from its fiber every time it is resumed.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;
inline char* mb_dynamic_smem = nullptr;   // `extern __shared__ T name[]` points here

namespace mbh {
inline void enter(Fiber* f) {
    current = f;
    threadIdx = f->tid;
    blockIdx = f->block->idx;
    mb_dynamic_smem = f->block->mem.data() + kGuard;
}
}  // namespace mbh

inline void __syncthreads() { mbh::current->block->bar.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { mbh::current->warp->bar.wait(); }

// Global loads that bypass L1 on the GPU: on the host every load is coherent.
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldg(const T* p) { return *p; }

namespace mbh {
// One exchange of a warp: each lane publishes its value, waits for the warp, reads its source.
template <class T> inline T shuffle(unsigned mask, T v, int delta, int mode) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    Fiber* me = current;
    Warp* w = me->warp;
    if (mask != 0xffffffffu || w->lanes != 32) {
        fail("__shfl_*_sync with mask " + std::to_string(mask) + " in a warp of " +
             std::to_string(w->lanes) + " live lanes (the host model handles full warps only)");
        return v;
    }
    const int ph = me->phase;
    me->phase ^= 1;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w->buf[ph][me->lane] = bits;
    w->delta[ph][me->lane] = delta;
    w->bar.wait();
    const int lane = int(me->lane);
    int src = mode == 0 ? (lane ^ delta) : mode == 1 ? lane + delta : mode == 2 ? lane - delta : delta;
    if ((mode == 1 && src > 31) || (mode == 2 && src < 0)) src = lane;
    src &= 31;
    if (mode != 3 && w->delta[ph][src] != delta)
        fail("lanes of one warp shuffle with different offsets (" + std::to_string(delta) + " and " +
             std::to_string(w->delta[ph][src]) + ")");
    T out;
    std::memcpy(&out, &w->buf[ph][src], sizeof(T));
    return out;
}
}  // namespace mbh

template <class T> inline T __shfl_xor_sync(unsigned m, T v, int d, int = 32) { return mbh::shuffle(m, v, d, 0); }
template <class T> inline T __shfl_down_sync(unsigned m, T v, unsigned d, int = 32) { return mbh::shuffle(m, v, int(d), 1); }
template <class T> inline T __shfl_up_sync(unsigned m, T v, unsigned d, int = 32) { return mbh::shuffle(m, v, int(d), 2); }
template <class T> inline T __shfl_sync(unsigned m, T v, int s, int = 32) { return mbh::shuffle(m, v, s, 3); }

namespace mbh {

struct LaunchConfig {            // filled by tests/cudahost.py (ctypes)
    unsigned grid[3], block[3];
    uint64_t smem;               // dynamic shared memory bytes per block
    int32_t cooperative;
    int64_t order;               // 0 lowest thread first, 1 highest first, else a seed
};

[[noreturn]] inline void fiber_main() {
    Fiber* f = current;
    body(body_arg);
    f->block->bar.drop();
    f->warp->bar.drop();
    --f->warp->lanes;
    if (grid_barrier) grid_barrier->drop();
    f->done = true;
    Fiber* next = pop_ready();
    if (next) {
        enter(next);
        switch_to(f->ctx, next->ctx);
    } else {
        switch_to(f->ctx, scheduler);
    }
    __builtin_unreachable();
}

inline void start_fiber(Fiber* f) {
    f->stack = new char[kStack];
#if defined(__x86_64__)
    // The first switch pops six callee-saved registers and returns into fiber_main, with the
    // stack aligned as after a call.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + kStack) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                        // fiber_main's return address: never used
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    f->ctx.sp = sp;
#else
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = f->stack;
    f->ctx.uc.uc_stack.ss_size = kStack;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

inline std::string dims(const unsigned* d) {
    return "(" + std::to_string(d[0]) + ", " + std::to_string(d[1]) + ", " + std::to_string(d[2]) + ")";
}

inline void fill_nan(char* p, size_t n) {
    for (size_t i = 0; i + 4 <= n; i += 4) std::memcpy(p + i, &kNaN, 4);
}

inline void check_guards(const Block& b, size_t smem) {
    const char* m = b.mem.data();
    const std::string where = "block (" + std::to_string(b.idx.x) + ", " + std::to_string(b.idx.y) + ", " +
                              std::to_string(b.idx.z) + ")";
    for (size_t i = 0; i < kGuard; i += 4) {
        if (std::memcmp(m + kGuard - 4 - i, &kNaN, 4) != 0)
            return fail(where + " wrote " + std::to_string(i + 4) + " bytes before its dynamic shared memory");
    }
    for (size_t i = 0; i < kGuard; i += 4) {
        if (std::memcmp(m + kGuard + smem + i, &kNaN, 4) != 0)
            return fail(where + " wrote at byte " + std::to_string(smem + i) + " of its " +
                        std::to_string(smem) + " bytes of dynamic shared memory");
    }
}

// Run the blocks: all at once (cooperative) or one after another.  Returns the first error, or "".
inline std::string launch(const LaunchConfig& cfg, unsigned max_threads, void (*fn)(const void*),
                          const void* arg) {
    err_text.clear();
    order_mode = cfg.order;
    rng_state = uint64_t(cfg.order);
    body = fn;
    body_arg = arg;
    const unsigned* g = cfg.grid;
    const unsigned* b = cfg.block;
    const unsigned long long nt = 1ull * b[0] * b[1] * b[2];
    const unsigned long long nb = 1ull * g[0] * g[1] * g[2];
    if (!nt || !nb) return "empty launch: grid " + dims(g) + ", block " + dims(b);
    if (nt > 1024 || b[0] > 1024 || b[1] > 1024 || b[2] > 64)
        return "block " + dims(b) + " exceeds CUDA's limits (1024 threads, (1024, 1024, 64))";
    if (nt > max_threads)
        return "block " + dims(b) + " has " + std::to_string(nt) +
               " threads, over the kernel's __launch_bounds__ of " + std::to_string(max_threads);
    if (g[1] > 65535 || g[2] > 65535 || g[0] > 0x7fffffffu)
        return "grid " + dims(g) + " exceeds CUDA's limits (2^31-1, 65535, 65535)";
    if (cfg.smem > (1u << 20)) return "dynamic shared memory of " + std::to_string(cfg.smem) + " bytes per block";
    gridDim = {g[0], g[1], g[2]};
    blockDim = {b[0], b[1], b[2]};
    const unsigned long long wave = cfg.cooperative ? nb : 1;
    if (wave * nt > 65536)
        return "this host model runs at most 65536 threads at once, not " + std::to_string(wave * nt);
    Barrier grid;
    grid.reset(unsigned(nb * nt), "grid.sync()");
    grid_barrier = cfg.cooperative ? &grid : nullptr;
    for (unsigned long long first = 0; first < nb && err_text.empty(); first += wave) {
        std::vector<Block> blocks(wave);
        std::vector<Fiber> fibers(wave * nt);
        for (unsigned long long k = first; k < first + wave; ++k) {
            Block& blk = blocks[k - first];
            blk.idx = {unsigned(k % g[0]), unsigned(k / g[0] % g[1]), unsigned(k / g[0] / g[1])};
            blk.bar.reset(unsigned(nt), "__syncthreads() of block " + std::to_string(k));
            blk.mem.assign(cfg.smem + 2 * kGuard, 0);
            fill_nan(blk.mem.data(), blk.mem.size());
            blk.warps = std::vector<Warp>((nt + 31) / 32);
            for (size_t w = 0; w < blk.warps.size(); ++w) {
                blk.warps[w].lanes = unsigned(std::min<unsigned long long>(32, nt - 32ull * w));
                blk.warps[w].bar.reset(blk.warps[w].lanes, "a shuffle of warp " + std::to_string(w) +
                                                               " of block " + std::to_string(k));
            }
            for (unsigned long long t = 0; t < nt; ++t) {
                Fiber& f = fibers[(k - first) * nt + t];
                f.block = &blk;
                f.warp = &blk.warps[t / 32];
                f.tid = {unsigned(t % b[0]), unsigned(t / b[0] % b[1]), unsigned(t / b[0] / b[1])};
                f.lane = unsigned(t % 32);
                f.id = unsigned(k * nt + t);
                start_fiber(&f);
            }
        }
        std::vector<Fiber*> all;
        for (auto& f : fibers) all.push_back(&f);
        ready.clear();
        enqueue_front(all);
        while (Fiber* f = pop_ready()) {
            enter(f);
            switch_to(scheduler, f->ctx);
        }
        size_t stuck = 0;
        for (auto& f : fibers) stuck += !f.done;
        if (stuck) {
            std::string where = grid.stuck();
            for (auto& blk : blocks) {
                if (where.empty()) where = blk.bar.stuck();
                for (auto& w : blk.warps)
                    if (where.empty()) where = w.bar.stuck();
            }
            fail("deadlock: " + std::to_string(stuck) + " threads never finished; " + where);
            break;   // the stuck fibers are abandoned with their stacks
        }
        for (auto& blk : blocks) check_guards(blk, cfg.smem);
    }
    grid_barrier = nullptr;
    current = nullptr;
    return err_text;
}

// -- the entry's parameter types, read by the compiler: pointer element names and int widths -----
template <class T> struct TypeName { static constexpr const char* value = nullptr; };
template <> struct TypeName<float> { static constexpr const char* value = "float32"; };
template <> struct TypeName<double> { static constexpr const char* value = "float64"; };
template <> struct TypeName<int> { static constexpr const char* value = "int32"; };
template <> struct TypeName<unsigned> { static constexpr const char* value = "uint32"; };
template <> struct TypeName<long long> { static constexpr const char* value = "int64"; };
template <> struct TypeName<unsigned long long> { static constexpr const char* value = "uint64"; };

template <class A> std::string param_code() {
    if constexpr (std::is_pointer_v<A>) {
        using E = std::remove_cv_t<std::remove_pointer_t<A>>;
        static_assert(TypeName<E>::value != nullptr, "pointer to a type the host model does not name");
        return std::string("*") + TypeName<E>::value;
    } else {
        static_assert(TypeName<A>::value != nullptr, "scalar parameter of a type the host model does not name");
        return TypeName<A>::value;
    }
}

template <class A> A param_value(uint64_t s) {
    if constexpr (std::is_pointer_v<A>) {
        return reinterpret_cast<A>(static_cast<uintptr_t>(s));
    } else if constexpr (std::is_integral_v<A>) {
        return static_cast<A>(static_cast<int64_t>(s));
    } else {
        A v;
        std::memcpy(&v, &s, sizeof(A));
        return v;
    }
}

template <class... A> std::string signature(void (*)(A...)) {
    std::string s;
    ((s += param_code<A>() + " "), ...);
    return s;
}

template <class... A, size_t... I>
void invoke(void (*f)(A...), const uint64_t* a, std::index_sequence<I...>) {
    f(param_value<A>(a[I])...);
}

template <class... A> constexpr size_t arity(void (*)(A...)) { return sizeof...(A); }

inline int finish(const std::string& e, char* out, size_t n) {
    if (n) std::snprintf(out, n, "%s", e.c_str());
    return e.empty() ? 0 : 1;
}

}  // namespace mbh

// host_<entry>(slots, config, error buffer) launches; host_sig_<entry>() names its parameters.
#define MB_HOST_ENTRY(E, MAX_THREADS)                                                              \
    static void mb_body_##E(const void* a) {                                                       \
        mbh::invoke(&E, static_cast<const uint64_t*>(a), std::make_index_sequence<mbh::arity(&E)>{}); \
    }                                                                                               \
    extern "C" int host_##E(const uint64_t* a, const mbh::LaunchConfig* cfg, char* err, size_t n) { \
        return mbh::finish(mbh::launch(*cfg, MAX_THREADS, &mb_body_##E, a), err, n);              \
    }                                                                                               \
    extern "C" const char* host_sig_##E() {                                                        \
        static const std::string s = mbh::signature(&E);                                          \
        return s.c_str();                                                                           \
    }
