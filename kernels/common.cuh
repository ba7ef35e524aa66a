// common.cuh: helpers every kernel file includes.
//
// The kernels are templates over the element type T: float and double everywhere, and __half and
// __nv_bfloat16 (16-bit storage for mixed precision) in the files that say so. CUDA's math
// functions are named by type (expf for float, exp for double), so these overloads let one
// template call the right one. The same file compiles with NVRTC and, under minidl/emu_shim.h
// (which defines MINIDL_EMULATOR and its own __half and __nv_bfloat16), with g++.
//
// Which types a file's kernels are instantiated for is one line in that file, read by
// minidl/cuda.py (NVRTC's name expressions) and minidl/emulator.py alike:
//     // minidl-types: float double __half __nv_bfloat16
// A file without the line is instantiated for float and double only, so a file not yet written
// for 16-bit storage still compiles.
#pragma once

#ifndef MINIDL_EMULATOR
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

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

// ---- 16-bit storage, float arithmetic ------------------------------------------------------------
// A kernel loads each element into its accumulator type acc_t<T>, computes there, and rounds once
// when it stores: float for __half, __nv_bfloat16 and float; double for double. Sums of 16-bit
// values therefore run in float (a 16-bit running sum would stop growing once it reaches 2^11
// times its addends), and the kernels' scalar parameters (alpha, lr, scale) are acc_t<T>, so a
// 16-bit kernel never sees a scalar rounded to 11 or 8 significant bits.
template <typename T> struct Accumulator { typedef float type; };
template <> struct Accumulator<double> { typedef double type; };
template <typename T> using acc_t = typename Accumulator<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// from_acc<T>(v): v rounded to T, to nearest with ties to even (CUDA's _rn conversions).
template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// ---- block reduction -----------------------------------------------------------------------------
// block_sum(partial, value): the sum of every thread's value over the block, returned to every
// thread, by a shared-memory tree over the caller's partial[blockDim.x] (blockDim.x a power of
// two). Thread t writes partial[t], then each level half = blockDim.x / 2, ..., 1 adds
// partial[t + half] into partial[t] for t < half, so the order of the additions is fixed by the
// block size alone (the same bits every run). Every thread of the block must call it, since it
// holds __syncthreads(); the last barrier makes partial free for the next reduction on return.
// Used by loss.cu and batchnorm.cu (docs/reduce.md).
template <typename Acc>
__device__ Acc block_sum(Acc* partial, Acc value) {
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    Acc result = partial[0];
    __syncthreads();  // everyone has read the result before partial is reused
    return result;
}
