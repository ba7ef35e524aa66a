"""Where the windows of a 2-D convolution or max-pooling sit: one named geometry for both
(docs/conv.md, docs/pool.md).

A window has kh x kw taps, dh rows and dw columns apart (dilation; 1 is a dense window), and
steps sh rows and sw columns (stride) over the input padded by ph rows on top and pw columns on
the left. Tap (i, j) of the window of output pixel (oy, ox) reads

    xpad[oy*sh + i*dh, ox*sw + j*dw],  the input pixel (oy*sh - ph + i*dh, ox*sw - pw + j*dw)

and OH x OW windows fit (``output_size``). The padding below and to the right is what the last
windows reach (``Window2d.padding_after``).
"""

from __future__ import annotations

from typing import NamedTuple


def output_size(
    size: int, k: int, s: int, d: int, pad_before: int, pad_after: int, ceil_mode: bool = False
) -> int:
    """Windows along one axis: (size + pads - d*(k - 1) - 1) // s + 1, the effective (dilated)
    kernel being d*(k - 1) + 1 taps long. ``ceil_mode`` (max_pool2d) rounds up instead, less a
    last window that would start past the input and its leading padding (PyTorch's rule)."""
    span = size + pad_before + pad_after - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + pad_before:
        out -= 1
    return out


class Window2d(NamedTuple):
    """kernel (kh, kw), stride (sh, sw), top/left padding (ph, pw), dilation (dh, dw) and the
    output size (oh, ow). The fields are in the order ``kernels/conv.cu`` and ``kernels/pool.cu``
    take them after the input's sizes, so ``cuda.i32(c, h, w, *window)`` are a launch's ints."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int

    @classmethod
    def over(cls, h, w, kernel, stride, padding, dilation, ceil_mode=False) -> Window2d:
        """The windows over an h x w input; padding: (top, bottom, left, right)."""
        (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
        top, bottom, left, right = padding
        oh = output_size(h, kh, sh, dh, top, bottom, ceil_mode)
        ow = output_size(w, kw, sw, dw, left, right, ceil_mode)
        return cls(kh, kw, sh, sw, top, left, dh, dw, oh, ow)

    def rows(self, i: int) -> slice:
        """Row i of every window in the padded input: oy*sh + i*dh for oy < OH."""
        top = i * self.dh
        return slice(top, top + self.sh * (self.oh - 1) + 1, self.sh)

    def columns(self, j: int) -> slice:
        """Column j of every window in the padded input: ox*sw + j*dw for ox < OW."""
        left = j * self.dw
        return slice(left, left + self.sw * (self.ow - 1) + 1, self.sw)

    def padding_after(self, h: int, w: int) -> tuple[int, int]:
        """The rows below and columns right of an h x w input that the last windows reach: the
        bottom/right padding, less what no window reads (a stride can skip the last rows), more
        for "same" with an even kernel or a ceil_mode window; 0 when the windows end inside."""
        bottom = (self.oh - 1) * self.sh + self.dh * (self.kh - 1) + 1 - h - self.ph
        right = (self.ow - 1) * self.sw + self.dw * (self.kw - 1) + 1 - w - self.pw
        return max(0, bottom), max(0, right)
