// loss.cu: softmax cross-entropy from logits (minidl/ops/loss.py; docs/loss.md).
//
// The plain case (class indices, no weight, no smoothing, mean; AlexNet's loss):
//   cross_entropy_forward   z: (N, K), t: (N,) -> losses, lse: (N,)
//       one block of MINIDL_REDUCE_THREADS per row n: a shared-memory tree reduction for the row
//       maximum m, a second for sum_k exp(z - m); lse = m + log(sum), loss = lse - z[t].
//       Matches cross_entropy_forward_numpy. Launch: grid (N,), block (MINIDL_REDUCE_THREADS,).
//   cross_entropy_backward  dz[n, k] = (exp(z[n, k] - lse[n]) - [k == t[n]]) * scale,
//       scale = dloss / N; one thread per element, any 1-D launch.
//
// Every option (class weights, ignore_index, label smoothing, probability targets, any
// reduction) writes the loss of row n as a weighted sum of its log-probabilities,
//     loss[n] = -sum_k q[n, k] * log p[n, k] = sum_k q[n, k] * (m - z[n, k]) + Q[n] * log(sum),
// with Q[n] = sum_k q[n, k] and target weights q (eps = label smoothing, w = class weights):
//     class index t[n]:  q[n, k] = w[k] * ((1 - eps) * [k == t[n]] + eps / K), 0 if t[n] ignored
//     probabilities p:   q[n, k] = w[k] * ((1 - eps) * p[n, k] + eps / K)
//   cross_entropy_options_forward   -> losses, lse, Q, counted: (N,)
//       one block per row as above, and two more tree reductions (block_sum) for
//       sum_k q (m - z) and Q. counted[n] is what the mean divides by: w[t[n]] (0 if ignored)
//       for class indices, 1 for probabilities. Matches cross_entropy_options_forward_numpy.
//       Launch: grid (N,), block (MINIDL_REDUCE_THREADS,).
//   cross_entropy_options_backward  dz[n, k] = scale[n] * (exp(z[n, k] - lse[n]) * Q[n] - q[n, k])
//       scale[n]: the reduction's factor (dloss / sum(counted), dloss, or dloss[n]); one thread
//       per element, any 1-D launch.
//
// 16-bit storage (z, p, weight, dz in __half or __nv_bfloat16): softmax cross-entropy runs in
// float (acc_t<T>): the maximum, the sum of exponentials, its log and the weighted sums, and the
// per-row outputs losses, lse, Q, counted and the backward's scale are acc_t<T> arrays. Only dz is
// rounded to T. A float16 sum of 1000 exponentials would keep about 3 significant digits.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

// The block maximum of the forward kernels, over the block's shared partial[blockDim.x]: every
// thread passes its own value and gets the block's maximum back. The same tree as common.cuh's
// block_sum (which the forward kernels use for their sums): thread t writes partial[t], then each
// level half = blockDim.x / 2, ..., 1 folds partial[t + half] into partial[t] for t < half
// (docs/loss.md walks through the barriers). Every thread of the block must call it, since it
// holds __syncthreads(); partial is free for the next reduction on return.
template <typename Acc>
__device__ Acc block_max(Acc* partial, Acc value) {
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && partial[threadIdx.x + half] > partial[threadIdx.x])
            partial[threadIdx.x] = partial[threadIdx.x + half];
        __syncthreads();
    }
    Acc result = partial[0];
    __syncthreads();  // everyone has read the result before partial is reused
    return result;
}

// Steps 1 and 2 of both forward kernels, for the block's row (K logits): the row maximum m, set
// for every thread, and the returned log sum_k exp(z - m), so that lse = m + log_sum. Thread t
// first scans k = t, t + blockDim.x, ... on its own, then the block reduces the threads' values.
template <typename T>
__device__ acc_t<T> row_log_sum_exp(acc_t<T>* partial, const T* row, int K, acc_t<T>& m) {
    typedef acc_t<T> Acc;
    m = real_neg_inf(Acc(0));
    for (int k = threadIdx.x; k < K; k += blockDim.x) m = to_acc(row[k]) > m ? to_acc(row[k]) : m;
    m = block_max(partial, m);
    Acc sum = Acc(0);
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum += real_exp(to_acc(row[k]) - m);
    return real_log(block_sum(partial, sum));
}

