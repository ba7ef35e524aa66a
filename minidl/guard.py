"""What a training step does when its numbers are not finite (NaN or inf): one policy, one place.

A step whose loss or gradients are not finite is never applied. ``nonfinite="stop"`` (the
default) raises ``NonFiniteLossError`` naming the epoch, the step, the loss and the learning rate;
``nonfinite="skip"`` drops the step and counts it (``skipped_steps`` in the log).

With a loss scaler (``precision.GradScaler``, fp16's default; ``docs/precision.md``) backward runs
on the scaled loss, and an inf or NaN *gradient* is the scaler's business: it skips that update and
halves its scale, and the run goes on (``loss_scale``, ``scaler_skipped_steps`` in the log). A
non-finite *loss* is the policy's either way. An update that overflows (finite gradients, but
the weights or the optimizer's buffers now hold inf or NaN: g * g in Adam, a huge lr) cannot be
undone: it stops the run whatever the policy says. So does a scaler that skips every step: an
epoch it skipped entirely, or ``SCALER_SKIPS_IN_A_ROW`` (100) steps in a row, learnt nothing, and
the error names the scale it reached (``GradScaler.MIN_SCALE`` at worst).

    guard = StepGuard("skip", scaler)            # one per run: the policy and the scaler
    guard.begin_epoch(epoch, len(loader))        # numbers the steps for the messages
    guard.backward(loss)                         # each step (train.train_step) ...
    if guard.check(loss.item(), optimizer):      # ... "stop" raises, "skip" returns False
        guard.step(optimizer)                    # optimizer.step(), or the scaler's
    guard.end_epoch(seen)                        # the log's counts
"""

from __future__ import annotations

import math

import numpy as np

NONFINITE = ("stop", "skip")
SCALER_SKIPS_IN_A_ROW = 100  # the loss scaler's skips, one after another, that stop a run


class NonFiniteLossError(RuntimeError):
    """Training stopped at a step whose loss or gradients were not finite (nonfinite="stop").

    That step's update was not applied and nothing was written after it. ``epoch`` and ``step``
    (1-based) say where, ``loss`` is the loss value, ``history`` the epochs finished before."""

    def __init__(self, message: str, epoch, step: int, loss: float, history=None):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss
        self.history = history if history is not None else []


