// activation.cu: ReLU (minidl/ops/activation.py).
//
//   relu_forward   y = x > 0 ? x : 0
//   relu_backward  dx = y > 0 ? dy : 0
//
// One thread per element; any 1-D launch. Matches relu_forward_numpy / relu_backward_numpy.
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
