// common.cuh: helpers every kernel file includes.
//
// The kernels are templates over the element type T (float or double). CUDA's math functions are
// named by type (expf for float, exp for double), so these overloads let one template call the
// right one. The same file compiles with NVRTC and, under minidl/emu_shim.h, with g++.
#pragma once

// Threads per block of the block-reduction kernels; minidl/cuda.py's REDUCE_THREADS must match.
#define MINIDL_REDUCE_THREADS 256

// A grid-stride loop: thread t handles indices t, t + (all threads), ... below total, so a kernel
// is correct for any grid size (the loader caps the grid; the emulator may use fewer blocks).
#define FOR_EACH_INDEX(i, total)                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float real_exp(float x) { return expf(x); }
__device__ __forceinline__ double real_exp(double x) { return exp(x); }
__device__ __forceinline__ float real_log(float x) { return logf(x); }
__device__ __forceinline__ double real_log(double x) { return log(x); }
__device__ __forceinline__ float real_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double real_pow(double x, double y) { return pow(x, y); }

// -infinity of each type, from its bit pattern (NVRTC has no <limits>).
__device__ __forceinline__ float real_neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double real_neg_inf(double) { return __longlong_as_double(0xfff0000000000000LL); }