template <typename T>
__global__ void cross_entropy_forward(const T* z, const int* t, acc_t<T>* losses, acc_t<T>* lse,
                                      int N, int K) {
    typedef acc_t<T> Acc;
    __shared__ Acc partial[MINIDL_REDUCE_THREADS];
    int n = blockIdx.x;
    const T* row = z + (long long)n * K;

    Acc m;
    Acc log_sum = row_log_sum_exp(partial, row, K, m);  // steps 1 and 2
    if (threadIdx.x == 0) {
        lse[n] = m + log_sum;
        losses[n] = (m - to_acc(row[t[n]])) + log_sum;  // not lse - z[t]: exact for logits of 1e4
    }
}

template <typename T>
__global__ void cross_entropy_backward(const T* z, const int* t, const acc_t<T>* lse, T* dz,
                                       long long total, int K, acc_t<T> scale) {
    typedef acc_t<T> Acc;
    FOR_EACH_INDEX(i, total) {
        long long n = i / K;
        int k = i % K;
        Acc target = (k == t[n]) ? Acc(1) : Acc(0);
        dz[i] = from_acc<T>((real_exp(to_acc(z[i]) - lse[n]) - target) * scale);
    }
}

// q[n, k] of the options kernels: the weight log p[n, k] gets in row n's loss (see the header).
// soft: p holds probabilities (N, K) and t is unused; else t holds class indices and p is unused.
template <typename T>
__device__ acc_t<T> target_weight(const int* t, const T* p, const T* weight, long long n, int k,
                                  int K, int soft, int ignore_index, acc_t<T> smoothing) {
    typedef acc_t<T> Acc;
    Acc spread = smoothing / Acc(K);  // label smoothing gives every class eps / K
    if (soft) return to_acc(weight[k]) * ((Acc(1) - smoothing) * to_acc(p[n * K + k]) + spread);
    int tn = t[n];
    if (tn == ignore_index) return Acc(0);
    return to_acc(weight[k]) * ((k == tn ? Acc(1) - smoothing : Acc(0)) + spread);
}

template <typename T>
__global__ void cross_entropy_options_forward(const T* z, const int* t, const T* p,
                                              const T* weight, acc_t<T>* losses, acc_t<T>* lse,
                                              acc_t<T>* q_sum, acc_t<T>* counted, int N, int K,
                                              int soft, int ignore_index, acc_t<T> smoothing) {
    typedef acc_t<T> Acc;
    __shared__ Acc partial[MINIDL_REDUCE_THREADS];
    int n = blockIdx.x;
    const T* row = z + (long long)n * K;

    Acc m;
    Acc log_sum = row_log_sum_exp(partial, row, K, m);  // steps 1 and 2

    // 3. sum_k q (m - z) and Q = sum_k q, in one pass over the row and two reductions
    Acc weighted = Acc(0);
    Acc q_total = Acc(0);
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        Acc q = target_weight(t, p, weight, n, k, K, soft, ignore_index, smoothing);
        if (q != Acc(0)) weighted += q * (m - to_acc(row[k]));  // q = 0 adds nothing, even at -inf
        q_total += q;
    }
    weighted = block_sum(partial, weighted);
    q_total = block_sum(partial, q_total);
    if (threadIdx.x == 0) {
        lse[n] = m + log_sum;
        q_sum[n] = q_total;
        losses[n] = weighted + q_total * log_sum;  // not Q*lse - sum q z: exact for 1e4
        if (soft) {
            counted[n] = Acc(1);
        } else {
            counted[n] = t[n] == ignore_index ? Acc(0) : to_acc(weight[t[n]]);
        }
    }
}

template <typename T>
__global__ void cross_entropy_options_backward(const T* z, const int* t, const T* p,
                                               const T* weight, const acc_t<T>* lse,
                                               const acc_t<T>* q_sum, const acc_t<T>* scale,
                                               T* dz, long long total, int K, int soft,
                                               int ignore_index, acc_t<T> smoothing) {
    FOR_EACH_INDEX(i, total) {
        long long n = i / K;
        int k = i % K;
        acc_t<T> q = target_weight(t, p, weight, n, k, K, soft, ignore_index, smoothing);
        dz[i] = from_acc<T>(scale[n] * (real_exp(to_acc(z[i]) - lse[n]) * q_sum[n] - q));
    }
}
