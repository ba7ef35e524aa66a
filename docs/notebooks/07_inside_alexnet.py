# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Inside a trained AlexNet
#
# Notebook 5 trained a small AlexNet and looked inside it. Here we open **the** AlexNet: the
# network of the paper, trained on ImageNet, as BVLC's Caffe reference model, published by the
# ONNX model zoo as `bvlcalexnet-12.onnx` (github.com/onnx/models, folder
# `validated/vision/classification/alexnet/model/`, 233 MB; 54.80% top-1 on ImageNet). minidl
# imports it (`minidl.onnx.importer.load`) as a Module whose layers run on minidl's own ops, and
# we repeat the paper's section 6:
#
# - conv1's 96 filters, drawn by tower (48 + 48) as in the paper's **Figure 3**. The paper saw
#   the two GPUs specialize: *"the kernels on GPU 1 are largely color-agnostic, while the kernels
#   on GPU 2 are largely color-specific."* We measure it, tower by tower, for this file;
# - the activations of one image, layer by layer;
# - **section 6.2**: the 4096-d fc7 vector as a description of an image, and each image's
#   nearest neighbours by that vector over a folder of images.
#
# **Which file.** Set `MINIDL_ALEXNET_ONNX` to the path of the real file (and, if you like,
# `MINIDL_IMAGES` to a folder of your JPEG/PNG images). Without it, the notebook writes an
# AlexNet-shaped file with **random weights** in the zoo's layout (`minidl/onnx/zoo.py`) and
# makes its own pictures: every step runs, but the filters are noise and the neighbours
# meaningless. That is how CI runs it.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw

import minidl as mdl
from minidl.onnx.importer import load
from minidl.onnx.zoo import BGR_MEAN, bvlc_preprocess, imagenet_classes, synthetic_bvlc_alexnet

path = os.environ.get("MINIDL_ALEXNET_ONNX", "")
synthetic = not Path(path).is_file()
if synthetic:  # the zoo's layout with random weights, in a temporary folder (not the repository)
    path = synthetic_bvlc_alexnet(Path(tempfile.mkdtemp()) / "bvlcalexnet-synthetic.onnx", 12)
model = load(path)
print("file:", path, "(random weights)" if synthetic else "")
print(f"{model.num_parameters():,} parameters; input {model.input_shapes}")

# %% [markdown]
# ## The graph
#
# `model.steps` lists the file's nodes in order, each run by a minidl op. This is the paper's
# network as Caffe had it: conv1 is *not* split (one GPU saw all 96 filters' inputs), conv2,
# conv4 and conv5 have `group=2` (each tower sees only its own 48 or 128 or 192 channels), LRN
# after the first two ReLUs (ONNX's alpha 1e-4 with bias 1, which is the paper's alpha 2e-5
# with k = 1: Caffe's values, not the paper's k = 2), overlapping 3x3 max-pooling with stride 2.

# %%
ATTRIBUTES = ("group", "kernel_shape", "strides", "pads", "size", "alpha", "bias")
for node, _ in model.steps:
    shown = {k: v for k, v in node.attrs.items() if k in ATTRIBUTES}
    print(f"{node.name:4} {node.op_type:10} {node.inputs[0]:8} -> {node.outputs[0]:8} {shown}")

# %% [markdown]
# ## conv1's filters, tower by tower (Figure 3)
#
# conv1's weight is (96, 3, 11, 11). Channels 0-47 of its output feed conv2's first group, 48-95
# its second: those are the two towers. The file takes BGR images, so we reverse the channel
# axis to draw the filters in RGB, each stretched to its own range.
#
# **A measure of colour.** Split a filter `w` (3, 11, 11) into its grey part (the mean over the
# three channels, the same pattern in each) and the rest: `colour(w) = |w - mean_c w|^2 / |w|^2`.
# 0 means the filter responds to brightness only (colour-agnostic); 2/3 means a pure colour
# contrast with no brightness pattern at all (e.g. red against green). Random weights land near
# 2/3 too: three independent channels share little of a grey pattern.

# %%
w = model.conv1_w_0.numpy()[:, ::-1]  # (96, 3, 11, 11), RGB
assert w.shape == (96, 3, 11, 11)


