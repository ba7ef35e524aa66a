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
//
// 16-bit storage (a, b, db, da in __half or __nv_bfloat16): the window sums, the scale s and the
// power s^-beta are computed in float (acc_t<T>), and s is kept in float for backward: a 16-bit s
// would carry its rounding (up to 2^-9 relative for bfloat16) into both terms of da.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void lrn_forward(const T* a, T* b, acc_t<T>* s, long long total, int C, int plane,
                            int size, acc_t<T> alpha, acc_t<T> beta, acc_t<T> k) {
    typedef acc_t<T> Acc;
    int half = size / 2;
    FOR_EACH_INDEX(index, total) {
        // index = (n * C + c) * plane + p
        int c = (index / plane) % C;
        const T* column = a + (index - (long long)c * plane);  // channel j at column[j * plane]
        Acc sum = Acc(0);
        for (int j = max(0, c - half); j <= min(C - 1, c + half); ++j) {
            Acc v = to_acc(column[(long long)j * plane]);
            sum += v * v;
        }
        Acc scale = k + alpha * sum;
        s[index] = scale;
        b[index] = from_acc<T>(to_acc(a[index]) * real_pow(scale, -beta));
    }
}

template <typename T>
__global__ void lrn_backward(const T* db, const T* a, const T* b, const acc_t<T>* s, T* da,
                             long long total, int C, int plane, int size, acc_t<T> alpha,
                             acc_t<T> beta) {
    typedef acc_t<T> Acc;
    int half = size / 2;
    FOR_EACH_INDEX(index, total) {
        int c = (index / plane) % C;
        long long base = index - (long long)c * plane;
        Acc sum = Acc(0);
        for (int j = max(0, c - half); j <= min(C - 1, c + half); ++j) {
            long long at = base + (long long)j * plane;
            sum += to_acc(db[at]) * to_acc(b[at]) / s[at];
        }
        da[index] = from_acc<T>(to_acc(db[index]) * real_pow(s[index], -beta) -
                                Acc(2) * alpha * beta * to_acc(a[index]) * sum);
    }
}
