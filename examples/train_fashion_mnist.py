"""Train on Fashion-MNIST: the README's main job.

    python examples/train_fashion_mnist.py                  # small AlexNet, CPU, ~4 minutes
    python examples/train_fashion_mnist.py --model alexnet --size 224 --device cuda
                                      # Dive into Deep Learning's recipe: 1-channel AlexNet at
                                      # 224x224, batch 128, plain SGD lr 0.01, 10 epochs, He
                                      # init (D2L publishes test accuracy 0.877-0.883; their
                                      # net has no LRN and no groups, ours is the paper's)
    python examples/train_fashion_mnist.py --model alexnet --size 224 --device cuda --precision fp16
                                      # the same in float16, float32 master weights and loss
                                      # scaling (its scale and skipped steps in the log); tf32
                                      # and bf16 too (docs/precision.md)
    OMP_NUM_THREADS=1 mpiexec -n 2 python examples/train_fashion_mnist.py
                                      # data parallel on two processes, the global batch
                                      # split between them (docs/distributed.md)

Writes runs/<name>/{checkpoint.npz, log.csv, curves.png, conv1_filters.png}; --resume continues
from a checkpoint, with its optimizer and learning rate unless --optimizer or --lr say otherwise
(docs/checkpoints.md). A NaN or inf loss stops the run with exit status 1, the last checkpoint
kept (--nonfinite skip skips such steps instead). The last line printed is "test accuracy: 0.xxxx".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, beside this file

import common  # noqa: E402  (it puts the checkout on sys.path too)

import minidl as mdl  # noqa: E402
from minidl import data, distributed, optim, train  # noqa: E402
from minidl.models.alexnet import AlexNet, SmallAlexNet  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=["small", "alexnet"], default="small")
    p.add_argument(
        "--norm",
        choices=["lrn", "batch"],
        default="lrn",
        help="small net only: the paper's LRN (default) or BatchNorm2d in its place",
    )
    p.add_argument(
        "--size",
        type=common.integer(1),
        default=None,
        help="input side (default 28 small, 224 alexnet)",
    )
    common.add_recipe_flags(
        p,
        epochs=None,
        batch_size=128,
        lr=None,
        help={
            "--epochs": "default 3 small, 10 alexnet",
            "--lr": "default 2e-3 adam (halved each epoch), 0.01 sgd",
        },
    )
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default=None,
        help="default adam for small (converges in few epochs), sgd for alexnet (D2L)",
    )
    p.add_argument(
        "--momentum", type=common.number(0), default=None, help="default 0.9; 0 for alexnet (D2L)"
    )
    p.add_argument(
        "--weight-decay", type=common.number(0), default=None, help="default 0 (sgd: 5e-4 paper)"
    )
    p.add_argument("--init", default=None, help="paper, caffe or kaiming")
    p.add_argument(
        "--dropout",
        type=common.number(0, below=1),
        default=None,
        help="default 0.3 small, 0.5 alexnet",
    )
    p.add_argument(
        "--limit", type=common.integer(1), default=None, help="use only the first N training images"
    )
    p.add_argument("--data", default=None, help="folder with the four Fashion-MNIST .gz files")
    common.add_run_flags(
        p,
        out=None,
        help={
            "--out": "output folder (default runs/fashion-<model>)",
            "--resume": "checkpoint.npz to continue from (its optimizer and lr unless "
            "--optimizer/--lr say otherwise; docs/checkpoints.md)",
        },
    )
    return p.parse_args(argv)


def resumed_optimizer(summary: dict | None) -> str | None:
    """The optimizer a checkpoint was trained with ("sgd" or "adam"), None without one: resuming
    without --optimizer continues with it, not with the model's default."""
    if summary is None:
        return None
    return {"SGD": "sgd", "Adam": "adam"}.get(summary["optimizer"])


def resize_batch(size: int):
    """Bilinear resize of a (B, 1, 28, 28) batch to size x size (D2L's 224 recipe), as two
    matrix products for the whole batch (Pillow's bilinear filter, about 6x faster than Pillow
    image by image: the loader keeps up with a GPU)."""

    def transform(x, rng):
        return data.transforms.resize_batch(x, size, size)

    return transform


