// reduce.cu: per-channel sums, the bias gradient of conv2d and bias_relu (minidl/ops/reduce.py).
//
//   channel_sum   x: (N, C, plane) -> out: (C,),  out[c] = sum_{n, p} x[n, c, p]
//
// One block of MINIDL_REDUCE_THREADS per channel c: each thread adds a strided share of the
// N * plane values, then a shared-memory tree halves the partial sums down to one. The order of
// additions is fixed, so the result is the same bits every run (no atomics).
// Launch: grid (C,), block (MINIDL_REDUCE_THREADS,). Matches x.sum(axis=(0, 2)).
#include "common.cuh"

template <typename T>
__global__ void channel_sum(const T* x, T* out, int N, int C, int plane) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    int c = blockIdx.x;
    long long count = (long long)N * plane;
    T sum = T(0);
    for (long long e = threadIdx.x; e < count; e += blockDim.x) {
        long long n = e / plane;
        long long p = e % plane;
        sum += x[(n * C + c) * plane + p];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {  // tree: 256 -> 128 -> ... -> 1
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[c] = partial[0];
}