def colour(filters):
    """|w - grey(w)|^2 / |w|^2 per filter: 0 = colour-agnostic, 2/3 = pure colour contrast."""
    grey = filters.mean(axis=1, keepdims=True)
    return ((filters - grey) ** 2).sum(axis=(1, 2, 3)) / (filters**2).sum(axis=(1, 2, 3))


def draw(filters):
    """(3, k, k) -> an RGB image in [0, 1], stretched to the filter's own range."""
    f = filters.transpose(1, 2, 0)
    return (f - f.min()) / (f.max() - f.min() + 1e-12)


towers = {"tower 1 (filters 0-47)": w[:48], "tower 2 (filters 48-95)": w[48:]}
fig, axes = plt.subplots(2, 1, figsize=(12, 5.2))
for ax, (name, filters) in zip(axes, towers.items()):
    grid = np.ones((3 * 12, 16 * 12, 3))  # 3 rows of 16 filters, a 1-pixel white gap
    for i, f in enumerate(filters):
        row, col = divmod(i, 16)
        grid[row * 12 : row * 12 + 11, col * 12 : col * 12 + 11] = draw(f)
    ax.imshow(grid)
    ax.set_title(f"{name}: median colour {np.median(colour(filters)):.2f}", fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# What the numbers say, for this file (computed, not assumed): the median colour of each tower,
# and how many of its filters are colour-agnostic (colour below 0.1).

# %%
median = {name: float(np.median(colour(f))) for name, f in towers.items()}
agnostic = {name: int((colour(f) < 0.1).sum()) for name, f in towers.items()}
for name in towers:
    print(f"{name}: median colour {median[name]:.3f}, colour-agnostic filters {agnostic[name]}/48")
(low, low_value), (high, high_value) = sorted(median.items(), key=lambda item: item[1])
if high_value > 2 * low_value and agnostic[low] > 2 * agnostic[high]:
    verdict = f"as in the paper: {low} is the colour-agnostic one, {high} the colour-specific one"
else:
    verdict = "no split: the two towers are about as colourful as each other"
print("conclusion:", verdict)

# %% [markdown]
# ## One image, layer by layer
#
# `model.values(x)` runs the graph and returns every named value, so each layer's output can be
# drawn. The input is the file's own preprocessing (`bvlc_preprocess`: resize to 256, centre crop
# 224, RGB -> BGR, subtract the mean pixel B, G, R = 104, 117, 123, no scaling by 255).


# %%
def pictures(count=9, size=256, seed=0):
    """Stand-in photos when there is no image folder: discs, bars and rings of a few colours on
    noisy backgrounds, so images of one kind look alike."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40)]
    made = []
    for i in range(count):
        kind, colour_ = i % 3, colours[(i // 3) % 4]
        background = rng.integers(60, 140, (size, size, 3)).astype(np.uint8)
        picture = Image.fromarray(background)
        pen = ImageDraw.Draw(picture)
        c, r = size // 2 + rng.integers(-30, 30), rng.integers(50, 90)
        box = (c - r, c - r, c + r, c + r)
        if kind == 0:
            pen.ellipse(box, fill=colour_)
        elif kind == 1:
            for k in range(5):
                pen.rectangle((k * size // 5, 0, k * size // 5 + 20, size), fill=colour_)
        else:
            pen.ellipse(box, outline=colour_, width=18)
        made.append((f"{['disc', 'bars', 'ring'][kind]} {i}", picture))
    return made


folder = Path(os.environ.get("MINIDL_IMAGES", "/nonexistent"))
files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
images = [(p.name, Image.open(p)) for p in files] or pictures()
print(len(images), "images", "from " + str(folder) if files else "(generated)")

name, picture = images[0]
x = bvlc_preprocess(picture)
with mdl.no_grad():
    values = model.values(x)
layers = [(n.outputs[0], n.op_type) for n, _ in model.steps if n.op_type in ("Relu", "MaxPool")]
fig, axes = plt.subplots(len(layers[:8]), 9, figsize=(12, 1.45 * len(layers[:8])))
shown_input = (x[0].transpose(1, 2, 0) + BGR_MEAN)[:, :, ::-1] / 255  # back to RGB in [0, 1]
for row, (value, op) in enumerate(layers[:8]):
    maps = values[value].numpy()[0]
    axes[row, 0].imshow(np.clip(shown_input, 0, 1))
    for k in range(8):
        axes[row, k + 1].imshow(maps[k], cmap="viridis")
    axes[row, 1].set_title(f"{op} {value}: {maps.shape}", fontsize=8, loc="left")
for ax in axes.ravel():
    ax.axis("off")
plt.show()

# %% [markdown]
# The file's last layers are fc8's logits and a softmax. A check that the graph is what we think:
# fc8 recomputed from the fc7 vector with NumPy, then its softmax, against the file's output.

# %%
fc7_value = next(n.outputs[0] for n, _ in model.steps if n.inputs[1:2] == ["fc7_w_0"])
fc7_relu = next(n.outputs[0] for n, _ in model.steps if n.inputs == [fc7_value])
fc7 = values[fc7_relu].numpy()  # (1, 4096) after ReLU: the paper's section 6.2 vector
logits = fc7 @ model.fc8_w_0.numpy().T + model.fc8_b_0.numpy()
p = np.exp(logits - logits.max())
p /= p.sum()
print(
    "max error of softmax(fc8(fc7)) against the model's output:",
    np.abs(p - values["prob_1"].numpy()).max(),
)
assert np.allclose(p, values["prob_1"].numpy(), atol=1e-6)
names = imagenet_classes()
print("top 5:", [(names[i], f"{p[0, i]:.3f}") for i in np.argsort(-p[0])[:5]])

# %% [markdown]
# ## Section 6.2: nearest neighbours by the fc7 vector
#
# *"If two images produce feature activation vectors with a small Euclidean separation, we can
# say that the higher levels of the neural network consider them to be similar."* For each image
# of the folder, the 4 others whose 4096-d fc7 vectors (after ReLU) are nearest.

# %%
vectors = []
with mdl.no_grad():
    for _, picture in images:
        vectors.append(model.values(bvlc_preprocess(picture))[fc7_relu].numpy()[0])
vectors = np.stack(vectors)  # (number of images, 4096)
d2 = (vectors**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :] - 2 * vectors @ vectors.T
np.fill_diagonal(d2, np.inf)  # an image is not its own neighbour
K = min(4, len(images) - 1)
neighbours = np.argsort(d2, axis=1)[:, :K]
shown_rows = min(len(images), 6)
fig, axes = plt.subplots(shown_rows, K + 1, figsize=(1.8 * (K + 1), 1.9 * shown_rows))
axes = np.atleast_2d(axes)
for row in range(shown_rows):
    for col, i in enumerate([row, *neighbours[row]]):
        axes[row, col].imshow(images[i][1].convert("RGB").resize((128, 128)))
        axes[row, col].set_title(images[i][0], fontsize=7, color="blue" if col == 0 else "black")
        axes[row, col].axis("off")
fig.suptitle("each row: an image, then its nearest neighbours by the fc7 vector")
fig.tight_layout()
plt.show()
kind = [image_name.split()[0] for image_name, _ in images]  # "disc", "bars", ... or a file name
same_kind = np.mean([kind[i] == kind[r] for r in range(len(images)) for i in neighbours[r]])
print(f"neighbours whose name starts like the query's: {same_kind:.0%}")

# %% [markdown]
# ## Exercises
#
# 1. Run this notebook on the real file (`MINIDL_ALEXNET_ONNX=bvlcalexnet-12.onnx`). Does the
#    conclusion about the towers hold for BVLC's model? (Caffe trained it on one GPU with the
#    groups kept, so the towers were still unable to see each other's channels in conv2.)
# 2. The colour measure uses the plain mean of B, G and R as "grey". Use the luminance weights
#    (0.114, 0.587, 0.299 for B, G, R) instead: does the conclusion change?
# 3. Point `MINIDL_IMAGES` at a folder of your photos, a few of each kind. How often is the
#    nearest neighbour of the same kind? Compare with the neighbours by raw pixels (the
#    distance between the preprocessed images): the paper's point is that fc7 finds similar
#    images whose pixels are far apart.
# 4. `model.train()` turns Dropout on. Run one image twice in train mode and compare the two fc7
#    vectors: how far apart are they, against the distance to the nearest other image?
