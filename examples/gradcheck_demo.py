"""Check gradients of your own op with minidl.gradcheck.

    python examples/gradcheck_demo.py

Defines a new op (softplus) as a Function with its forward and backward side by side, checks
it, then shows what a wrong backward looks like, and checks the library's own layers the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minidl as mdl  # noqa: E402
import minidl.functional as F  # noqa: E402
from minidl.autograd import Function  # noqa: E402
from minidl.gradcheck import GradcheckError  # noqa: E402


class Softplus(Function):
    """y = log(1 + e^x); dy/dx = sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return np.logaddexp(0, x)  # stable for large |x|

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy / (1 + np.exp(-x))


class BrokenSoftplus(Softplus):
    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy / (1 + np.exp(x))  # sign error: sigmoid(-x)


def main() -> None:
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.standard_normal((3, 4)), requires_grad=True)  # float64: finite differences
    print("softplus:", mdl.gradcheck(Softplus.apply, [x]))
    try:
        mdl.gradcheck(BrokenSoftplus.apply, [x])
    except GradcheckError as err:
        print("a wrong backward is caught:\n" + str(err))

    image = mdl.tensor(rng.standard_normal((1, 4, 7, 7)), requires_grad=True)
    weight = mdl.tensor(rng.standard_normal((6, 2, 3, 3)), requires_grad=True)
    bias = mdl.tensor(rng.standard_normal(6), requires_grad=True)

    def block(x, w, b):  # conv (2 groups) -> ReLU -> LRN (paper's formula) -> overlapping pool
        y = F.relu(F.conv2d(x, w, b, stride=1, padding=1, groups=2))
        return F.max_pool2d(F.local_response_norm(y, size=5, alpha=1.0), 3, 2)

    print("conv-relu-lrn-pool:", mdl.gradcheck(block, [image, weight, bias]))
    mask = rng.random((2, 10)) > 0.5
    z = mdl.tensor(rng.standard_normal((2, 10)), requires_grad=True)
    print(
        "dropout with an injected mask:", mdl.gradcheck(lambda z: F.dropout(z, 0.5, mask=mask), [z])
    )


if __name__ == "__main__":
    main()
