"""Train the Keras "AlexNet with BatchNorm" on Oxford Flowers-17, with the write-up's recipe.

    python examples/train_flowers17.py --data path/to/17flowers.tgz        # or its jpg/ folder
    python examples/train_flowers17.py --download --device cuda            # fetch (SHA-256 checked)
    python examples/train_flowers17.py --fashion-mnist 2000 --epochs 3     # the same network on
                                      # Fashion-MNIST resized to 224 (the flowers are not here)

The write-up (Keras): x, y = oxflower17.load_data(one_hot=True) -> 224x224x3 images in [0, 1],
shuffled once; model.compile(loss="categorical_crossentropy", optimizer="adam",
metrics=["accuracy"]); model.fit(x, y, batch_size=64, validation_split=0.2, shuffle=True).
Every default below is that recipe; the help of each option says where it comes from. The
validation part is evaluated after each epoch (the "test" columns of log.csv and the printout).

Writes <out>/{checkpoint.npz, log.csv, curves.png, conv1_filters.png}; --resume continues from a
checkpoint. --device, --precision, --nonfinite and the other "running" flags are those of every
example (examples/common.py): a NaN or inf loss stops the run with exit status 1. The last line
printed is "validation accuracy: 0.xxxx".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, beside this file

import common  # noqa: E402  (it puts the checkout on sys.path too)
import numpy as np  # noqa: E402

import minidl as mdl  # noqa: E402
from minidl import data, optim  # noqa: E402
from minidl.data import flowers  # noqa: E402
from minidl.models.keras_alexnet import KerasAlexNet  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = p.add_argument_group("data")
    source.add_argument(
        "--data",
        default=None,
        help="17flowers.tgz, its extracted jpg/ folder, or a folder holding either (default: "
        "$MINIDL_DATA, then ~/.cache/minidl/17flowers)",
    )
    source.add_argument(
        "--download",
        action="store_true",
        help=f"fetch {flowers.FLOWERS17_URL} into the user cache if it is not found; the file "
        "must match the pinned SHA-256 and MD5 (minidl/data/flowers.py)",
    )
    source.add_argument(
        "--count",
        type=common.integer(1),
        default=flowers.FLOWERS17_COUNT,
        help="images the archive must hold: image_0001.jpg .. image_1360.jpg (the published "
        "data set; 80 per class); smaller for test archives",
    )
    source.add_argument(
        "--fashion-mnist",
        type=common.integer(1),
        default=None,
        metavar="N",
        help="train on the first N Fashion-MNIST training images instead, resized to 224x224 "
        "and repeated to 3 channels (10 classes), to see the network learn on real images",
    )
    source.add_argument(
        "--shuffle-seed",
        type=common.integer(0),
        default=0,
        help="seed of the one shuffle at load time (tflearn's load_data(shuffle=True) shuffles "
        "once, unseeded); Keras's validation split then cuts these shuffled arrays",
    )
    recipe = p.add_argument_group("the write-up's recipe (Keras defaults unless said)")
    common.add_recipe_flags(
        recipe,
        epochs=50,
        batch_size=64,
        lr=1e-3,
        help={
            "--epochs": "epochs (the issue gives no count; our default)",
            "--batch-size": "model.fit(batch_size=64)",
            "--lr": "optimizer='adam': Keras's learning_rate 0.001",
        },
    )
    recipe.add_argument(
        "--validation-split",
        type=common.number(0, below=1),
        default=0.2,
        help="model.fit(validation_split=0.2): the LAST 20%% of the (load-shuffled) arrays "
        "validate, taken before any per-epoch shuffling, as Keras takes them",
    )
    beta = common.number(0, below=1)
    recipe.add_argument("--beta1", type=beta, default=0.9, help="Keras Adam's beta_1")
    recipe.add_argument("--beta2", type=beta, default=0.999, help="Keras Adam's beta_2")
    recipe.add_argument(
        "--epsilon",
        type=common.number(above=0),
        default=1e-7,
        help="Keras Adam's epsilon 1e-7 (PyTorch's default is 1e-8). Keras adds it to sqrt(v) "
        "before bias correction, PyTorch and minidl after; the two differ only while "
        "sqrt(v) is near epsilon",
    )
    recipe.add_argument(
        "--dropout",
        type=common.number(0, below=1),
        default=0.4,
        help="Dropout(0.4) after each hidden Dense layer",
    )
    recipe.add_argument(
        "--no-shuffle",
        action="store_true",
        help="do not reshuffle the training part each epoch (model.fit(shuffle=True) does)",
    )
    common.add_run_flags(p.add_argument_group("running"), out="runs/flowers17", workers=2)
    return p.parse_args(argv)


def load_fashion_mnist_224(limit: int, seed: int):
    """The first ``limit`` Fashion-MNIST training images, resized to 224 (Pillow's bilinear, as
    our other 224 example) and repeated to three channels, as uint8 (N, 3, 224, 224); shuffled
    once like the flowers."""
    images, labels = data.load_fashion_mnist("train")
    images, labels = images[:limit], labels[:limit]
    resized = np.empty((len(images), 3, 224, 224), dtype=np.uint8)
    for start in range(0, len(images), 256):  # in chunks: 256 float32 images are 51 MB
        chunk = data.transforms.resize_batch(images[start : start + 256, None], 224, 224)
        resized[start : start + 256] = np.clip(np.rint(chunk), 0, 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(labels))
    return resized[order], labels[order]


def main(argv=None) -> float:
    args = parse_args(argv)
    mode = common.precision_mode(args)  # before any data is read
    mdl.manual_seed(args.seed)
    if args.fashion_mnist:
        images, labels = load_fashion_mnist_224(args.fashion_mnist, args.shuffle_seed)
        classes = len(data.FASHION_MNIST_CLASSES)
    else:
        images, labels = flowers.load_flowers17(
            args.data, 224, args.count, shuffle=True, seed=args.shuffle_seed, download=args.download
        )
        classes = len(flowers.FLOWERS17_CLASSES)
    (x_train, y_train), (x_val, y_val) = flowers.keras_validation_split(
        images, labels, args.validation_split
    )
    if len(x_train) < 2 or len(x_val) < 1:
        raise SystemExit(
            f"{len(images)} images leave {len(x_train)} to train and {len(x_val)} to validate"
        )
    train_loader = data.DataLoader(
        flowers.scaled(x_train, y_train),
        args.batch_size,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        # a last batch of one image has one value per BN feature: PyTorch and minidl refuse to
        # normalize it in training (Keras would output beta), so it is left out
        drop_last=len(x_train) % args.batch_size == 1,
        workers=args.workers,
    )
    val_loader = data.DataLoader(flowers.scaled(x_val, y_val), args.batch_size, workers=0)

    model = KerasAlexNet(num_classes=classes, dropout=args.dropout)
    model.to(args.device)
    model.summary((3, 224, 224))

    def make_optimizer(params):  # fit calls it once the model is cast to the precision
        return optim.Adam(params, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.epsilon)

    what = f"Fashion-MNIST x{args.fashion_mnist}" if args.fashion_mnist else "Flowers-17"
    print(
        f"training KerasAlexNet on {what}: {len(x_train)} images, validating on {len(x_val)}, "
        f"{args.device}, {mode.name}, Adam lr {args.lr}, batch {args.batch_size}, "
        f"{args.epochs} epochs -> {args.out}"
    )
    start = time.perf_counter()
    history = common.fit(args, model, train_loader, val_loader, make_optimizer, precision=mode)
    accuracy = history[-1]["test_top1"] if history else float("nan")
    return common.finish(start, accuracy, "validation accuracy")


if __name__ == "__main__":
    main()
