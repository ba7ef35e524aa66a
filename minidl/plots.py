"""What a training run writes beside its checkpoint: log.csv, the loss and accuracy curves
(matplotlib), and a grid of the first convolution's filters (Pillow), as the paper's Figure 3
shows conv1's. They only show what checkpoint.npz holds (its history), so a failure to write
one (a full disk, a read-only file) is said and the run goes on; a checkpoint that cannot be
written ends it (minidl/checkpoint.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def write_csv(path, history: list[dict]) -> None:
    """One row per epoch; the columns are every key seen, in order (a history resumed from an
    older checkpoint may lack the newer ones: those cells stay empty)."""
    if not history:
        return
    fields = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(history)


NO_CURVES = "curves.png not written: matplotlib is missing (pip install 'minidl[plot]')"


def write_beside(path: Path, write) -> str | None:
    """``write(path)``; a failure (OSError) becomes the line to say, None when written."""
    try:
        write(path)
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        return f"{path} not written: {reason} (the run goes on; checkpoint.npz holds its history)"
    return None


def write_run_files(out: Path, history: list[dict]) -> list[str]:
    """log.csv and curves.png for ``history``; returns the lines to say (NO_CURVES without
    matplotlib, one per file that could not be written)."""
    notes = [write_beside(out / "log.csv", lambda path: write_csv(path, history))]
    drawn = []
    notes.append(write_beside(out / "curves.png", lambda p: drawn.append(plot_curves(history, p))))
    if drawn == [False]:
        notes.append(NO_CURVES)
    return [note for note in notes if note]


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
