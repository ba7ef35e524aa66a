// conv.cu: the non-GEMM parts of 2-D convolution (minidl/ops/conv.py; docs/conv.md).
//
//   im2col     x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), rows (c, i, j), columns (n, oy, ox)
//              one thread per (c, n, oy, ox) copying that window's kh*kw cells; matches
//              im2col_numpy.
//   col2im     dcols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W)
//              one thread per input element (n, c, h, w) that GATHERS the cols entries that were
//              copied from it, visiting only the windows that contain it: deterministic, no
//              atomics; matches col2im_numpy.
//   bias_add   y: (O, M) += b[o] (M = N*OH*OW, conv output before its transpose to NCHW);
//              one thread per element.
//
// Launch: any 1-D grid of 1-D blocks (grid-stride loops). The GEMMs in between are cuBLAS
// (cupy.matmul); the bias gradient is kernels/reduce.cu's channel_sum.
#include "common.cuh"

template <typename T>
__global__ void im2col(const T* x, T* cols, long long total, int N, int C, int H, int W, int kh,
                       int kw, int sh, int sw, int ph, int pw, int OH, int OW) {
    const int M = N * OH * OW;  // columns of cols; fits an int (the launcher checks)
    FOR_EACH_INDEX(index, total) {
        // index = c * M + col, col = (n * OH + oy) * OW + ox: this thread copies the window of
        // output pixel (n, oy, ox) in channel c, the kh*kw rows (c, i, j) of column col. Adjacent
        // threads write adjacent columns (coalesced), and the index divisions are paid once per
        // window rather than once per element.
        int c = index / M;
        int col = index - (long long)c * M;
        int ox = col % OW;
        int oy = (col / OW) % OH;
        int n = col / (OW * OH);
        const T* plane = x + ((long long)n * C + c) * H * W;
        T* out = cols + (long long)c * kh * kw * M + col;
        int top = oy * sh - ph;
        int left = ox * sw - pw;
        for (int i = 0; i < kh; ++i) {
            int h = top + i;
            for (int j = 0; j < kw; ++j) {
                int w = left + j;
                bool inside = h >= 0 && h < H && w >= 0 && w < W;
                out[(long long)(i * kw + j) * M] = inside ? plane[h * W + w] : T(0);
            }
        }
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
        // Padded pixel (hp, wp) is cell (i, j) = (hp - oy*sh, wp - ox*sw) of window (oy, ox)
        // exactly when 0 <= i < kh: oy from ceil((hp - kh + 1) / sh) to floor(hp / sh), clipped
        // to the output; the same for ox. Only those windows are visited.
        int hp = h + ph;
        int wp = w + pw;
        int oy_lo = hp < kh ? 0 : (hp - kh) / sh + 1;
        int oy_hi = min(hp / sh, OH - 1);
        int ox_lo = wp < kw ? 0 : (wp - kw) / sw + 1;
        int ox_hi = min(wp / sw, OW - 1);
        T sum = T(0);
        for (int oy = oy_lo; oy <= oy_hi; ++oy) {
            int i = hp - oy * sh;
            for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                int j = wp - ox * sw;
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
