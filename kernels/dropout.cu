// dropout.cu: inverted dropout with a counter-based generator (minidl/ops/dropout.py;
// docs/dropout.md).
//
//   bits(key, i)      MurmurHash3's 32-bit finalizer applied twice to (key, element index i):
//                     the same integer arithmetic as dropout_bits() in NumPy, so the mask is the
//                     same on every device and for every launch shape.
//   dropout_apply     y[i] = keep(first + i) ? x[i] * scale : 0,
//                     keep(j) = (bits(key, j) >> 8) >= threshold
//
// One kernel for both directions: forward applies the mask to x, backward applies the same mask
// (regenerated from the key, not stored) to dy, since dx = dy * m / (1 - p) is the same product.
// threshold = round(p * 2^24), scale = 1 / (1 - p). One thread per element, grid-stride loop;
// launched by cuda.launch_1d, but any 1-D launch gives the same result. Matches
// x * dropout_mask_numpy(key, x.shape, p, first) / (1 - p) in minidl/ops/dropout.py.
// first: the element index x[0] has in the global batch (0 in one process; a data-parallel
// rank's batch starts further in, so every rank draws one process's masks for its samples).
// The mask depends on (key, i) only, never on T: float, double and 16-bit storage drop the same
// elements. In 16-bit, x * scale is computed in float and rounded once.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

__device__ __forceinline__ unsigned int fmix32(unsigned int h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

__device__ __forceinline__ bool dropout_keep(unsigned int key_lo, unsigned int key_hi,
                                             long long index, unsigned int threshold) {
    unsigned int lo = (unsigned int)(index & 0xFFFFFFFFLL);
    unsigned int hi = (unsigned int)(index >> 32);
    unsigned int h = fmix32(lo ^ key_lo);
    h = fmix32(h + (hi ^ key_hi) * 0x9E3779B9u);
    return (h >> 8) >= threshold;
}

template <typename T>
__global__ void dropout_apply(const T* x, T* y, long long total, long long first,
                              unsigned int key_lo, unsigned int key_hi, unsigned int threshold,
                              acc_t<T> scale) {
    FOR_EACH_INDEX(i, total) {
        y[i] = from_acc<T>(dropout_keep(key_lo, key_hi, first + i, threshold)
                              ? to_acc(x[i]) * scale
                              : acc_t<T>(0));
    }
}
