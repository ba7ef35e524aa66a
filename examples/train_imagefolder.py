"""Train AlexNet on a folder of images with the paper's recipe (sections 4.1 and 5).

    python examples/train_imagefolder.py --train data/train --val data/val --device cuda

Each folder holds one sub-folder per class (JPEG or PNG). Training images: shorter side resized
to 256, centre 256x256, mean RGB subtracted, a random 227x227 crop, a random horizontal flip and
PCA colour noise (eigenvectors/eigenvalues of the training set's RGB covariance, N(0, 0.1)).
Testing averages the softmax over ten crops (four corners, centre, and their mirrors). SGD with
momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when validation accuracy stops improving.
--resize/--crop shrink everything for a quick run (AlexNet needs a crop of at least 67).
A step with a NaN or inf loss stops the run with exit status 1 (--nonfinite skip skips it).
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
from minidl.data import transforms as T  # noqa: E402
from minidl.models.alexnet import AlexNet  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--train", required=True, help="folder with one sub-folder per class")
    p.add_argument("--val", default=None, help="validation folder (default: the training folder)")
    common.add_recipe_flags(
        p,
        epochs=90,
        batch_size=128,
        lr=None,
        help={"--lr": "default 0.01; on --resume, the checkpoint's rate unless this is given"},
    )
    p.add_argument("--init", default="caffe", help="paper, caffe or kaiming")
    p.add_argument("--groups", type=common.integer(1), default=2)
    p.add_argument("--resize", type=common.integer(1), default=256)
    p.add_argument("--crop", type=common.integer(1), default=227)
    p.add_argument(
        "--stats-images",
        type=common.integer(1),
        default=1000,
        help="training images used for the mean RGB and the PCA",
    )
    common.add_run_flags(p, out="runs/imagefolder", workers=4)
    return p.parse_args(argv)


class TenCropCHW:
    """Ten crops as (10, C, H, W)."""

    def __init__(self, size):
        self.ten = T.TenCrop(size)

    def __call__(self, image, rng=None):
        return np.ascontiguousarray(self.ten(image).transpose(0, 3, 1, 2).astype(np.float32))


def main(argv=None) -> float:
    args = parse_args(argv)
    mode = common.precision_mode(args)  # before any data is read
    mdl.manual_seed(args.seed)
    base = T.Compose([T.ResizeShorter(args.resize), T.CenterCrop(args.resize)])
    raw = data.ImageFolder(args.train, base)
    sample = np.random.default_rng(args.seed).permutation(len(raw))[: args.stats_images]
    mean, eigenvalues, eigenvectors = T.rgb_statistics(raw[int(i)][0] for i in sample)
    print(
        f"{len(raw)} training images in {len(raw.classes)} classes; mean RGB {np.round(mean, 1)}, "
        f"RGB eigenvalues {np.round(eigenvalues, 1)}"
    )

    train_set = data.ImageFolder(
        args.train,
        T.Compose(
            [
                base,
                T.SubtractMean(mean),
                T.RandomCrop(args.crop),
                T.RandomHorizontalFlip(),
                T.PCAColorNoise(eigenvalues, eigenvectors, std=0.1),
                T.ToCHW(),
            ]
        ),
    )
    # the training set's class map: a validation folder numbers its classes as training does,
    # and a class the model was not trained on is refused by name before any epoch
    val_set = data.ImageFolder(
        args.val or args.train,
        T.Compose([base, T.SubtractMean(mean), TenCropCHW(args.crop)]),
        classes=raw.classes,
    )
    train_loader = data.DataLoader(
        train_set,
        args.batch_size,
        shuffle=True,
        seed=args.seed,
        drop_last=len(train_set) > args.batch_size,
        workers=args.workers,
    )
    val_loader = data.DataLoader(val_set, max(1, args.batch_size // 10), workers=args.workers)

    model = AlexNet(
        num_classes=len(raw.classes), groups=args.groups, input_size=args.crop, init=args.init
    ).to(args.device)
    lr = args.lr if args.lr is not None else 0.01

    def make_optimizer(params):  # fit calls it once the model is cast to the precision
        return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, rule="paper")

    def make_scheduler(optimizer):
        return optim.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=2)

    start = time.perf_counter()
    history = common.fit(
        args,
        model,
        train_loader,
        val_loader,
        make_optimizer,
        make_scheduler,
        resume_lr=args.lr,  # an lr given on the command line wins over the checkpoint's
        precision=mode,
    )
    top1 = history[-1]["test_top1"] if history else float("nan")
    top5 = history[-1]["test_top5"] if history else float("nan")
    print(f"ten-crop top-1 error: {1 - top1:.4f}, top-5 error: {1 - top5:.4f}")
    return common.finish(start, top1)


if __name__ == "__main__":
    main()
