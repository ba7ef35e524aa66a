// sgd.cu: one SGD-with-momentum step over a parameter, in place (minidl/optim.py; docs/sgd.md).
//
//   g = grad_scale * grad    (1 / the loss scale, or 1: the unscaling fused into the step)
//   PyTorch's rule (paper_rule = 0):  v = momentum * v + (g + weight_decay * w);  w -= lr * v
//   the paper's rule (paper_rule = 1): v = momentum * v - weight_decay * lr * w - lr * g;  w += v
//
// With a constant lr the two give the same weights (v_paper = -lr * v_pytorch); they differ when
// lr changes, because the paper's v remembers the old rate. One thread per element; any 1-D launch.
// Matches SGD._step_numpy.
//
// Master weights: the update runs on `master`, an acc_t<T> copy of the parameter, and the
// parameter w receives master rounded to T. For a 16-bit parameter master is the optimizer's
// float32 copy (Chainer's use_fp32_update; PyTorch AMP's float32 parameters): an update smaller
// than half an ulp of w (lr * g against w at 2^-11 relative for __half, 2^-8 for bfloat16) would
// be rounded away every step, while in float32 it accumulates. For float and double, T is acc_t<T>
// and the caller passes w itself as master (then the final store writes back the same value).
// v is acc_t<T> too. grad_scale is applied in float, so a 16-bit gradient scaled up to avoid
// underflow is scaled down where it cannot underflow.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void sgd_step(T* w, const T* grad, acc_t<T>* master, acc_t<T>* v, long long total,
                         acc_t<T> lr, acc_t<T> momentum, acc_t<T> weight_decay,
                         acc_t<T> grad_scale, int paper_rule) {
    typedef acc_t<T> Acc;
    FOR_EACH_INDEX(i, total) {
        Acc g = grad_scale * to_acc(grad[i]);
        Acc m = master[i];
        if (paper_rule) {
            v[i] = momentum * v[i] - weight_decay * lr * m - lr * g;
            m += v[i];
        } else {
            v[i] = momentum * v[i] + (g + weight_decay * m);
            m -= lr * v[i];
        }
        master[i] = m;
        w[i] = from_acc<T>(m);
    }
}
