"""What the training examples share: their common flags, the precision checks, and the ending.

    p = argparse.ArgumentParser(...)
    common.add_recipe_flags(p, epochs=10, batch_size=128, lr=None)   # each example's defaults
    common.add_run_flags(p, out="runs/x", workers=2)                  # --device, --precision, ...
    args = p.parse_args(argv)
    mode = common.precision_mode(args)     # before any data is read
    ...
    history = common.fit(args, model, train_loader, test_loader, make_optimizer, ...)
    common.finish(start, accuracy)         # "wall time: N s", then "test accuracy: 0.xxxx"

An example imports it as ``common`` (its own folder is put on ``sys.path``), so it works from a
checkout as ``python examples/train_fashion_mnist.py`` and when loaded by file path in the tests.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from minidl import precision, train  # noqa: E402

PRECISION_HELP = "fp32, tf32, fp16 with loss scaling, or bf16 (GPU only; docs/precision.md)"


def integer(minimum: int):
    """An argparse ``type``: a whole number >= ``minimum``. Python's own ``int`` takes any
    integer, so ``--limit -5`` would slice from the end and ``--batch-size 0`` would fail deep in
    the loader; this refuses them when the command line is read, naming the flag."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError becomes argparse's "invalid integer value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(minimum: float | None = None, above: float | None = None, below: float | None = None):
    """An argparse ``type``: a finite float with bounds (``minimum`` <= x, ``above`` < x, x <
    ``below``). Python's ``float`` takes "nan" and "inf": ``--lr nan`` would train on NaN and
    blame the rate later."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for bound, fails, says in (
            (minimum, lambda b: value < b, ">="),
            (above, lambda b: value <= b, ">"),
            (below, lambda b: value >= b, "<"),
        ):
            if bound is not None and fails(bound):
                raise argparse.ArgumentTypeError(f"must be {says} {bound}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


def add_recipe_flags(parser, epochs, batch_size: int, lr, help: dict | None = None) -> None:
    """--epochs, --batch-size and --lr with an example's defaults; ``help``: flag -> its text
    (the recipe each default comes from)."""
    help = help or {}
    parser.add_argument("--epochs", type=integer(0), default=epochs, help=help.get("--epochs"))
    parser.add_argument(
        "--batch-size", type=integer(1), default=batch_size, help=help.get("--batch-size")
    )
    parser.add_argument("--lr", type=number(0), default=lr, help=help.get("--lr"))


def add_run_flags(parser, out, workers: int = 2, help: dict | None = None) -> None:
    """The flags of how a run runs, the same in every example: --device, --precision, --out,
    --resume, --overwrite, --nonfinite, --seed, --workers, --no-progress. ``help``: flag -> its
    text."""
    help = {
        "--device": "cpu or cuda",
        "--precision": PRECISION_HELP,
        "--out": "output folder",
        "--resume": "checkpoint.npz to continue from (docs/checkpoints.md)",
        "--overwrite": "start a new run in an --out folder that holds a checkpoint, replacing it",
        "--nonfinite": "a step with a NaN/inf loss: stop the run (exit status 1) or skip the step",
        "--seed": "weights, dropout and epoch order",
        "--workers": "data-loading threads",
        "--no-progress": "no progress bar",
        **(help or {}),
    }
    parser.add_argument("--device", default="cpu", help=help["--device"])
    parser.add_argument(
        "--precision", choices=precision.MODES, default="fp32", help=help["--precision"]
    )
    parser.add_argument("--out", default=out, help=help["--out"])
    parser.add_argument("--resume", default=None, help=help["--resume"])
    parser.add_argument("--overwrite", action="store_true", help=help["--overwrite"])
    parser.add_argument(
        "--nonfinite", choices=train.NONFINITE, default="stop", help=help["--nonfinite"]
    )
    parser.add_argument("--seed", type=integer(0), default=0, help=help["--seed"])
    parser.add_argument("--workers", type=integer(0), default=workers, help=help["--workers"])
    parser.add_argument("--no-progress", action="store_true", help=help["--no-progress"])


def precision_mode(args) -> precision.Precision:
    """--precision as a ``Precision``, checked before any data is read: bf16 without ml_dtypes
    says so at once, and a mode other than fp32 refuses the CPU."""
    try:
        mode = precision.Precision(args.precision)
    except ImportError as err:
        raise SystemExit(f"--precision {args.precision}: {err}") from None
    if args.device == "cpu" and mode.name != "fp32":
        raise SystemExit(
            f"--precision {mode.name} trains on the GPU only (--device cuda): NumPy has no TF32 "
            "and no 16-bit BLAS, so 16-bit training would only be slow there "
            "(MINIDL_CUDA_EMULATE=1 --device cuda runs the GPU path on the CPU, for checking)"
        )
    return mode


def fit(args, model, train_loader, test_loader, optimizer, scheduler=None, **kwargs) -> list:
    """``train.fit`` with the shared flags (``kwargs``: the example's own, e.g. ``epochs``,
    ``resume_lr``, ``precision``). ``optimizer`` and ``scheduler`` may be factories, built after
    fit casts the model to the precision. A non-finite step that stops the run, or an --out
    folder that cannot be used (it holds a checkpoint, another run holds it, a checkpoint cannot
    be written), ends the program with "error: ..." on stderr and exit status 1, the last
    checkpoint kept."""
    kwargs.setdefault("epochs", args.epochs)
    try:
        return train.fit(
            model,
            train_loader,
            test_loader,
            optimizer,
            device=args.device,
            scheduler=scheduler,
            out_dir=args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            nonfinite=args.nonfinite,
            **kwargs,
        )
    except (train.NonFiniteLossError, train.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def finish(start: float, accuracy: float, what: str = "test accuracy", say=print) -> float:
    """The last lines every example prints: the wall time, then ``what: 0.xxxx``."""
    say(f"wall time: {time.perf_counter() - start:.0f} s")
    say(f"{what}: {accuracy:.4f}")
    return accuracy
