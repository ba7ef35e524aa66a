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
# # 5. Training a small AlexNet, and looking inside it
#
# The layers of notebooks 2-4 put together: `SmallAlexNet` (`models/alexnet.py`, imported from
# `minidl.models`) keeps AlexNet's layer kinds (conv, ReLU, LRN, overlapping max-pool, grouped
# convolutions, dropout, three fully connected layers) at a size for 28x28 grey images. We train
# it on Fashion-MNIST (Xiao et al. 2017: 70,000 images of clothes in 10 classes), then look
# inside, as the paper's section 6 does:
#
# - the loss and accuracy curves;
# - the first layer's filters (the paper's Figure 3);
# - the activations of one test image as it goes through the layers;
# - **section 6.2**: the last hidden layer's vector as a description of the image. The paper
#   takes the 4096-d output of fc7 and shows, for test images, the training images whose vectors
#   are nearest in Euclidean distance (Figure 4, right).
#
# **Sizes.** This notebook runs in CI on two CPU cores, so it trains on 3,000 images for 2
# epochs: under a minute of CPU time, and about 77% test accuracy. The full run
# (`python examples/train_fashion_mnist.py`: 60,000 images, 3 epochs) reaches about 89%.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minidl as mdl
import minidl.functional as F
from minidl import data, optim
from minidl.data import FASHION_MNIST_CLASSES as CLASSES
from minidl.models.alexnet import SmallAlexNet

TRAIN_IMAGES = 3000  # of 60,000
TEST_IMAGES = 1000  # of 10,000
BATCH = 50
EPOCHS = 2

mdl.manual_seed(0)  # initialization and dropout masks
rng = np.random.default_rng(0)  # the order of the training images

# %% [markdown]
# ## The data
#
# `data.fashion_mnist` reads the four original files from `/usr/share/datasets/fashion-mnist/`
# (Debian's `dataset-fashion-mnist`), `$MINIDL_DATA` or a user cache, and scales pixels to
# [0, 1]. We keep the first images of each split.

# %%
train_set = data.fashion_mnist("train")
test_set = data.fashion_mnist("test")
x_train, y_train = train_set.batch(np.arange(TRAIN_IMAGES))  # (N, 1, 28, 28) float32, (N,)
x_test, y_test = test_set.batch(np.arange(TEST_IMAGES))
print("train", x_train.shape, "test", x_test.shape, "pixels in", x_train.min(), x_train.max())
print("images per class in our training subset:", np.bincount(y_train, minlength=10))

fig, axes = plt.subplots(2, 10, figsize=(12, 2.8))
for c in range(10):
    for row in range(2):
        ax = axes[row, c]
        ax.imshow(x_train[np.flatnonzero(y_train == c)[row], 0], cmap="gray_r")
        ax.axis("off")
    axes[0, c].set_title(CLASSES[c], fontsize=8)
plt.show()

# %% [markdown]
# ## The model
#
# `summary` runs a zero image through the model and prints each layer's output. Note the
# classifier: fc6 and fc7 are **512-d** here (AlexNet's are 4096-d), and fc7's output after its
# ReLU is the vector we use for section 6.2 below.

# %%
model = SmallAlexNet(num_classes=10, in_channels=1, dropout=0.3)
model.summary((1, 28, 28))
optimizer = optim.Adam(model.parameters(), lr=2e-3)


# %% [markdown]
# ## Training
#
# One step: forward, the cross-entropy of the logits (computed with log-sum-exp), backward,
# and Adam's update. `model.train()` turns dropout on; `model.eval()` turns it off for testing.


# %%
def accuracy(images, labels, batch=500):
    model.eval()
    correct = 0
    with mdl.no_grad():
        for i in range(0, len(images), batch):
            logits = model(mdl.tensor(images[i : i + batch]))
            correct += int((logits.numpy().argmax(axis=1) == labels[i : i + batch]).sum())
    model.train()
    return correct / len(images)


