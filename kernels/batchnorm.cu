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
// common.cuh's block_sum (a shared-memory tree) halves the partial sums down to one, one sum after
// the other. The order of every addition is fixed by (t, j), so the result is the same bits every
// run (no atomics). Launch: grid (C,), block (MINIDL_REDUCE_THREADS,). The element-wise kernels:
// one thread per element (n, c, p), grid-stride; launch: any 1-D grid of 1-D blocks.
// batch_norm_update_running: one thread per channel. Matches batch_norm_stats_numpy,
// batch_norm_forward_numpy and batch_norm_backward_numpy.
//
// 16-bit storage (x, y, dy, dx, weight, bias in __half or __nv_bfloat16): the statistics shift,
// offset, var, the running statistics, dweight and dbias are acc_t<T> (float) arrays, and every
// sum runs in float: a 16-bit mean or variance would lose the precision the two passes keep.
// minidl-types: float double __half __nv_bfloat16
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
__global__ void batch_norm_stats(const T* x, acc_t<T>* shift, acc_t<T>* offset, acc_t<T>* var,
                                 int N, int C, long long plane) {
    typedef acc_t<T> Acc;
    __shared__ Acc partial[MINIDL_REDUCE_THREADS];  // block_sum's tree (common.cuh)
    int c = blockIdx.x;
    long long M = (long long)N * plane;

    // Pass 1: the plain mean, used as the centre of pass 2.
    Acc sum = Acc(0);
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        sum += to_acc(x[channel_at(j, c, C, plane)]);
    }
    Acc s = block_sum(partial, sum) / Acc(M);

    // Pass 2: deviations from s, their sum (the correction) and their squares.
    Acc d_sum = Acc(0);
    Acc d_sq = Acc(0);
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        Acc d = to_acc(x[channel_at(j, c, C, plane)]) - s;
        d_sum += d;
        d_sq += d * d;
    }
    d_sum = block_sum(partial, d_sum);  // the same tree for both sums, one after the other
    d_sq = block_sum(partial, d_sq);
    if (threadIdx.x == 0) {
        Acc o = d_sum / Acc(M);
        Acc v = d_sq / Acc(M) - o * o;  // o is tiny next to the spread: no cancellation
        shift[c] = s;
        offset[c] = o;
        var[c] = v > Acc(0) ? v : Acc(0);
    }
}

// All acc_t<T>: launched with the running statistics' dtype (float for 16-bit x).
template <typename T>
__global__ void batch_norm_update_running(acc_t<T>* running_mean, acc_t<T>* running_var,
                                          const acc_t<T>* shift, const acc_t<T>* offset,
                                          const acc_t<T>* var, int C, long long M,
                                          acc_t<T> momentum) {
    typedef acc_t<T> Acc;
    FOR_EACH_INDEX(c, C) {
        Acc unbiased = var[c] * (Acc(M) / Acc(M - 1));
        running_mean[c] =
            (Acc(1) - momentum) * running_mean[c] + momentum * (shift[c] + offset[c]);
        running_var[c] = (Acc(1) - momentum) * running_var[c] + momentum * unbiased;
    }
}

template <typename T>
__global__ void batch_norm_forward(const T* x, const acc_t<T>* shift, const acc_t<T>* offset,
                                   const acc_t<T>* var, const T* weight, const T* bias, T* y,
                                   long long total, int C, long long plane, acc_t<T> eps) {
    typedef acc_t<T> Acc;
    FOR_EACH_INDEX(index, total) {
        // index = (n * C + c) * plane + p
        int c = (int)((index / plane) % C);
        Acc invstd = Acc(1) / real_sqrt(var[c] + eps);
        Acc xhat = ((to_acc(x[index]) - shift[c]) - offset[c]) * invstd;
        y[index] = from_acc<T>(xhat * to_acc(weight[c]) + to_acc(bias[c]));
    }
}

// dweight and dbias are acc_t<T>: batch_norm_backward_input reads them unrounded (its
// M dy - dbias - xhat dweight cancels); the caller rounds the returned gradients to T.
template <typename T>
__global__ void batch_norm_backward_reduce(const T* dy, const T* x, const acc_t<T>* shift,
                                           const acc_t<T>* offset, const acc_t<T>* var,
                                           acc_t<T>* dweight, acc_t<T>* dbias, int N, int C,
                                           long long plane, acc_t<T> eps) {
    typedef acc_t<T> Acc;
    __shared__ Acc partial[MINIDL_REDUCE_THREADS];  // block_sum's tree (common.cuh)
    int c = blockIdx.x;
    long long M = (long long)N * plane;
    Acc sum_dy = Acc(0);
    Acc sum_dy_d = Acc(0);  // sum dy * (x - mean); times invstd it is sum dy * xhat
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        long long at = channel_at(j, c, C, plane);
        Acc g = to_acc(dy[at]);
        sum_dy += g;
        sum_dy_d += g * ((to_acc(x[at]) - shift[c]) - offset[c]);
    }
    sum_dy = block_sum(partial, sum_dy);  // tree: 256 -> 128 -> ... -> 1
    sum_dy_d = block_sum(partial, sum_dy_d);
    if (threadIdx.x == 0) {
        dbias[c] = sum_dy;
        dweight[c] = sum_dy_d / real_sqrt(var[c] + eps);
    }
}

template <typename T>
__global__ void batch_norm_backward_input(const T* dy, const T* x, const acc_t<T>* shift,
                                          const acc_t<T>* offset, const acc_t<T>* var,
                                          const T* weight, const acc_t<T>* dweight,
                                          const acc_t<T>* dbias, T* dx, long long total, int C,
                                          long long plane, acc_t<T> eps, int training) {
    typedef acc_t<T> Acc;
    long long M = total / C;
    FOR_EACH_INDEX(index, total) {
        int c = (int)((index / plane) % C);
        Acc invstd = Acc(1) / real_sqrt(var[c] + eps);
        Acc w = to_acc(weight[c]);
        if (training) {
            Acc xhat = ((to_acc(x[index]) - shift[c]) - offset[c]) * invstd;
            dx[index] = from_acc<T>(w * invstd / Acc(M) *
                                    (Acc(M) * to_acc(dy[index]) - dbias[c] - xhat * dweight[c]));
        } else {
            dx[index] = from_acc<T>(w * invstd * to_acc(dy[index]));
        }
    }
}
