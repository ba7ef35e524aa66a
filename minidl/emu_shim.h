// emu_shim.h: just enough of CUDA for g++ to run kernels/*.cu on the CPU.
//
// minidl/emulator.py compiles, as one C++ translation unit:
//     #include "emu_shim.h"
//     #include "kernels/<file>.cu"
//     MINIDL_EMU_EXPORT(name<float>, symbol, fibers) ...   (one per kernel instantiation;
//                                    fibers = 1 when that kernel calls __syncthreads)
// and calls each exported symbol through ctypes with the grid, the block and a void* per argument,
// exactly what cudaLaunchKernel receives.
//
// How a launch runs: blocks one after another; inside a block, either a plain loop over the
// threads (kernels without barriers) or one fiber (ucontext_t, 64 KiB stack) per thread, where
// __syncthreads() swaps back to the block's scheduler. The scheduler resumes every live thread in
// turn, so each round runs all threads up to their next barrier: a barrier's meaning exactly.
// __shared__ is a function-local static: one copy, which is right since blocks run in sequence.
// Atomics are plain updates (there is only one thread running at any moment).
#pragma once
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

#define MINIDL_EMULATOR 1  // kernels/common.cuh then takes __half and __nv_bfloat16 from here
#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned int x, y, z;
};
typedef dim3 uint3;

// Not static: an opaque call (swapcontext) must be assumed to change them, so the compiler
// re-reads threadIdx after every __syncthreads().
dim3 gridDim, blockDim, blockIdx, threadIdx;

template <typename T>
inline T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}

using std::exp;
using std::log;
using std::pow;
using std::sqrt;
using std::fabs;
using std::fmax;
using std::fmin;
inline float __int_as_float(int v) {
    float f;
    static_assert(sizeof f == sizeof v, "int and float must have one size");
    __builtin_memcpy(&f, &v, sizeof f);
    return f;
}
inline double __longlong_as_double(long long v) {
    double d;
    __builtin_memcpy(&d, &v, sizeof d);
    return d;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// ---- 16-bit floating point: __half and __nv_bfloat16 -------------------------------------------
// Storage structs holding the bits, with the conversions of cuda_fp16.h and cuda_bf16.h: float to
// 16 bits rounds to nearest, ties to even, exactly as __float2half_rn and __float2bfloat16_rn
// (overflow to infinity, gradual underflow to subnormals, every NaN to the canonical 0x7fff);
// 16 bits to float is exact. Arithmetic goes through float (the implicit conversions below), which
// is what the kernels do anyway: they load with to_acc(), compute in float, store with from_acc().
inline std::uint32_t emu_float_bits(float f) {
    std::uint32_t u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
}
inline float emu_bits_float(std::uint32_t u) {
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}

inline unsigned short emu_float_to_half_bits(float f) {
    std::uint32_t x = emu_float_bits(f);
    std::uint32_t sign = (x >> 16) & 0x8000u;
    std::uint32_t magnitude = x & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return 0x7fffu;                 // NaN
    if (magnitude >= 0x477ff000u) return sign | 0x7c00u;         // >= 65520 = 65504 + half an ulp
    if (magnitude < 0x38800000u) {                               // below 2^-14: subnormal or zero
        // The value is m * 2^-24 for a real m in [0, 1024]; scaling by 2^24 is exact, and
        // nearbyint rounds to nearest even (m = 1024 gives 0x400, the smallest normal: right).
        float m = std::nearbyint(emu_bits_float(magnitude) * 16777216.0f);
        return sign | (unsigned short)m;
    }
    // Normal: rebias the exponent (127 -> 15), then round the 13 dropped mantissa bits to even.
    std::uint32_t rebiased = magnitude - (112u << 23);
    rebiased += 0xfffu + ((rebiased >> 13) & 1u);
    return sign | (unsigned short)(rebiased >> 13);
}

inline float emu_half_bits_to_float(unsigned short h) {
    std::uint32_t sign = (std::uint32_t)(h & 0x8000u) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) return emu_bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        float magnitude = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -magnitude : magnitude;
    }
    return emu_bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline unsigned short emu_float_to_bfloat16_bits(float f) {
    std::uint32_t x = emu_float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN
    // Keep the top 16 bits, rounding the low 16 to nearest even; a carry may reach the exponent
    // (and make infinity from the largest values), which is the right answer.
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}

inline float emu_bfloat16_bits_to_float(unsigned short b) {
    return emu_bits_float((std::uint32_t)b << 16);
}

struct __half {
    unsigned short x;  // the IEEE binary16 bits
    __half() = default;
    __half(float f) : x(emu_float_to_half_bits(f)) {}
    operator float() const { return emu_half_bits_to_float(x); }
};

struct __nv_bfloat16 {
    unsigned short x;  // the top 16 bits of a float32
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : x(emu_float_to_bfloat16_bits(f)) {}
    operator float() const { return emu_bfloat16_bits_to_float(x); }
};

static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit types must be 2 bytes");

inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }

namespace emu {

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    dim3 thread;
    bool done;
};

ucontext_t scheduler;
Fiber* current = nullptr;
void (*body)(void*) = nullptr;  // the kernel call, type-erased
void* body_arg = nullptr;

inline void fiber_main() {
    body(body_arg);
    current->done = true;  // returning resumes uc_link: the scheduler
}

}  // namespace emu

