"""AlexNet in PyTorch, layer for layer the same as models/alexnet.py: the benchmark's opponent and
the test oracle (tests/test_alexnet.py). PyTorch divides LRN's alpha by size, so the paper's
alpha=1e-4 is torch's 5e-4."""

from __future__ import annotations


def torch_alexnet(
    torch, num_classes: int = 1000, groups: int = 2, in_channels: int = 3, feature_side: int = 6
):
    nn = torch.nn

    def lrn():
        return nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)

    return nn.Sequential(
        nn.Conv2d(in_channels, 96, 11, stride=4),
        nn.ReLU(),
        lrn(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=groups),
        nn.ReLU(),
        lrn(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=groups),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=groups),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * feature_side**2, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


def copy_weights(torch, twin, model) -> None:
    """Our parameters into the twin; both list them in the same order (weight, then bias)."""
    with torch.no_grad():
        for p, q in zip(twin.parameters(), model.parameters()):
            p.copy_(torch.tensor(q.numpy()))
