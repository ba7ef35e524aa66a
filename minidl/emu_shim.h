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

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

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

template <typename... Args>
void launch(void (*kernel)(Args...), const unsigned int* grid, const unsigned int* block,
            void** args, bool fibers) {
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    Launch<Args...> l{kernel, args};
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

}  // namespace emu

#define MINIDL_EMU_EXPORT(kernel, symbol, fibers)                                            \
    extern "C" void symbol(const unsigned int* grid, const unsigned int* block, void** args) { \
        emu::launch(&kernel, grid, block, args, fibers);                                     \
    }