losses, test_points = [], [(0, accuracy(x_test, y_test))]
start = time.perf_counter()
step = 0
for epoch in range(EPOCHS):
    order = rng.permutation(TRAIN_IMAGES)
    for first in range(0, TRAIN_IMAGES, BATCH):
        batch = order[first : first + BATCH]
        loss = F.cross_entropy(model(mdl.tensor(x_train[batch])), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 40 == 0:
            test_points.append((step, accuracy(x_test, y_test)))
    print(
        f"epoch {epoch + 1}: last loss {losses[-1]:.3f}, test accuracy {test_points[-1][1]:.3f} "
        f"(at step {test_points[-1][0]}), {time.perf_counter() - start:.0f} s"
    )
if test_points[-1][0] != step:
    test_points.append((step, accuracy(x_test, y_test)))
final_accuracy = test_points[-1][1]
print(f"test accuracy after {EPOCHS} epochs on {TRAIN_IMAGES} images: {final_accuracy:.3f}")
assert final_accuracy > 0.6, "chance is 0.1; a working engine reaches about 0.77 here"

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
left.plot(losses, alpha=0.3, label="per batch")
left.plot(np.arange(9, len(losses)), smooth, label="mean of 10")
left.set_xlabel("step")
left.set_ylabel("cross-entropy")
left.legend()
right.plot(*zip(*test_points), "o-")
right.axhline(0.1, color="gray", linestyle=":", label="chance")
right.set_xlabel("step")
right.set_ylabel(f"test accuracy ({TEST_IMAGES} images)")
right.legend()
plt.show()

# %% [markdown]
# ## conv1's filters
#
# The paper's Figure 3 shows conv1's 96 filters: oriented edges, frequencies and colour blobs.
# Ours are 32 filters of 5x5 over one grey channel, after only 120 steps, so expect rougher
# edge and blob detectors. Each filter is stretched to its own black-to-white range.

# %%
filters = model.features.conv1.weight.numpy()[:, 0]  # (32, 5, 5)
fig, axes = plt.subplots(4, 8, figsize=(8, 4))
for f, ax in zip(filters, axes.ravel()):
    ax.imshow(f, cmap="gray")
    ax.axis("off")
fig.suptitle("conv1: 32 filters, 5x5")
plt.show()

# %% [markdown]
# ## Activations of one test image
#
# `model.features` is a `Sequential`; calling its layers one by one gives every intermediate
# map. Below: the image, the first 8 maps after conv1 + ReLU (28x28), after the first LRN and
# pooling (13x13) and after conv5 + ReLU (6x6). Deeper maps are coarser and more specific.

# %%
image = x_test[:1]
maps = {}
h = mdl.tensor(image)
model.eval()
with mdl.no_grad():
    for name, layer in model.features._modules.items():
        h = layer(h)
        maps[name] = h.numpy()[0]
shown = ["relu1", "pool1", "relu5"]
fig, axes = plt.subplots(len(shown), 9, figsize=(12, 4.5))
for row, name in enumerate(shown):
    axes[row, 0].imshow(image[0, 0], cmap="gray_r")
    axes[row, 0].set_title(CLASSES[y_test[0]] if row == 0 else "", fontsize=8)
    for k in range(8):
        axes[row, k + 1].imshow(maps[name][k], cmap="viridis")
    axes[row, 1].set_title(f"{name} {maps[name].shape}", fontsize=8, loc="left")
for ax in axes.ravel():
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Section 6.2: nearest neighbours by the FC7 vector
#
# The paper: *"If two images produce feature activation vectors with a small Euclidean
# separation, we can say that the higher levels of the neural network consider them to be
# similar."* Its Figure 4 shows, for five test images, the six training images whose 4096-d
# fc7 vectors are nearest.
#
# **What we use.** SmallAlexNet's fc7 is 512-d, not 4096-d: we take its **penultimate fully
# connected vector** (fc7's output after ReLU, dropout off), the same layer in the same place.
# AlexNet itself with a 4096-d fc7 needs 224x224 inputs, about 20 times the computation of this
# whole notebook on a CPU, which is why we do not use it here.
#
# Distances: ‖q − t‖² = ‖q‖² + ‖t‖² − 2 q·t for every query q and training vector t, one matrix
# product for all pairs.


# %%
def fc7_vectors(images, batch=500):
    """images: (N, 1, 28, 28) -> the penultimate FC vectors (N, 512): relu7's output."""
    model.eval()
    out = []
    with mdl.no_grad():
        for i in range(0, len(images), batch):
            h = model.features(mdl.tensor(images[i : i + batch]))
            for name, layer in model.classifier._modules.items():
                h = layer(h)
                if name == "relu7":
                    break
            out.append(h.numpy())
    return np.concatenate(out)


def nearest(queries, base, k):
    """Indices (len(queries), k) of the k nearest rows of base by Euclidean distance."""
    d2 = (queries**2).sum(1)[:, None] + (base**2).sum(1)[None, :] - 2 * queries @ base.T
    return np.argsort(d2, axis=1)[:, :k]


train_vectors = fc7_vectors(x_train)
test_vectors = fc7_vectors(x_test)
print(
    "FC7 vectors:",
    train_vectors.shape,
    "; fraction of zeros (ReLU):",
    f"{(train_vectors == 0).mean():.2f}",
)
assert train_vectors.shape == (TRAIN_IMAGES, 512)

# %% tags=["fc7-retrieval"]
K = 6
queries = [int(np.flatnonzero(y_test == c)[0]) for c in (0, 1, 3, 5, 7, 8, 9)]
neighbours = nearest(test_vectors[queries], train_vectors, K)
fig, axes = plt.subplots(len(queries), K + 1, figsize=(1.4 * (K + 1), 1.55 * len(queries)))
for row, (q, found) in enumerate(zip(queries, neighbours)):
    axes[row, 0].imshow(x_test[q, 0], cmap="gray_r")
    axes[row, 0].set_title(f"query: {CLASSES[y_test[q]]}", fontsize=8, color="blue")
    for col, t in enumerate(found, start=1):
        same = y_train[t] == y_test[q]
        axes[row, col].imshow(x_train[t, 0], cmap="gray_r")
        axes[row, col].set_title(CLASSES[y_train[t]], fontsize=7, color="green" if same else "red")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("test images (first column) and their nearest training images by the FC7 vector")
fig.tight_layout()
plt.show()

# %% [markdown]
# How often does a neighbour share the query's class, over all 1,000 test images? And in pixel
# space? The paper's point is that fc7 neighbours can be far apart in pixels (a dog facing left
# or right); on Fashion-MNIST, small centred grey images, the pixel distance is already a strong
# baseline, so compare the two rates rather than expect the network to win everywhere.

# %%
fc7_match = (y_train[nearest(test_vectors, train_vectors, 5)] == y_test[:, None]).mean()
pixels_train = x_train.reshape(TRAIN_IMAGES, -1)
pixels_test = x_test.reshape(TEST_IMAGES, -1)
pixel_match = (y_train[nearest(pixels_test, pixels_train, 5)] == y_test[:, None]).mean()
print(f"5 nearest by FC7 vector: {fc7_match:.3f} share the query's class")
print(f"5 nearest by pixels    : {pixel_match:.3f} share the query's class (chance: 0.1)")
assert fc7_match > 0.5

# %% [markdown]
# **Read next:** `examples/train_fashion_mnist.py` (the full run: checkpoints, the CSV log, curves)
# and `minidl/train.py`.
#
# ## Exercises
#
# 1. Train on 12,000 images instead of 3,000 (four times as long). How do the filters and the
#    FC7 neighbours change? Does the FC7 rate overtake the pixel rate?
# 2. Take fc6's output instead of fc7's, and then the flattened pool5 output (256-d). Which layer
#    gives neighbours that share the query's class most often?
# 3. Find a query whose nearest FC7 neighbour has another class, and look at both images and
#    at the model's predicted probabilities (`F.softmax`) for the query. Is the mistake one a
#    person could make?
