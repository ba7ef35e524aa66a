// activation.cu: ReLU and the fused bias + ReLU (minidl/ops/activation.py).
//
//   relu_forward       y = x > 0 ? x : 0
//   relu_backward      dx = y > 0 ? dy : 0
//   bias_relu_forward  y[n, c, p] = max(x[n, c, p] + b[c], 0)          (x: (N, C, plane))
//
// One thread per element, any 1-D launch. Matches relu_forward_numpy, relu_backward_numpy and
// bias_relu_forward_numpy; bias_relu's db is kernels/reduce.cu's channel_sum over relu_backward.
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
