// activation.cu: ReLU and the fused bias + ReLU (minidl/ops/activation.py).
//
//   relu_forward       y = x > 0 ? x : 0
//   relu_backward      dx = y > 0 ? dy : 0
//   bias_relu_forward  y[n, c, p] = max(x[n, c, p] + b[c], 0)          (x: (N, C, plane))
//   channel_sum        db[c] = sum_{n, p} dx[n, c, p]   (bias_relu's db, after relu_backward)
//
// Element-wise kernels: one thread per element, any 1-D launch. channel_sum: one block of
// MINIDL_REDUCE_THREADS per channel, a shared-memory tree reduction. Matches relu_forward_numpy,
// relu_backward_numpy, bias_relu_forward_numpy and bias_relu_backward_numpy.
#include "common.cuh"

template <typename T>
__global__ void relu_forward(const T* x, T* y, long long total) {
    FOR_EACH_INDEX(i, total) {
        y[i] = x[i] > T(0) ? x[i] : T(0);
    }
}

template <typename T>
__global__ void relu_backward(const T* dy, const T* y, T* dx, long long total) {
    FOR_EACH_INDEX(i, total) {
        dx[i] = y[i] > T(0) ? dy[i] : T(0);
    }
}

template <typename T>
__global__ void bias_relu_forward(const T* x, const T* b, T* y, long long total, int C, int plane) {
    FOR_EACH_INDEX(i, total) {
        T v = x[i] + b[(i / plane) % C];
        y[i] = v > T(0) ? v : T(0);
    }
}

template <typename T>
__global__ void channel_sum(const T* dx, T* db, int N, int C, int plane) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    int c = blockIdx.x;
    long long count = (long long)N * plane;
    T sum = T(0);
    for (long long e = threadIdx.x; e < count; e += blockDim.x) {
        long long n = e / plane;
        long long p = e % plane;
        sum += dx[(n * C + c) * plane + p];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[c] = partial[0];
}