def main(argv=None) -> float:
    args = parse_args(argv)
    alexnet = args.model == "alexnet"
    if alexnet and args.norm != "lrn":
        raise SystemExit("--norm batch is for the small net; --model alexnet keeps the paper's LRN")
    # 0 is a value, not "default": defaults are for options left out (is None)
    size = args.size if args.size is not None else (224 if alexnet else 28)
    epochs = args.epochs if args.epochs is not None else (10 if alexnet else 3)
    mode = common.precision_mode(args)  # before any data is read
    resumed = train.checkpoint_summary(args.resume) if args.resume is not None else None
    opt_name = args.optimizer or resumed_optimizer(resumed) or ("sgd" if alexnet else "adam")
    lr = args.lr if args.lr is not None else (0.01 if opt_name == "sgd" else 2e-3)
    lr_text = f"lr {lr}"
    if resumed and args.lr is None and resumed_optimizer(resumed) == opt_name:
        lr_text = f"lr {resumed['lr']} (the checkpoint's)"
    # under mpiexec -n N: join the job (rank r takes GPU r of its node); rank 0 alone prints
    distributed.init(args.device)
    say = print if distributed.is_main() else (lambda *args: None)
    mdl.manual_seed(args.seed)

    transform = resize_batch(size) if size != 28 else None
    train_set = data.fashion_mnist("train", args.data, transform)
    test_set = data.fashion_mnist("test", args.data, transform)
    if args.limit is not None:
        train_set = data.ArrayDataset(
            train_set.images[: args.limit], train_set.labels[: args.limit], train_set.transform
        )
    train_loader = data.DataLoader(
        train_set, args.batch_size, shuffle=True, seed=args.seed, workers=args.workers
    )
    test_loader = data.DataLoader(
        test_set, 500 if not alexnet else args.batch_size, workers=args.workers
    )

    if alexnet:
        model = AlexNet(
            num_classes=10,
            in_channels=1,
            input_size=size,
            init=args.init or "kaiming",
            dropout=args.dropout if args.dropout is not None else 0.5,
        )
    else:
        model = SmallAlexNet(
            num_classes=10,
            in_channels=1,
            init=args.init or "kaiming",
            dropout=args.dropout if args.dropout is not None else 0.3,
            norm=args.norm,
        )
    model.to(args.device)
    model.summary((1, size, size), show=distributed.is_main())

    def make_optimizer(params):  # fit calls it once the model is cast to the precision
        decay = args.weight_decay or 0.0
        if opt_name == "adam":
            return optim.Adam(params, lr=lr, weight_decay=decay)
        momentum = args.momentum if args.momentum is not None else (0.0 if alexnet else 0.9)
        return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)

    def make_scheduler(optimizer):
        if alexnet:  # the paper's rule: divide by 10 when test accuracy stops improving
            return optim.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=1)
        return optim.StepLR(optimizer, step_size=1, gamma=0.5)  # three short epochs: halve each

    args.out = args.out or f"runs/fashion-{args.model}"
    say(
        f"training {args.model} ({model.num_parameters():,} parameters) "
        f"on {len(train_set)} images, {distributed.world_size()} process(es), "
        f"{size}x{size}, {args.device}, {mode.name}, {opt_name} {lr_text}, {epochs} epochs "
        f"-> {args.out}"
    )
    start = time.perf_counter()
    history = common.fit(
        args,
        model,
        train_loader,
        test_loader,
        make_optimizer,
        make_scheduler,
        epochs=epochs,
        resume_lr=args.lr,  # an lr given on the command line wins over the checkpoint's
        precision=mode,  # fp16: a GradScaler, its scale and skipped steps in the log
    )
    if history:
        accuracy = history[-1]["test_top1"]
    else:  # --epochs 0: the model as it is (fresh or resumed), evaluated, nothing written
        accuracy = train.evaluate(model, test_loader, args.device, precision=mode)["top1"]
    return common.finish(start, accuracy, say=say)


if __name__ == "__main__":
    main()
