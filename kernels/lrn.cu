// lrn.cu: local response normalization across channels, the paper's formula
// (minidl/ops/lrn.py; docs/lrn.md). alpha is NOT divided by size.
//
//   lrn_forward   a: (N, C, plane) -> b, s: (N, C, plane)
//       s[c] = k + alpha * sum_{|j - c| <= size/2, 0 <= j < C} a[j]^2,   b[c] = a[c] * s[c]^-beta
//   lrn_backward  db, a, b, s -> da
//       da[c] = db[c] * s[c]^-beta - 2 alpha beta a[c] * sum_{|j - c| <= size/2} db[j] b[j] / s[j]
//
// One thread per element (n, c, p): it sums its own channel window (size loads, neighbouring
// threads in p read neighbouring addresses, so loads coalesce). Matches
// local_response_norm_forward_numpy / _backward_numpy. Launch: any 1-D grid of 1-D blocks.
#include "common.cuh"

template <typename T>
__global__ void lrn_forward(const T* a, T* b, T* s, long long total, int C, int plane, int size,
                            T alpha, T beta, T k) {
    int half = size / 2;
    FOR_EACH_INDEX(index, total) {
        // index = (n * C + c) * plane + p
        int c = (index / plane) % C;
        const T* column = a + (index - (long long)c * plane);  // channel j at column[j * plane]
        T sum = T(0);
        for (int j = max(0, c - half); j <= min(C - 1, c + half); ++j) {
            T v = column[(long long)j * plane];
            sum += v * v;
        }
        T scale = k + alpha * sum;
        s[index] = scale;
        b[index] = a[index] * real_pow(scale, -beta);
    }
}

template <typename T>
__global__ void lrn_backward(const T* db, const T* a, const T* b, const T* s, T* da,
                             long long total, int C, int plane, int size, T alpha, T beta) {
    int half = size / 2;
    FOR_EACH_INDEX(index, total) {
        int c = (index / plane) % C;
        long long base = index - (long long)c * plane;
        T sum = T(0);
        for (int j = max(0, c - half); j <= min(C - 1, c + half); ++j) {
            long long at = base + (long long)j * plane;
            sum += db[at] * b[at] / s[at];
        }
        da[index] = db[index] * real_pow(s[index], -beta) - T(2) * alpha * beta * a[index] * sum;
    }
}
