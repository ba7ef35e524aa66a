// conv.cu: the non-GEMM parts of 2-D convolution (minidl/ops/conv.py; docs/conv.md).
//
//   im2col     x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), rows (c, i, j), columns (n, oy, ox)
//              cols[(c, i, j), (n, oy, ox)] = x[n, c, oy*sh - ph + i*dh, ox*sw - pw + j*dw]
//              (0 outside the input); one thread per (c, n, oy, ox) copying that window's kh*kw
//              cells; matches im2col_numpy.
//   col2im     dcols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W)
//              one thread per input element (n, c, h, w) that GATHERS the cols entries that were
//              copied from it, visiting only the windows that contain it: deterministic, no
//              atomics; matches col2im_numpy.
//   (ph, pw) is the top/left padding; the bottom/right padding ("same" with an even effective
//   kernel pads one more there) only shows in OH, OW, since cells past the input read as 0.
//   bias_add   y: (O, M) += b[o] (M = N*OH*OW, conv output before its transpose to NCHW);
//              one thread per element.
//
// Launch: any 1-D grid of 1-D blocks (grid-stride loops). The GEMMs in between are cuBLAS
// (cupy.matmul); the bias gradient is kernels/reduce.cu's channel_sum.
// 16-bit storage: im2col copies values (exact), col2im sums in float and rounds once, bias_add
// adds in float and rounds once.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void im2col(const T* x, T* cols, long long total, int N, int C, int H, int W, int kh,
                       int kw, int sh, int sw, int ph, int pw, int dh, int dw, int OH, int OW) {
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
            int h = top + i * dh;  // dilation: taps dh rows apart
            for (int j = 0; j < kw; ++j) {
                int w = left + j * dw;
                bool inside = h >= 0 && h < H && w >= 0 && w < W;
                out[(long long)(i * kw + j) * M] = inside ? plane[h * W + w] : from_acc<T>(0);
            }
        }
    }
}

template <typename T>
__global__ void col2im(const T* dcols, T* dx, long long total, int N, int C, int H, int W, int kh,
                       int kw, int sh, int sw, int ph, int pw, int dh, int dw, int OH, int OW) {
    FOR_EACH_INDEX(index, total) {
        // index = (n * C + c) * H*W + pixel, pixel = h * W + w (32-bit arithmetic after one
        // 64-bit division)
        int plane = index / (H * W);  // = n * C + c
        int pixel = index - (long long)plane * (H * W);
        int w = pixel % W;
        int h = pixel / W;
        int c = plane % C;
        int n = plane / C;
        // Padded pixel (hp, wp) sits at offset (di, dj) = (hp - oy*sh, wp - ox*sw) from the
        // corner of window (oy, ox); it is that window's cell (i, j) = (di / dh, dj / dw) exactly
        // when 0 <= di < reach_h = dh*(kh - 1) + 1 and di is a multiple of dh (the same for dj).
        // oy runs from ceil((hp - reach_h + 1) / sh) to floor(hp / sh), clipped to the output;
        // only those windows are visited, and with dilation the off-grid ones are skipped.
        int hp = h + ph;
        int wp = w + pw;
        int reach_h = dh * (kh - 1) + 1;
        int reach_w = dw * (kw - 1) + 1;
        int oy_lo = hp < reach_h ? 0 : (hp - reach_h) / sh + 1;
        int oy_hi = min(hp / sh, OH - 1);
        int ox_lo = wp < reach_w ? 0 : (wp - reach_w) / sw + 1;
        int ox_hi = min(wp / sw, OW - 1);
        acc_t<T> sum = 0;
        for (int oy = oy_lo; oy <= oy_hi; ++oy) {
            int di = hp - oy * sh;
            if (di % dh != 0) continue;  // between two dilated taps
            int i = di / dh;
            for (int ox = ox_lo; ox <= ox_hi; ++ox) {
                int dj = wp - ox * sw;
                if (dj % dw != 0) continue;
                int j = dj / dw;
                long long row = ((long long)c * kh + i) * kw + j;
                sum += to_acc(dcols[((row * N + n) * OH + oy) * OW + ox]);
            }
        }
        dx[index] = from_acc<T>(sum);
    }
}

template <typename T>
__global__ void bias_add(T* y, const T* b, long long total, int O, int M) {
    FOR_EACH_INDEX(index, total) {
        int o = index / M;
        y[index] = from_acc<T>(to_acc(y[index]) + to_acc(b[o]));
    }
}