inline void __syncthreads() {
    emu::Fiber* me = emu::current;
    if (me == nullptr) {  // run as a plain loop: minidl/emulator.py saw no barrier in this kernel
        std::fprintf(stderr,
                     "minidl emulator: __syncthreads() in a kernel that runs without fibers; "
                     "minidl/emulator.py's kernels_with_barriers did not see the barrier\n");
        std::abort();
    }
    swapcontext(&me->context, &emu::scheduler);
}

namespace emu {

template <typename... Args, std::size_t... I>
void call(void (*kernel)(Args...), void** args, std::index_sequence<I...>) {
    // args[i] points at the i-th argument's value, as in cudaLaunchKernel.
    kernel(*static_cast<typename std::remove_reference<Args>::type*>(args[I])...);
}

template <typename... Args>
struct Launch {
    void (*kernel)(Args...);
    void** args;
    static void run(void* self) {
        Launch* l = static_cast<Launch*>(self);
        call(l->kernel, l->args, std::index_sequence_for<Args...>{});
    }
};

// ---- the bounds-checked mode (MINIDL_EMU_CHECK=1, minidl/bounds.py) ------------------------------
// Python puts every array argument between two wide inaccessible regions, so a read or write
// outside an array faults (SIGSEGV). During a checked launch our handler records the address and
// the running block and thread, and jumps back to the launch, which returns 1: Python names the
// kernel, the thread, the argument and the index, instead of the process dying.
struct Fault {
    unsigned long long address;
    unsigned int block[3], thread[3];
};

sigjmp_buf fault_return;
Fault* fault = nullptr;  // where the handler writes; set only during a checked launch

inline void on_fault(int, siginfo_t* info, void*) {
    *fault = Fault{(unsigned long long)info->si_addr,
                   {blockIdx.x, blockIdx.y, blockIdx.z},
                   {threadIdx.x, threadIdx.y, threadIdx.z}};
    siglongjmp(fault_return, 1);  // from a fiber's stack too: back to the launch's own frame
}

struct Trap {  // our SIGSEGV handler, on a stack of its own, while a checked launch runs
    struct sigaction previous;
    stack_t previous_stack;
    std::vector<char> stack = std::vector<char>(256 * 1024);
    explicit Trap(Fault* where) {
        fault = where;
        stack_t own{};
        own.ss_sp = stack.data();
        own.ss_size = stack.size();
        sigaltstack(&own, &previous_stack);
        struct sigaction action{};
        action.sa_sigaction = on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &previous);
    }
    ~Trap() {
        sigaction(SIGSEGV, &previous, nullptr);
        sigaltstack(&previous_stack, nullptr);
        fault = nullptr;
        current = nullptr;
    }
};

template <typename... Args>
void run_blocks(Launch<Args...>& l, const unsigned int* grid, const unsigned int* block,
                bool fibers) {
    unsigned int threads = block[0] * block[1] * block[2];
    std::vector<Fiber> pool(fibers ? threads : 0);
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
    for (unsigned int by = 0; by < grid[1]; ++by)
    for (unsigned int bx = 0; bx < grid[0]; ++bx) {
        blockIdx = dim3{bx, by, bz};
        if (!fibers) {
            for (unsigned int tz = 0; tz < block[2]; ++tz)
            for (unsigned int ty = 0; ty < block[1]; ++ty)
            for (unsigned int tx = 0; tx < block[0]; ++tx) {
                threadIdx = dim3{tx, ty, tz};
                Launch<Args...>::run(&l);
            }
            continue;
        }
        body = &Launch<Args...>::run;
        body_arg = &l;
        for (unsigned int t = 0; t < threads; ++t) {
            Fiber& f = pool[t];
            f.stack.resize(64 * 1024);
            f.thread = dim3{t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])};
            f.done = false;
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = f.stack.data();
            f.context.uc_stack.ss_size = f.stack.size();
            f.context.uc_link = &scheduler;
            makecontext(&f.context, fiber_main, 0);
        }
        // Each round resumes every live thread once: all run up to their next barrier (or end).
        bool live = true;
        while (live) {
            live = false;
            for (unsigned int t = 0; t < threads; ++t) {
                Fiber& f = pool[t];
                if (f.done) continue;
                current = &f;
                threadIdx = f.thread;
                swapcontext(&scheduler, &f.context);
                live = live || !f.done;
            }
        }
    }
}

// Returns 0, or 1 when a checked launch (checked != nullptr) faulted; *checked says where.
template <typename... Args>
int launch(void (*kernel)(Args...), const unsigned int* grid, const unsigned int* block,
           void** args, bool fibers, Fault* checked) {
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    Launch<Args...> l{kernel, args};
    if (checked == nullptr) {
        run_blocks(l, grid, block, fibers);
        return 0;
    }
    Trap trap(checked);
    if (sigsetjmp(fault_return, 1)) return 1;  // the handler jumped here (the fibers are lost)
    run_blocks(l, grid, block, fibers);
    return 0;
}

}  // namespace emu

#define MINIDL_EMU_EXPORT(kernel, symbol, fibers)                                       \
    extern "C" int symbol(const unsigned int* grid, const unsigned int* block, void** args, \
                          emu::Fault* checked) {                                            \
        return emu::launch(&kernel, grid, block, args, fibers, checked);                    \
    }
