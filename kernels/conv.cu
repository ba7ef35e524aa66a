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
    const int M = N * OH * OW;  // columns per row; fits an int (the launcher checks)
    FOR_EACH_INDEX(index, total) {
        // index = row * M + col, row = (c * kh + i) * kw + j, col = (n * OH + oy) * OW + ox.
        // One 64-bit division, the rest in 32 bits: 64-bit division is many times slower.
        int row = index / M;
        int col = index - (long long)row * M;
        int ox = col % OW;
        int oy = (col / OW) % OH;
        int n = col / (OW * OH);
        int j = row % kw;
        int i = (row / kw) % kh;
        int c = row / (kw * kh);
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
        // index = (n * C + c) * H*W + pixel, pixel = h * W + w (32-bit arithmetic after one
        // 64-bit division)
        int plane = index / (H * W);  // = n * C + c
        int pixel = index - (long long)plane * (H * W);
        int w = pixel % W;
        int h = pixel / W;
        int c = plane % C;
        int n = plane / C;
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
