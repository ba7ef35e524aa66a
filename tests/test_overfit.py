"""A small convnet learns a fixed batch by heart: the whole engine working together."""

import numpy as np

import minidl as mdl
import minidl.functional as F
from minidl import nn, optim


def test_small_convnet_overfits_a_fixed_batch():
    mdl.manual_seed(0)
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.standard_normal((32, 3, 12, 12)).astype(np.float32))
    y = rng.integers(0, 10, 32)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4),
        nn.MaxPool2d(3, 2),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 10),
    )
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with mdl.no_grad():
        predictions = net(x).numpy().argmax(axis=1)
    assert loss.item() < first / 10
    assert np.mean(predictions != y) == 0.0  # zero training error
