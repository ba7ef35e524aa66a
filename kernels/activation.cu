// activation.cu: ReLU and the fused bias + ReLU (minidl/ops/activation.py; docs/activation.md).
//
//   relu_forward       y = x > 0 ? x : 0
//   relu_backward      dx = y > 0 ? dy : 0
//   bias_relu_forward  y[n, c, p] = max(x[n, c, p] + b[c], 0)          (x: (N, C, plane))
//
// One thread per element, any 1-D launch. Matches relu_forward_numpy, relu_backward_numpy and
// bias_relu_forward_numpy; bias_relu's db is kernels/reduce.cu's channel_sum over relu_backward.
// 16-bit storage: compares and adds in float (acc_t<T>), so x + b is rounded once, on the store.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void relu_forward(const T* x, T* y, long long total) {
    FOR_EACH_INDEX(i, total) {
        y[i] = to_acc(x[i]) > acc_t<T>(0) ? x[i] : from_acc<T>(acc_t<T>(0));
    }
}

template <typename T>
__global__ void relu_backward(const T* dy, const T* y, T* dx, long long total) {
    FOR_EACH_INDEX(i, total) {
        dx[i] = to_acc(y[i]) > acc_t<T>(0) ? dy[i] : from_acc<T>(acc_t<T>(0));
    }
}

template <typename T>
__global__ void bias_relu_forward(const T* x, const T* b, T* y, long long total, int C, int plane) {
    FOR_EACH_INDEX(i, total) {
        acc_t<T> v = to_acc(x[i]) + to_acc(b[(i / plane) % C]);
        y[i] = from_acc<T>(v > acc_t<T>(0) ? v : acc_t<T>(0));
    }
}
