"""Naive-loop references: the definitions, written as plainly as possible, with no vectorization.

They are slow on purpose; tests run them on small shapes. Each one is the formula in the op's
docstring, loop for loop.
"""

import math

import numpy as np


def conv2d(x, w, b, stride, padding, groups):
    (sh, sw), (ph, pw) = stride, padding
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = w.shape
    og = o_ // groups
    oh = (h_ + 2 * ph - kh) // sh + 1
    ow = (w_ + 2 * pw - kw) // sw + 1
    y = np.zeros((n_, o_, oh, ow))
    for n in range(n_):
        for o in range(o_):
            g = o // og
            for oy in range(oh):
                for ox in range(ow):
                    total = 0.0 if b is None else b[o]
                    for ci in range(cg):
                        c = g * cg + ci
                        for i in range(kh):
                            for j in range(kw):
                                h = oy * sh - ph + i
                                ww = ox * sw - pw + j
                                if 0 <= h < h_ and 0 <= ww < w_:
                                    total += w[o, ci, i, j] * x[n, c, h, ww]
                    y[n, o, oy, ox] = total
    return y


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    """Returns y and the argmax (flat h * W + w), first maximum on ties."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n_, c_, h_, w_ = x.shape

    def out_size(size, k, s, p):
        if ceil_mode:
            o = math.ceil((size + 2 * p - k) / s) + 1
            if (o - 1) * s >= size + p:
                o -= 1
            return o
        return (size + 2 * p - k) // s + 1

    oh, ow = out_size(h_, kh, sh, ph), out_size(w_, kw, sw, pw)
    y = np.zeros((n_, c_, oh, ow))
    arg = np.zeros((n_, c_, oh, ow), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for oy in range(oh):
                for ox in range(ow):
                    best, where = -math.inf, -1
                    for i in range(kh):
                        for j in range(kw):
                            h, ww = oy * sh - ph + i, ox * sw - pw + j
                            if 0 <= h < h_ and 0 <= ww < w_ and x[n, c, h, ww] > best:
                                best, where = x[n, c, h, ww], h * w_ + ww
                    y[n, c, oy, ox], arg[n, c, oy, ox] = best, where
    return y, arg


def local_response_norm(a, size, alpha, beta, k):
    n_, c_ = a.shape[:2]
    b = np.zeros(a.shape)
    for n in range(n_):
        for c in range(c_):
            total = np.zeros(a.shape[2:])
            for j in range(max(0, c - size // 2), min(c_ - 1, c + size // 2) + 1):
                total = total + a[n, j] ** 2
            b[n, c] = a[n, c] / (k + alpha * total) ** beta
    return b


def cross_entropy(z, t):
    total = 0.0
    for n in range(z.shape[0]):
        m = max(z[n])
        lse = m + math.log(sum(math.exp(v - m) for v in z[n]))
        total += lse - z[n, t[n]]
    return total / z.shape[0]


def linear(x, w, b):
    y = np.zeros((x.shape[0], w.shape[0]))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            y[n, o] = sum(x[n, i] * w[o, i] for i in range(x.shape[1])) + (0 if b is None else b[o])
    return y


def relu(x):
    y = np.zeros(x.shape)
    for i in np.ndindex(*x.shape):
        y[i] = x[i] if x[i] > 0 else 0.0
    return y


def bias_relu(x, b):
    """x: (N, C, ...), b: (C,): relu(x[n, c, ...] + b[c])."""
    y = np.zeros(x.shape)
    for i in np.ndindex(*x.shape):
        v = x[i] + b[i[1]]
        y[i] = v if v > 0 else 0.0
    return y


def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """x: (N, C, ...) -> y, and the running statistics after this call (new arrays)."""
    n_, c_ = x.shape[:2]
    x3 = x.reshape(n_, c_, -1)
    p_ = x3.shape[2]
    m = n_ * p_
    y = np.zeros(x3.shape)
    running_mean, running_var = np.array(running_mean, float), np.array(running_var, float)
    for c in range(c_):
        if training:
            total = 0.0
            for n in range(n_):
                for p in range(p_):
                    total += x3[n, c, p]
            mean = total / m
            squares = 0.0
            for n in range(n_):
                for p in range(p_):
                    squares += (x3[n, c, p] - mean) ** 2
            var = squares / m  # biased: normalizes the batch
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
            running_var[c] = (1 - momentum) * running_var[c] + momentum * squares / (m - 1)
        else:
            mean, var = running_mean[c], running_var[c]
        for n in range(n_):
            for p in range(p_):
                xhat = (x3[n, c, p] - mean) / math.sqrt(var + eps)
                y[n, c, p] = xhat * weight[c] + bias[c]
    return y.reshape(x.shape), running_mean, running_var