def all_finite(arrays) -> bool:
    """True when no array holds a NaN or an inf.

    Fast path: the sum of their sums, in float32 or wider (a NaN or an inf anywhere makes it NaN
    or inf); np.sum of a CuPy array runs on the GPU (NumPy hands it to CuPy), so a GPU sends back
    one number. Only when that sum is not finite, which huge finite values can also cause, is
    each array looked at element by element."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is what is looked for
        for a in arrays:
            total = total + np.sum(a, dtype=np.result_type(a.dtype, np.float32))
    if math.isfinite(float(total)):
        return True
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _gradients(optimizer) -> list:
    return [p.grad.data for p in optimizer.params if p.grad is not None]


def _weights_and_buffers(optimizer) -> list:
    """The parameters and the optimizer's per-parameter arrays (momentum, Adam's moments)."""
    buffers = [v for state in optimizer.state for v in state.values() if getattr(v, "ndim", 0)]
    return [p.data for p in optimizer.params] + buffers


class StepGuard:
    """A run's non-finite policy (``nonfinite``: "stop" or "skip") and its optional loss scaler
    (an enabled ``GradScaler``; a disabled one is no scaler). ``caller`` names the function whose
    argument ``nonfinite`` was, in the ValueError for a policy that does not exist.

    In data-parallel training every rank checks the all-reduced gradients, so every rank takes
    the same decisions and the counts need no reduction."""

    def __init__(self, nonfinite: str = "stop", scaler=None, caller: str = "StepGuard"):
        if nonfinite not in NONFINITE:
            raise ValueError(f"{caller}: nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.scaler = scaler if scaler is not None and scaler.enabled else None
        self.scaler_skips_in_a_row = 0  # across epochs: the scaler's skips since its last step
        self.begin_epoch(None, 0)

    def begin_epoch(self, epoch: int | None, steps: int) -> None:
        """Start an epoch of ``steps`` steps: its counts at 0, its steps numbered from 1."""
        self.epoch, self.steps, self.step_number = epoch, steps, 0
        self.skipped = 0  # steps dropped for a non-finite loss or gradient, this epoch
        self.loss = float("nan")  # the loss of the step being guarded
        self._scaler_skipped_before = self.scaler.skipped_steps if self.scaler is not None else 0

    def backward(self, loss) -> None:
        """``loss.backward()``; with a scaler, of the scaled loss (so that small float16
        gradients do not flush to zero)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def check(self, loss: float, optimizer) -> bool:
        """Whether this step may be applied: its loss is finite and, without a scaler, so are
        its gradients (with one, an inf/NaN gradient is the scaler's to skip in ``step``).
        Checked before the update, so a bad batch leaves no trace. If not: "stop" raises
        NonFiniteLossError, "skip" counts the step and returns False. Called once a step."""
        self.step_number += 1
        self.loss = loss
        loss_finite = math.isfinite(loss)
        if loss_finite and (self.scaler is not None or all_finite(_gradients(optimizer))):
            return True
        if self.nonfinite == "stop":
            what = "a gradient" if loss_finite else "the loss"
            self._stop(
                f"{what} is not finite (loss {loss}, lr {optimizer.lr}); the update was not "
                "applied. Look for NaN or inf in the data, or lower the learning rate; "
                "nonfinite='skip' (--nonfinite skip) skips such steps instead"
            )
        self.skipped += 1
        return False

    def step(self, optimizer) -> None:
        """``optimizer.step()``; with a scaler, its step (skipped when a gradient is inf/NaN)
        and its update (the scale halved after a skip, grown after growth_interval clean steps).
        A finite gradient can still overflow in the update: that stops the run."""
        if self.scaler is None:
            optimizer.step()
            stepped = True
        else:
            stepped = self.scaler.step(optimizer)
            self.scaler.update()
            self.scaler_skips_in_a_row = 0 if stepped else self.scaler_skips_in_a_row + 1
            if self.scaler_skips_in_a_row >= SCALER_SKIPS_IN_A_ROW:
                self._stop(self._all_scaled_away(f"the last {self.scaler_skips_in_a_row} steps"))
        if stepped and not all_finite(_weights_and_buffers(optimizer)):
            self._stop(
                f"the update overflowed (loss {self.loss}, lr {optimizer.lr}): the weights or "
                "the optimizer's buffers now hold NaN or inf, and the run cannot go on from "
                "them. Lower the learning rate"
            )

    def end_epoch(self, seen: int) -> dict:
        """The epoch's counts for the log: ``skipped_steps`` and, with a scaler, ``loss_scale``
        (after the epoch) and ``scaler_skipped_steps``. ``seen``: the samples the epoch counted
        (over all ranks); none means every step was skipped and nothing was learnt, which stops
        the run whatever the policy."""
        if seen == 0:
            raise NonFiniteLossError(
                f"{self._where()}all {self.skipped} steps had a non-finite loss or gradient and "
                "were skipped; nothing was learnt. Look for NaN or inf in the data, or lower the "
                "learning rate",
                self.epoch,
                self.skipped,
                float("nan"),
            )
        counts = {"skipped_steps": self.skipped}
        if self.scaler is not None:
            counts["loss_scale"] = self.scaler.get_scale()
            counts["scaler_skipped_steps"] = self.scaler.skipped_steps - self._scaler_skipped_before
            if counts["scaler_skipped_steps"] == self.step_number - self.skipped:
                what = self._all_scaled_away(f"all {counts['scaler_skipped_steps']} steps")
                raise NonFiniteLossError(
                    f"{self._where()}{what}", self.epoch, self.step_number, self.loss
                )
        return counts

    def _all_scaled_away(self, steps: str) -> str:
        """Why a run whose updates the loss scaler skipped, one after another, stops."""
        return (
            f"the loss scaler skipped {steps} (a gradient inf or NaN every time, down to loss "
            f"scale {self.scaler.get_scale():g}); nothing was learnt. Look for inf or NaN in the "
            "model or the data, lower the learning rate, or train in fp32 or bf16"
        )

    def _where(self) -> str:
        return f"epoch {self.epoch}, " if self.epoch is not None else ""

    def _stop(self, what: str):
        raise NonFiniteLossError(
            f"{self._where()}step {self.step_number} of {self.steps}: {what}",
            self.epoch,
            self.step_number,
            self.loss,
        )
