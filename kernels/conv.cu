// conv.cu: the non-GEMM parts of 2-D convolution (minidl/ops/conv.py; docs/conv.md).
//
//   im2col     x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), rows (c, i, j), columns (n, oy, ox)
//              one thread per cols element (c, i, j, n, oy, ox); matches im2col_numpy.
//   col2im     dcols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W)
//              one thread per input element (n, c, h, w) that GATHERS the cols entries that were
//              copied from it: deterministic, no atomics; matches col2im_numpy.
//   bias_add   y: (O, M) += b[o] (M = N*OH*OW, conv output before its transpose to NCHW);
//              one thread per element.
//
// Launch: any 1-D grid of 1-D blocks (grid-stride loops). The GEMMs in between are cuBLAS
// (cupy.matmul); the bias gradient is kernels/reduce.cu's channel_sum.
#include "common.cuh"

template <typename T>
__global__ void im2col(const T* x, T* cols, long long total, int N, int C, int H, int W, int kh,
                       int kw, int sh, int sw, int ph, int pw, int OH, int OW) {
    FOR_EACH_INDEX(index, total) {
        // index = (((((c * kh + i) * kw + j) * N + n) * OH + oy) * OW + ox
        long long rest = index;
        int ox = rest % OW; rest /= OW;
        int oy = rest % OH; rest /= OH;
        int n = rest % N; rest /= N;
        int j = rest % kw; rest /= kw;
        int i = rest % kh; rest /= kh;
        int c = rest;
        int h = oy * sh - ph + i;
        int w = ox * sw - pw + j;
        bool inside = h >= 0 && h < H && w >= 0 && w < W;
        cols[index] = inside ? x[(((long long)n * C + c) * H + h) * W + w] : T(0);
    }
}

template <typename T>
__global__ void col2im(const T* dcols, T* dx, long long total, int N, int C, int H, int W, int kh,
                       int kw, int sh, int sw, int ph, int pw, int OH, int OW) {
    FOR_EACH_INDEX(index, total) {
        // index = ((n * C + c) * H + h) * W + w
        int w = index % W;
        int h = (index / W) % H;
        int c = (index / ((long long)W * H)) % C;
        int n = index / ((long long)W * H * C);
        T sum = T(0);
        for (int i = 0; i < kh; ++i) {
            int top = h + ph - i;  // = oy * sh for the window whose row i is this pixel
            if (top < 0 || top % sh != 0 || top / sh >= OH) continue;
            int oy = top / sh;
            for (int j = 0; j < kw; ++j) {
                int left = w + pw - j;
                if (left < 0 || left % sw != 0 || left / sw >= OW) continue;
                int ox = left / sw;
                long long row = ((long long)c * kh + i) * kw + j;
                sum += dcols[((row * N + n) * OH + oy) * OW + ox];
            }
        }
        dx[index] = sum;
    }
}

template <typename T>
__global__ void bias_add(T* y, const T* b, long long total, int O, int M) {
    FOR_EACH_INDEX(index, total) {
        int o = index / M;
        y[index] += b[o];
    }
}
