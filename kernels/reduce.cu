// reduce.cu: per-channel sums, the bias gradient of conv2d and bias_relu (minidl/ops/reduce.py;
// docs/reduce.md walks through the tree and its barriers on 8 values).
//
//   channel_sum   x: (N, C, plane) -> out: (C,),  out[c] = sum_{n, p} x[n, c, p]
//
// One block of MINIDL_REDUCE_THREADS per channel c: for each n in turn, the block's threads add
// strided shares of the contiguous plane x[n, c, :] (coalesced, no index division), then a
// shared-memory tree halves the partial sums down to one. The order of additions is fixed, so
// the result is the same bits every run (no atomics).
// Launch: grid (C,), block (MINIDL_REDUCE_THREADS,). Matches x.sum(axis=(0, 2)).
// 16-bit storage: the partial sums and the tree run in float (acc_t<T>); only out[c] is rounded.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void channel_sum(const T* x, T* out, int N, int C, long long plane) {
    typedef acc_t<T> Acc;
    __shared__ Acc partial[MINIDL_REDUCE_THREADS];
    int c = blockIdx.x;
    Acc sum = Acc(0);
    for (int n = 0; n < N; ++n) {
        const T* row = x + ((long long)n * C + c) * plane;
        for (long long p = threadIdx.x; p < plane; p += blockDim.x) sum += to_acc(row[p]);
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {  // tree: 256 -> 128 -> ... -> 1
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[c] = from_acc<T>(partial[0]);
}
