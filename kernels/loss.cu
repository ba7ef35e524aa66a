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
//       one block per row as above, and a third tree reduction (two sums at once) for
//       sum_k q (m - z) and Q. counted[n] is what the mean divides by: w[t[n]] (0 if ignored)
//       for class indices, 1 for probabilities. Matches cross_entropy_options_forward_numpy.
//       Launch: grid (N,), block (MINIDL_REDUCE_THREADS,).
//   cross_entropy_options_backward  dz[n, k] = scale[n] * (exp(z[n, k] - lse[n]) * Q[n] - q[n, k])
//       scale[n]: the reduction's factor (dloss / sum(counted), dloss, or dloss[n]); one thread
//       per element, any 1-D launch.
#include "common.cuh"

template <typename T>
__global__ void cross_entropy_forward(const T* z, const int* t, T* losses, T* lse, int N, int K) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    int n = blockIdx.x;
    const T* row = z + (long long)n * K;

    T m = real_neg_inf(T(0));
    for (int k = threadIdx.x; k < K; k += blockDim.x) m = row[k] > m ? row[k] : m;
    partial[threadIdx.x] = m;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && partial[threadIdx.x + half] > partial[threadIdx.x])
            partial[threadIdx.x] = partial[threadIdx.x + half];
        __syncthreads();
    }
    m = partial[0];
    __syncthreads();  // everyone has read the maximum before partial is reused

    T sum = T(0);
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum += real_exp(row[k] - m);
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        T log_sum = real_log(partial[0]);
        lse[n] = m + log_sum;
        losses[n] = (m - row[t[n]]) + log_sum;  // not lse - z[t]: exact for logits of 1e4
    }
}

template <typename T>
__global__ void cross_entropy_backward(const T* z, const int* t, const T* lse, T* dz,
                                       long long total, int K, T scale) {
    FOR_EACH_INDEX(i, total) {
        long long n = i / K;
        int k = i % K;
        T target = (k == t[n]) ? T(1) : T(0);
        dz[i] = (real_exp(z[i] - lse[n]) - target) * scale;
    }
}

// q[n, k] of the options kernels: the weight log p[n, k] gets in row n's loss (see the header).
// soft: p holds probabilities (N, K) and t is unused; else t holds class indices and p is unused.
template <typename T>
__device__ T target_weight(const int* t, const T* p, const T* weight, long long n, int k, int K,
                           int soft, int ignore_index, T smoothing) {
    T spread = smoothing / T(K);  // label smoothing gives every class eps / K
    if (soft) return weight[k] * ((T(1) - smoothing) * p[n * K + k] + spread);
    int tn = t[n];
    if (tn == ignore_index) return T(0);
    return weight[k] * ((k == tn ? T(1) - smoothing : T(0)) + spread);
}

template <typename T>
__global__ void cross_entropy_options_forward(const T* z, const int* t, const T* p,
                                              const T* weight, T* losses, T* lse, T* q_sum,
                                              T* counted, int N, int K, int soft,
                                              int ignore_index, T smoothing) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    __shared__ T partial_q[MINIDL_REDUCE_THREADS];
    int n = blockIdx.x;
    const T* row = z + (long long)n * K;

    // 1. the row maximum m (as cross_entropy_forward)
    T m = real_neg_inf(T(0));
    for (int k = threadIdx.x; k < K; k += blockDim.x) m = row[k] > m ? row[k] : m;
    partial[threadIdx.x] = m;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && partial[threadIdx.x + half] > partial[threadIdx.x])
            partial[threadIdx.x] = partial[threadIdx.x + half];
        __syncthreads();
    }
    m = partial[0];
    __syncthreads();  // everyone has read the maximum before partial is reused

    // 2. sum_k exp(z - m), and 3. sum_k q (m - z) and Q = sum_k q, in one pass and one tree
    T sum = T(0);
    for (int k = threadIdx.x; k < K; k += blockDim.x) sum += real_exp(row[k] - m);
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    T log_sum = real_log(partial[0]);
    __syncthreads();  // everyone has read the sum before partial is reused

    T weighted = T(0);
    T q_total = T(0);
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        T q = target_weight(t, p, weight, n, k, K, soft, ignore_index, smoothing);
        if (q != T(0)) weighted += q * (m - row[k]);  // q = 0 adds nothing, even for z = -inf
        q_total += q;
    }
    partial[threadIdx.x] = weighted;
    partial_q[threadIdx.x] = q_total;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
            partial_q[threadIdx.x] += partial_q[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        lse[n] = m + log_sum;
        q_sum[n] = partial_q[0];
        losses[n] = partial[0] + partial_q[0] * log_sum;  // not Q*lse - sum q z: exact for 1e4
        if (soft) {
            counted[n] = T(1);
        } else {
            counted[n] = t[n] == ignore_index ? T(0) : weight[t[n]];
        }
    }
}

template <typename T>
__global__ void cross_entropy_options_backward(const T* z, const int* t, const T* p,
                                               const T* weight, const T* lse, const T* q_sum,
                                               const T* scale, T* dz, long long total, int K,
                                               int soft, int ignore_index, T smoothing) {
    FOR_EACH_INDEX(i, total) {
        long long n = i / K;
        int k = i % K;
        T q = target_weight(t, p, weight, n, k, K, soft, ignore_index, smoothing);
        dz[i] = scale[n] * (real_exp(z[i] - lse[n]) * q_sum[n] - q);
    }
}
