"""What ``python -m minidl.check`` reports: one line per check (PASS, FAIL or SKIP, the largest
error and its tolerance), the counts, and the tolerances the cases are held to."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

from minidl import dtypes
from minidl.testing import TOLERANCE


def tolerance(dtype) -> float:
    """The largest error allowed between the GPU branch and the NumPy path, relative to the
    largest value of the NumPy result (at least 1): ``minidl.testing.TOLERANCE``'s atol, a few
    units in the last place of each storage dtype."""
    return TOLERANCE[np.dtype(dtype).name][1]


class Skip(Exception):
    """A check that cannot run here (NCCL under the emulator): said, never counted as passed."""


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    error: float | None = None
    tolerance: float | None = None
    detail: str = ""
    seconds: float = 0.0


class Report:
    """Runs checks, prints one line each, keeps the results."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.results: list[Result] = []

    def check(self, name: str, fn) -> Result:
        """``fn()`` returns (error, tolerance), or a detail string for a yes/no check; raising
        AssertionError (or anything else) fails it, ``Skip`` skips it."""
        start = time.perf_counter()
        try:
            outcome = fn()
            if isinstance(outcome, tuple):
                error, tolerance = (float(v) for v in outcome)
                passed = error <= tolerance  # NaN fails
                result = Result(name, "PASS" if passed else "FAIL", error, tolerance)
            else:
                result = Result(name, "PASS", detail=str(outcome or ""))
        except Skip as why:
            result = Result(name, "SKIP", detail=str(why))
        except Exception as err:  # a check that raises is a failure, reported, not a crash
            where = traceback.extract_tb(err.__traceback__)[-1]
            detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            result = Result(name, "FAIL", detail=f"{detail} ({where.filename}:{where.lineno})")
        result.seconds = time.perf_counter() - start
        self.results.append(result)
        self.print(result)
        return result

    def print(self, r: Result) -> None:
        numbers = ""
        if r.error is not None:
            numbers = f"max err {r.error:.2e}  tol {r.tolerance:.1e}"
        print(
            f"{r.status}  {r.name:<52} {numbers or r.detail}  ({r.seconds:.2f} s)", file=self.stream
        )
        if r.status == "FAIL" and r.error is not None and r.detail:
            print(f"      {r.detail}", file=self.stream)
        self.stream.flush()

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}


def storage_dtypes() -> list[np.dtype]:
    """Every dtype the kernels declare that this process can make (bfloat16 needs ml_dtypes)."""
    found = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    return found + ([dtypes.bfloat16] if dtypes.bfloat16 is not None else [])
