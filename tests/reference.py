"""Naive-loop references: the definitions, written as plainly as possible, with no vectorization.

They are slow on purpose; tests run them on small shapes. Each one is the formula in the op's
docstring, loop for loop.
"""

import math

import numpy as np


def conv2d(x, w, b, stride, padding, groups, dilation=(1, 1)):
    """padding: (h, w), or (top, bottom, left, right) for PyTorch's padding="same"."""
    (sh, sw), (dh, dw) = stride, dilation
    ph, pb, pw, pr = padding if len(padding) == 4 else (padding[0], padding[0], *padding[1:] * 2)
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = w.shape
    og = o_ // groups
    oh = (h_ + ph + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w_ + pw + pr - dw * (kw - 1) - 1) // sw + 1
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
                                h = oy * sh - ph + i * dh
                                ww = ox * sw - pw + j * dw
                                if 0 <= h < h_ and 0 <= ww < w_:
                                    total += w[o, ci, i, j] * x[n, c, h, ww]
                    y[n, o, oy, ox] = total
    return y


def max_pool2d(x, kernel, stride, padding, ceil_mode, dilation=(1, 1)):
    """Returns y (x's dtype) and the argmax (flat h * W + w), first maximum on ties; only real
    cells are candidates, so padding never wins whatever the dtype."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n_, c_, h_, w_ = x.shape

    def out_size(size, k, s, p, d):
        span = size + 2 * p - d * (k - 1) - 1
        if ceil_mode:
            o = math.ceil(span / s) + 1
            if (o - 1) * s >= size + p:
                o -= 1
            return o
        return span // s + 1

    oh, ow = out_size(h_, kh, sh, ph, dh), out_size(w_, kw, sw, pw, dw)
    y = np.zeros((n_, c_, oh, ow), dtype=x.dtype)
    arg = np.zeros((n_, c_, oh, ow), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for oy in range(oh):
                for ox in range(ow):
                    best, where = None, -1
                    for i in range(kh):
                        for j in range(kw):
                            h, ww = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                            inside = 0 <= h < h_ and 0 <= ww < w_
                            if inside and (best is None or x[n, c, h, ww] > best):
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


def cross_entropy_options(z, t, weight, ignore_index, reduction, label_smoothing):
    """PyTorch's cross_entropy with every option, one element at a time. z: (N, K, d...) or
    (K,); t: class indices (N, d...) or (), or probabilities of z's shape."""
    z = np.asarray(z, dtype=float)
    soft = np.asarray(t).dtype.kind == "f"
    if z.ndim == 1:  # unbatched: a batch of one element
        batch = np.asarray(t)[None]
        result = cross_entropy_options(
            z[None], batch, weight, ignore_index, reduction, label_smoothing
        )
        return result[0] if reduction == "none" else result
    k = z.shape[1]
    w = np.ones(k) if weight is None else weight
    eps = label_smoothing
    losses = np.zeros(z.shape[:1] + z.shape[2:])
    total_weight = 0.0
    for index in np.ndindex(*losses.shape):
        n, rest = index[0], index[1:]
        logits = [z[(n, c) + rest] for c in range(k)]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        log_p = [v - lse for v in logits]
        if soft:
            q = [w[c] * ((1 - eps) * t[(n, c) + rest] + eps / k) for c in range(k)]
            total_weight += 1
        elif t[index] == ignore_index:
            q = [0.0] * k
        else:
            q = [w[c] * ((1 - eps) * (c == t[index]) + eps / k) for c in range(k)]
            total_weight += w[t[index]]
        losses[index] = -sum(q[c] * log_p[c] for c in range(k))
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / total_weight if total_weight else math.nan


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
