"""Train on Fashion-MNIST: the README's main job.

    python examples/train_fashion_mnist.py                  # small AlexNet, CPU, ~10 minutes
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import minidl as mdl  # noqa: E402
from minidl import data, distributed, optim, precision, train  # noqa: E402
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
        "--size", type=int, default=None, help="input side (default 28 small, 224 alexnet)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, default=None, help="default 3 small, 10 alexnet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default=None,
        help="default adam for small (converges in few epochs), sgd for alexnet (D2L)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="default 2e-3 adam (halved each epoch), 0.01 sgd"
    )
    p.add_argument("--momentum", type=float, default=None, help="default 0.9; 0 for alexnet (D2L)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0 (sgd: 5e-4 paper)")
    p.add_argument("--init", default=None, help="paper, caffe or kaiming")
    p.add_argument("--dropout", type=float, default=None, help="default 0.3 small, 0.5 alexnet")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--data", default=None, help="folder with the four Fashion-MNIST .gz files")
    p.add_argument("--out", default=None, help="output folder (default runs/fashion-<model>)")
    p.add_argument(
        "--resume",
        default=None,
        help="checkpoint.npz to continue from (its optimizer and lr unless --optimizer/--lr "
        "say otherwise; docs/checkpoints.md)",
    )
    p.add_argument(
        "--nonfinite",
        choices=train.NONFINITE,
        default="stop",
        help="a step with a NaN/inf loss: stop the run (exit status 1) or skip the step",
    )
    p.add_argument(
        "--precision",
        choices=precision.MODES,
        default="fp32",
        help="fp32, tf32, fp16 with loss scaling, or bf16 (GPU only; docs/precision.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
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
    if epochs < 0 or (args.limit is not None and args.limit < 1):
        raise SystemExit("--epochs must be >= 0 and --limit >= 1")
    try:  # before any data is read: bf16 without ml_dtypes installed says so at once
        mode = precision.Precision(args.precision)
    except ImportError as err:
        raise SystemExit(f"--precision {args.precision}: {err}") from None
    if args.device == "cpu" and mode.name != "fp32":
        raise SystemExit(
            f"--precision {mode.name} trains on the GPU only (--device cuda): NumPy has no TF32 "
            "and no 16-bit BLAS, so 16-bit training would only be slow there "
            "(MINIDL_CUDA_EMULATE=1 --device cuda runs the GPU path on the CPU, for checking)"
        )
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
    mode.cast_model(model)  # before the optimizer, which then keeps float32 master copies
    if opt_name == "sgd":
        momentum = args.momentum if args.momentum is not None else (0.0 if alexnet else 0.9)
        optimizer = optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=args.weight_decay or 0.0
        )
    else:
        optimizer = optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay or 0.0)
    if alexnet:  # the paper's rule: divide by 10 when test accuracy stops improving
        scheduler = optim.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=1)
    else:  # three short epochs: halve the rate after each one
        scheduler = optim.StepLR(optimizer, step_size=1, gamma=0.5)
    out = args.out or f"runs/fashion-{args.model}"
    say(
        f"training {args.model} ({model.num_parameters():,} parameters) "
        f"on {len(train_set)} images, {distributed.world_size()} process(es), "
        f"{size}x{size}, {args.device}, {mode.name}, {opt_name} {lr_text}, {epochs} epochs -> {out}"
    )
    start = time.perf_counter()
    try:
        history = train.fit(
            model,
            train_loader,
            test_loader,
            optimizer,
            epochs,
            args.device,
            scheduler=scheduler,
            out_dir=out,
            resume=args.resume,
            progress=not args.no_progress,
            nonfinite=args.nonfinite,
            resume_lr=args.lr,  # an lr given on the command line wins over the checkpoint's
            precision=mode,  # fp16: a GradScaler, its scale and skipped steps in the log
        )
    except train.NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if history:
        accuracy = history[-1]["test_top1"]
    else:  # --epochs 0: the model as it is (fresh or resumed), evaluated, nothing written
        accuracy = train.evaluate(model, test_loader, args.device, precision=mode)["top1"]
    say(f"wall time: {time.perf_counter() - start:.0f} s")
    say(f"test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
