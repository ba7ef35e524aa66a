// loss.cu: softmax cross-entropy from logits (minidl/ops/loss.py).
//
//   cross_entropy_forward   z: (N, K), t: (N,) -> losses, lse: (N,)
//       one block of MINIDL_REDUCE_THREADS per row n: a shared-memory tree reduction for the row
//       maximum m, a second for sum_k exp(z - m); lse = m + log(sum), loss = lse - z[t].
//       Matches cross_entropy_forward_numpy. Launch: grid (N,), block (MINIDL_REDUCE_THREADS,).
//   cross_entropy_backward  dz[n, k] = (exp(z[n, k] - lse[n]) - [k == t[n]]) * scale,
//       scale = dloss / N; one thread per element, any 1-D launch.
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
