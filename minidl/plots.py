"""Pictures of a training run: loss and accuracy curves (matplotlib), and a grid of the first
convolution's filters (Pillow), as the paper's Figure 3 shows conv1's."""

from __future__ import annotations

import math

import numpy as np


def plot_curves(history: list[dict], path) -> bool:
    """Loss and accuracy per epoch as a PNG (needs matplotlib); False when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    left.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    right.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    right.plot(epochs, [h["test_top1"] for h in history], "o-", label="test top-1")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend()
    for axis in (left, right):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def save_filter_grid(weight: np.ndarray, path, scale: int = 4, columns: int | None = None) -> None:
    """conv1's filters as one image grid (the paper's Figure 3): each (C, kh, kw) filter is
    stretched to [0, 255] on its own; 3 channels are shown as RGB, others as grey."""
    from PIL import Image

    w = np.asarray(weight, dtype=np.float64)
    o, c, kh, kw = w.shape
    columns = columns or int(math.ceil(math.sqrt(o)))
    rows = int(math.ceil(o / columns))
    pad = 1
    channels = 3 if c == 3 else 1
    grid = np.full((rows * (kh + pad) + pad, columns * (kw + pad) + pad, channels), 255, np.uint8)
    for index in range(o):
        f = w[index] if c == 3 else w[index, :1]
        low, high = f.min(), f.max()
        f = (f - low) / (high - low) if high > low else np.zeros_like(f)
        tile = (f.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        r, col = divmod(index, columns)
        top, left = pad + r * (kh + pad), pad + col * (kw + pad)
        grid[top : top + kh, left : left + kw] = tile
    image = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
