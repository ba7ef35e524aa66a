// pool.cu: 2-D max-pooling (minidl/ops/pool.py; docs/pool.md).
//
//   max_pool2d_forward   x: (N, C, H, W) -> y, argmax: (N, C, OH, OW)
//       y[n, c, oy, ox] = max_{i, j} x[n, c, oy*sh - ph + i*dh, ox*sw - pw + j*dw]
//       one thread per output (n, c, oy, ox) scans its kh x kw window (taps dh, dw apart) in
//       row-major order with a strict '>' (ties go to the first maximum; padding never wins);
//       argmax holds the winner's flat index h * W + w. Matches max_pool2d_forward_numpy.
//   max_pool2d_backward  dy, argmax: (N, C, OH, OW) -> dx: (N, C, H, W)
//       one thread per input pixel (n, c, h, w) GATHERS dy from the windows that contain it and
//       chose it: no atomics, so the result is bit-for-bit reproducible.
//       Matches max_pool2d_backward_numpy.
//
// Launch: any 1-D grid of 1-D blocks (grid-stride loops).
// 16-bit storage: values compare in float (exact, so the same maximum and the same first-max
// tie rule) and y is the chosen value itself; backward sums in float and rounds once.
// minidl-types: float double __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void max_pool2d_forward(const T* x, T* y, int* argmax, long long total, int C, int H,
                                   int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                   int dw, int OH, int OW) {
    FOR_EACH_INDEX(index, total) {
        // index = ((n * C + c) * OH + oy) * OW + ox
        int ox = index % OW;
        int oy = (index / OW) % OH;
        long long nc = index / ((long long)OW * OH);
        const T* plane = x + nc * H * W;
        acc_t<T> best = real_neg_inf(acc_t<T>(0));
        int best_index = -1;
        for (int i = 0; i < kh; ++i) {
            int h = oy * sh - ph + i * dh;
            if (h < 0 || h >= H) continue;
            for (int j = 0; j < kw; ++j) {
                int w = ox * sw - pw + j * dw;
                if (w < 0 || w >= W) continue;
                acc_t<T> v = to_acc(plane[h * W + w]);
                if (v > best) {
                    best = v;
                    best_index = h * W + w;
                }
            }
        }
        y[index] = from_acc<T>(best);  // exact: best is one of the 16-bit inputs (or -inf)
        argmax[index] = best_index;
    }
}

template <typename T>
__global__ void max_pool2d_backward(const T* dy, const int* argmax, T* dx, long long total, int C,
                                    int H, int W, int kh, int kw, int sh, int sw, int ph, int pw,
                                    int dh, int dw, int OH, int OW) {
    FOR_EACH_INDEX(index, total) {
        // index = ((n * C + c) * H + h) * W + w
        int w = index % W;
        int h = (index / W) % H;
        long long nc = index / ((long long)W * H);
        // Windows oy with oy*sh - ph <= h <= oy*sh - ph + reach_h - 1, the reach of the dilated
        // window being dh*(kh - 1) + 1 (same for ox). With dilation a window may span h without
        // a tap on it; such a window never chose h, so the argmax test below skips it.
        int reach_h = dh * (kh - 1) + 1;
        int reach_w = dw * (kw - 1) + 1;
        int oy_begin = (h + ph < reach_h) ? 0 : (h + ph - reach_h) / sh + 1;
        int oy_end = min((h + ph) / sh + 1, OH);
        int ox_begin = (w + pw < reach_w) ? 0 : (w + pw - reach_w) / sw + 1;
        int ox_end = min((w + pw) / sw + 1, OW);
        const T* dy_plane = dy + nc * OH * OW;
        const int* argmax_plane = argmax + nc * OH * OW;
        int me = h * W + w;
        acc_t<T> sum = 0;
        for (int oy = oy_begin; oy < oy_end; ++oy) {
            for (int ox = ox_begin; ox < ox_end; ++ox) {
                if (argmax_plane[oy * OW + ox] == me) sum += to_acc(dy_plane[oy * OW + ox]);
            }
        }
        dx[index] = from_acc<T>(sum);
    }
}
