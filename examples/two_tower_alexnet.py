"""The paper's own two-GPU AlexNet (Krizhevsky et al. 2012, section 3.2 and figure 2) as model
parallelism on two MPI ranks: each rank holds one tower, half the kernels of every layer.

    mpiexec -n 2 python examples/two_tower_alexnet.py        # 3 SGD steps, float64, checked
                                                             # against the one-process AlexNet

"The GPUs communicate only in certain layers": the towers run alone through conv1, conv2, conv4
and conv5 (conv2, conv4 and conv5 are the grouped convolutions of ``AlexNet(groups=2)``, one group
per tower) and exchange their activations where a layer takes input from both: conv3, fc6, fc7
and fc8. An exchange is an all-gather of the towers' channels in rank order; its backward sums
the gradient that both towers' layers send to each half and keeps this rank's half (a
reduce-scatter), because both towers read the whole gathered tensor.

Two places need more than the paper says. LRN: the paper's towers normalize over their own maps
only, but the one-process AlexNet's window of 5 channels crosses the towers' boundary, so each
tower takes two channels beyond its edge from the other (a halo) to match it. The loss: both
ranks compute it from the gathered logits, so the last exchange passes each rank its half of
the gradient as it is (not summed twice). Dropout is off in the check: the ranks would draw
masks for their halves that differ from the single process's masks for the whole layer.

Rank 0 also runs the one-process ``AlexNet(groups=2)`` from the same initial weights and prints
the largest difference between its weights and the towers' after the steps (float64: ~1e-16).
Data parallelism, the other way to use two GPUs, is ``minidl.distributed`` (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, beside this file

import common  # noqa: E402  (it puts the checkout on sys.path too)

import minidl as mdl  # noqa: E402
import minidl.functional as F  # noqa: E402
from minidl import distributed, nn, optim  # noqa: E402
from minidl.autograd import Function  # noqa: E402
from minidl.models.alexnet import AlexNet  # noqa: E402

TOWERS = 2
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


# ---- the exchange --------------------------------------------------------------------------------
class AllGatherChannels(Function):
    """x: (N, C, ...) on each rank -> (N, TOWERS * C, ...), the ranks' channels in rank order."""

    @staticmethod
    def forward(ctx, x, replicated):
        comm = distributed.comm()
        x = np.ascontiguousarray(x)
        parts = np.empty((TOWERS, *x.shape), dtype=x.dtype)
        comm.Allgather(x, parts)
        ctx.save(x.shape[1], replicated)
        return np.concatenate(list(parts), axis=1)

    @staticmethod
    def backward(ctx, dy):
        channels, replicated = ctx.saved
        rank = distributed.rank()
        if not replicated:  # both towers read the whole tensor: sum what they send back
            dy = np.ascontiguousarray(dy).copy()
            distributed.allreduce_(dy)
        return np.ascontiguousarray(dy[:, rank * channels : (rank + 1) * channels])


def gather(x, replicated: bool = False):
    """The towers' activations put together; ``replicated`` when every rank then computes the
    same thing from them (the loss), so the gradient is not summed over the ranks."""
    return AllGatherChannels.apply(x, replicated=replicated)


def local_response_norm_with_halo(x, rank: int, alpha: float):
    """LRN of this tower's channels as the one-process net computes it: with the size // 2
    channels beyond the tower's edge borrowed from the other tower."""
    c, halo = x.shape[1], LRN["size"] // 2
    whole = gather(x)  # (N, TOWERS * C, H, W); only the halo of the other tower is used
    lo, hi = max(rank * c - halo, 0), min((rank + 1) * c + halo, TOWERS * c)
    y = F.local_response_norm(whole[:, lo:hi], **{**LRN, "alpha": alpha})
    return y[:, rank * c - lo : rank * c - lo + c]


