"""Weight initializers, in place, drawing from the global generator (``minidl.manual_seed``).

- ``normal_(w, 0, 0.01)`` with ``constant_(b, 1)`` is the paper's AlexNet init (section 5).
- ``kaiming_normal_`` (He et al. 2015): std = gain / sqrt(fan_in), gain = sqrt(2) for ReLU.
- ``xavier_uniform_`` (Glorot & Bengio 2010): U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
- ``default_uniform_``: PyTorch's default for Conv2d and Linear, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

fan_in of a conv weight (out, in, kh, kw) is in*kh*kw; of a linear weight (out, in) it is in.
"""

from __future__ import annotations

import math

import numpy as np

from minidl import backend
from minidl.random import generator


def fans(shape) -> tuple[int, int]:
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_in = shape[1] * receptive if len(shape) > 1 else shape[0]
    return fan_in, shape[0] * receptive


def _fill(t, values: np.ndarray):
    t.data = backend.move(values.astype(t.dtype), t.device)
    return t


def normal_(t, mean: float = 0.0, std: float = 1.0):
    return _fill(t, generator().normal(mean, std, size=t.shape))


def uniform_(t, low: float = 0.0, high: float = 1.0):
    return _fill(t, generator().uniform(low, high, size=t.shape))


def constant_(t, value: float):
    return _fill(t, np.full(t.shape, value))


def zeros_(t):
    return constant_(t, 0.0)


def kaiming_normal_(t, gain: float = math.sqrt(2.0)):
    fan_in, _ = fans(t.shape)
    return normal_(t, 0.0, gain / math.sqrt(fan_in))


def kaiming_uniform_(t, gain: float = math.sqrt(2.0)):
    fan_in, _ = fans(t.shape)
    bound = gain * math.sqrt(3.0 / fan_in)
    return uniform_(t, -bound, bound)


def xavier_uniform_(t, gain: float = 1.0):
    fan_in, fan_out = fans(t.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -bound, bound)


def xavier_normal_(t, gain: float = 1.0):
    fan_in, fan_out = fans(t.shape)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def default_uniform_(t, fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return uniform_(t, -bound, bound)
