// batchnorm.cu: batch normalization (Ioffe & Szegedy 2015), per channel c over M = N * plane
// values (minidl/ops/batchnorm.py; docs/batchnorm.md). x is (N, C, plane): plane = H*W for
// BatchNorm2d, L for (N, C, L), 1 for (N, C).
//
//   batch_norm_stats            x -> shift, offset, var: (C,)
//       shift[c]  = sum_{n,p} x / M                        pass 1, a first mean
//       offset[c] = sum_{n,p} (x - shift) / M              pass 2, its small correction
//       var[c]    = sum_{n,p} (x - shift)^2 / M - offset^2 (biased); mean = shift + offset
//   batch_norm_update_running   running = (1 - momentum) * running + momentum * batch,
//                               with the unbiased variance var * M / (M - 1)
//   batch_norm_forward          y = ((x - shift) - offset) * invstd * weight + bias,
//                               invstd = 1 / sqrt(var + eps)
//   batch_norm_backward_reduce  dweight[c] = sum dy * xhat,   dbias[c] = sum dy
//   batch_norm_backward_input   training: dx = weight * invstd / M * (M dy - dbias - xhat dweight)
//                               eval:     dx = weight * invstd * dy
//
// The statistics are the corrected two-pass algorithm (Chan, Golub & LeVeque 1983), never
// E[x^2] - E[x]^2: pass 2 sums deviations from pass 1's mean, so a channel whose mean is large
// against its spread keeps its precision, and x - shift is exact when x is near shift (Sterbenz),
// which is why the normalization subtracts shift and offset one after the other.
//
// Thread mapping. The two reductions: one block of MINIDL_REDUCE_THREADS per channel c; thread t
// takes the channel's values j = t, t + blockDim, ... (j = n * plane + p: coalesced along p), then
// a shared-memory tree halves the partial sums down to one. The order of every addition is fixed
// by (t, j), so the result is the same bits every run (no atomics). Launch: grid (C,),
// block (MINIDL_REDUCE_THREADS,). The element-wise kernels: one thread per element (n, c, p),
// grid-stride; launch: any 1-D grid of 1-D blocks. batch_norm_update_running: one thread per
// channel. Matches batch_norm_stats_numpy, batch_norm_forward_numpy and
// batch_norm_backward_numpy.
#include "common.cuh"

__device__ __forceinline__ float real_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double real_sqrt(double x) { return sqrt(x); }

// Element j = n * plane + p of channel c in an (N, C, plane) array.
__device__ __forceinline__ long long channel_at(long long j, int c, int C, long long plane) {
    long long n = j / plane;
    long long p = j - n * plane;
    return (n * C + c) * plane + p;
}

template <typename T>
__global__ void batch_norm_stats(const T* x, T* shift, T* offset, T* var, int N, int C,
                                 long long plane) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    __shared__ T partial_sq[MINIDL_REDUCE_THREADS];
    int c = blockIdx.x;
    long long M = (long long)N * plane;

    // Pass 1: the plain mean, used as the centre of pass 2.
    T sum = T(0);
    for (long long j = threadIdx.x; j < M; j += blockDim.x) sum += x[channel_at(j, c, C, plane)];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {  // tree: 256 -> 128 -> ... -> 1
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    T s = partial[0] / T(M);
    __syncthreads();  // every thread has read partial[0] before it is overwritten

    // Pass 2: deviations from s, their sum (the correction) and their squares.
    T d_sum = T(0);
    T d_sq = T(0);
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        T d = x[channel_at(j, c, C, plane)] - s;
        d_sum += d;
        d_sq += d * d;
    }
    partial[threadIdx.x] = d_sum;
    partial_sq[threadIdx.x] = d_sq;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {  // the same tree for both sums
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
            partial_sq[threadIdx.x] += partial_sq[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        T o = partial[0] / T(M);
        T v = partial_sq[0] / T(M) - o * o;  // o is tiny next to the spread: no cancellation
        shift[c] = s;
        offset[c] = o;
        var[c] = v > T(0) ? v : T(0);
    }
}

template <typename T>
__global__ void batch_norm_update_running(T* running_mean, T* running_var, const T* shift,
                                          const T* offset, const T* var, int C, long long M,
                                          T momentum) {
    FOR_EACH_INDEX(c, C) {
        T unbiased = var[c] * (T(M) / T(M - 1));
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * (shift[c] + offset[c]);
        running_var[c] = (T(1) - momentum) * running_var[c] + momentum * unbiased;
    }
}

template <typename T>
__global__ void batch_norm_forward(const T* x, const T* shift, const T* offset, const T* var,
                                   const T* weight, const T* bias, T* y, long long total, int C,
                                   long long plane, T eps) {
    FOR_EACH_INDEX(index, total) {
        // index = (n * C + c) * plane + p
        int c = (int)((index / plane) % C);
        T invstd = T(1) / real_sqrt(var[c] + eps);
        T xhat = ((x[index] - shift[c]) - offset[c]) * invstd;
        y[index] = xhat * weight[c] + bias[c];
    }
}

template <typename T>
__global__ void batch_norm_backward_reduce(const T* dy, const T* x, const T* shift,
                                           const T* offset, const T* var, T* dweight, T* dbias,
                                           int N, int C, long long plane, T eps) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    __shared__ T partial_xhat[MINIDL_REDUCE_THREADS];
    int c = blockIdx.x;
    long long M = (long long)N * plane;
    T sum_dy = T(0);
    T sum_dy_d = T(0);  // sum dy * (x - mean); times invstd it is sum dy * xhat
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        long long at = channel_at(j, c, C, plane);
        sum_dy += dy[at];
        sum_dy_d += dy[at] * ((x[at] - shift[c]) - offset[c]);
    }
    partial[threadIdx.x] = sum_dy;
    partial_xhat[threadIdx.x] = sum_dy_d;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {  // tree: 256 -> 128 -> ... -> 1
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
            partial_xhat[threadIdx.x] += partial_xhat[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        dbias[c] = partial[0];
        dweight[c] = partial_xhat[0] / real_sqrt(var[c] + eps);
    }
}

template <typename T>
__global__ void batch_norm_backward_input(const T* dy, const T* x, const T* shift,
                                          const T* offset, const T* var, const T* weight,
                                          const T* dweight, const T* dbias, T* dx,
                                          long long total, int C, long long plane, T eps,
                                          int training) {
    long long M = total / C;
    FOR_EACH_INDEX(index, total) {
        int c = (int)((index / plane) % C);
        T invstd = T(1) / real_sqrt(var[c] + eps);
        if (training) {
            T xhat = ((x[index] - shift[c]) - offset[c]) * invstd;
            dx[index] = weight[c] * invstd / T(M) *
                        (T(M) * dy[index] - dbias[c] - xhat * dweight[c]);
        } else {
            dx[index] = weight[c] * invstd * dy[index];
        }
    }
}