# ---- one tower -----------------------------------------------------------------------------------
class Tower(nn.Module):
    """Rank ``rank``'s half of every layer of ``AlexNet(groups=2)``: the rows (output channels or
    neurons) [rank * n/2, (rank + 1) * n/2) of each weight and bias, copied from ``full``."""

    LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

    def __init__(self, full: AlexNet, rank: int):
        super().__init__()
        self.rank, self.alpha = rank, full.features.norm1.alpha
        layers = dict(full.features.named_modules()) | dict(full.classifier.named_modules())
        for name in self.LAYERS:
            for kind in ("weight", "bias"):
                p = getattr(layers[name], kind).numpy()
                half = p.shape[0] // TOWERS
                rows = p[rank * half : (rank + 1) * half].copy()
                setattr(self, f"{name}_{kind}", nn.Parameter(rows))

    def forward(self, x):
        r = self.rank
        # x: (N, 3, 227, 227) -> (N, 48, 55, 55): 48 of conv1's 96 kernels
        x = F.relu(F.conv2d(x, self.conv1_weight, self.conv1_bias, stride=4))
        x = F.max_pool2d(local_response_norm_with_halo(x, r, self.alpha), 3, 2)  # (N, 48, 27, 27)
        # conv2's group r: 128 kernels on this tower's 48 maps only
        x = F.relu(F.conv2d(x, self.conv2_weight, self.conv2_bias, padding=2))
        x = F.max_pool2d(local_response_norm_with_halo(x, r, self.alpha), 3, 2)  # (N, 128, 13, 13)
        # conv3 takes all 256 maps of layer 2: the GPUs talk
        x = F.relu(F.conv2d(gather(x), self.conv3_weight, self.conv3_bias, padding=1))
        x = F.relu(F.conv2d(x, self.conv4_weight, self.conv4_bias, padding=1))  # (N, 192, 13, 13)
        x = F.relu(F.conv2d(x, self.conv5_weight, self.conv5_bias, padding=1))  # (N, 128, 13, 13)
        x = F.max_pool2d(x, 3, 2)  # (N, 128, 6, 6)
        # fc6, fc7 and fc8 take all the previous layer's neurons: the GPUs talk at each
        x = F.relu(F.linear(F.flatten(gather(x)), self.fc6_weight, self.fc6_bias))  # (N, 2048)
        x = F.relu(F.linear(gather(x), self.fc7_weight, self.fc7_bias))  # (N, 2048)
        x = F.linear(gather(x), self.fc8_weight, self.fc8_bias)  # (N, classes / 2)
        return gather(x, replicated=True)  # (N, classes), the same on both ranks


# ---- the check -----------------------------------------------------------------------------------
def sgd_steps(model, params, batches) -> list[float]:
    optimizer = optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(model(mdl.tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=common.integer(1), default=67, help="input side (227: paper)")
    p.add_argument("--batch-size", type=common.integer(1), default=4)
    p.add_argument("--steps", type=common.integer(1), default=3)
    p.add_argument("--classes", type=common.integer(2), default=10)
    p.add_argument("--tolerance", type=common.number(0), default=1e-10)
    p.add_argument(
        "--alpha",
        type=common.number(0),
        default=1e-4,
        help="LRN's alpha (the paper's 1e-4; the test takes 1, where a missing halo channel shows)",
    )
    args = p.parse_args(argv)
    distributed.init()
    if distributed.world_size() != TOWERS:
        raise SystemExit(
            f"two_tower_alexnet: run it on {TOWERS} ranks (mpiexec -n {TOWERS}), "
            f"not {distributed.world_size()}"
        )
    if args.classes % TOWERS:
        raise SystemExit(
            f"two_tower_alexnet: --classes must be even (fc8 is split): {args.classes}"
        )
    rank = distributed.rank()
    mdl.manual_seed(0)  # the same full model on both ranks; each keeps its half
    full = AlexNet(args.classes, groups=2, input_size=args.size, init="caffe", dropout=0.0)
    full.double()
    full.features.norm1.alpha = full.features.norm2.alpha = args.alpha
    rng = np.random.default_rng(1)
    batches = [
        (rng.standard_normal((args.batch_size, 3, args.size, args.size)),
         rng.integers(0, args.classes, args.batch_size))
        for _ in range(args.steps)
    ]  # fmt: skip
    tower = Tower(full, rank)
    tower_losses = sgd_steps(tower, tower.parameters(), batches)
    mine = {name: p.numpy() for name, p in tower.named_parameters()}
    everyone = distributed.comm().gather(mine, root=0)
    if rank != 0:
        return 0.0
    one_losses = sgd_steps(full, full.parameters(), batches)
    layers = dict(full.features.named_modules()) | dict(full.classifier.named_modules())
    worst = 0.0
    for name in Tower.LAYERS:
        for kind in ("weight", "bias"):
            halves = [everyone[r][f"{name}_{kind}"] for r in range(TOWERS)]
            one = getattr(layers[name], kind).numpy()
            worst = max(worst, float(np.abs(np.concatenate(halves) - one).max()))
    print(f"losses, two towers:  {', '.join(f'{v:.12f}' for v in tower_losses)}")
    print(f"losses, one process: {', '.join(f'{v:.12f}' for v in one_losses)}")
    print(
        f"largest |two towers - one process| over the weights after {args.steps} steps: {worst:.3g}"
    )
    if not worst <= args.tolerance:
        raise SystemExit(f"two_tower_alexnet: the towers differ from one process by {worst:.3g}")
    return worst


if __name__ == "__main__":
    main()
