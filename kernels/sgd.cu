// sgd.cu: one SGD-with-momentum step over a parameter, in place (minidl/optim.py).
//
//   PyTorch's rule (paper_rule = 0):  v = momentum * v + (g + weight_decay * w);  w -= lr * v
//   the paper's rule (paper_rule = 1): v = momentum * v - weight_decay * lr * w - lr * g;  w += v
//
// With a constant lr the two give the same weights (v_paper = -lr * v_pytorch); they differ when
// lr changes, because the paper's v remembers the old rate. One thread per element; any 1-D launch.
// Matches SGD._step_numpy.
#include "common.cuh"

template <typename T>
__global__ void sgd_step(T* w, const T* g, T* v, long long total, T lr, T momentum,
                         T weight_decay, int paper_rule) {
    FOR_EACH_INDEX(i, total) {
        if (paper_rule) {
            v[i] = momentum * v[i] - weight_decay * lr * w[i] - lr * g[i];
            w[i] += v[i];
        } else {
            v[i] = momentum * v[i] + (g[i] + weight_decay * w[i]);
            w[i] -= lr * v[i];
        }
    }
}
