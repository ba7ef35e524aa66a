"""Precision modes for training on the GPU: FP32, TF32, and mixed float16 / bfloat16 with float32
master weights and dynamic loss scaling. ``docs/precision.md`` sets this beside PyTorch's
``autocast``/``GradScaler`` and Chainer's ``loss_scaling``/``use_fp32_update``.

    mode  storage of weights and activations  GEMMs (cuBLAS)                     loss scaling
    fp32  float32                             float32, TF32 off (the reference)  no
    tf32  float32                             TF32 tensor cores, float32 sums    no
    fp16  float16                             float16 inputs, float32 sums       dynamic
    bf16  bfloat16 (ml_dtypes, see below)     bfloat16 inputs, float32 sums      no (float32's
                                                                                 exponent range)

What stays in float32 in the 16-bit modes, and why:
- the optimizer's master weights (``minidl.optim``): an update lr * g smaller than half an ulp of a
  16-bit weight (2^-11 of it for float16, 2^-8 for bfloat16) would be rounded away every step;
- softmax cross-entropy (cast the logits up: ``loss_input``): a sum of exponentials over classes;
- every sum in our kernels (LRN's window sum, scale and power, channel sums, reductions): acc_t<T>
  in ``kernels/common.cuh``, so a 16-bit value is rounded once, when it is stored;
- buffers (BatchNorm's running statistics): ``cast_model`` leaves them in float32;
- the loss scale and the unscaling of gradients, fused into the optimizer's float32 step.

bfloat16 storage is ``ml_dtypes.bfloat16`` (``minidl/dtypes.py``): a NumPy dtype that CuPy takes
too, so a bfloat16 Tensor lives on the CPU, the emulator and the GPU alike, and our kernels take
its arrays as ``__nv_bfloat16``. NumPy rounds to nearest even as CUDA's ``__float2bfloat16_rn``
does (only a NaN's bits differ: CUDA makes every NaN 0x7fff).

Dynamic loss scaling (``GradScaler``, PyTorch's semantics and defaults): multiply the loss by S
(2^16 to start) so small float16 gradients do not flush to zero; if any gradient is then inf or
NaN, skip that step and halve S; after ``growth_interval`` (2000) clean steps in a row, double S.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from minidl import backend, dtypes

MODES = ("fp32", "tf32", "fp16", "bf16")


# ---- 16-bit storage ------------------------------------------------------------------------------
def _xp(array):
    return np if isinstance(array, (np.ndarray, np.generic)) else backend.xp("cuda")


def all_finite(x) -> bool:
    """No inf and no NaN in x."""
    return bool(_xp(x).isfinite(x).all())


# ---- modes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """One run's precision: ``Precision("fp16")``. See the table in this module's docstring."""

    name: str = "fp32"

    def __post_init__(self):
        if self.name not in MODES:
            raise ValueError(f"precision: mode must be one of {MODES}, got {self.name!r}")
        if self.name == "bf16":  # asked for now, not at the first cast: names ml_dtypes if missing
            dtypes.require_bfloat16("precision bf16")

    @property
    def dtype(self) -> np.dtype:
        """Storage of weights and activations."""
        if self.name == "bf16":
            return dtypes.require_bfloat16("precision bf16")
        return np.dtype(np.float16 if self.name == "fp16" else np.float32)

    @property
    def tf32(self) -> bool:
        return self.name == "tf32"

    @property
    def loss_scaling(self) -> bool:
        """float16 needs it (5 exponent bits: gradients below 2^-24 flush to zero); bfloat16 has
        float32's exponent range and does not."""
        return self.name == "fp16"

    def cast_model(self, model):
        """The model's parameters in this mode's storage dtype, in place (optimizers made later
        keep float32 master copies); buffers such as running statistics stay float32."""
        for p in model.parameters():
            p.data = p.data.astype(self.dtype)
            p.grad = None
        return model

    def cast_input(self, x):
        """A batch in the storage dtype (a Tensor, through the autograd Cast)."""
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    @staticmethod
    def loss_input(logits):
        """Logits cast up to float32 for softmax cross-entropy (a no-op in float32 and float64)."""
        return logits if logits.dtype in (np.float32, np.float64) else logits.astype(np.float32)

    @contextlib.contextmanager
    def matmul_mode(self):
        """TF32 GEMMs while inside, for the tf32 mode (restored on exit); nothing otherwise."""
        previous = set_tf32(self.tf32)
        try:
            yield self
        finally:
            set_tf32(previous)


_tf32 = False


def set_tf32(enabled: bool) -> bool:
    """Let cuBLAS use TF32 tensor cores for float32 GEMMs (10-bit mantissa inputs, float32 sums),
    PyTorch's ``torch.backends.cuda.matmul.allow_tf32``. Returns the previous setting. Applies to
    CuPy's matmul (its compute type for float32) and to our direct cuBLAS calls (the handle's math
    mode); under the emulator and on the CPU it is only recorded: NumPy has no TF32."""
    global _tf32
    previous, _tf32 = _tf32, bool(enabled)
    if not backend.gpu_available():  # the CPU, or the emulator
        return previous
    cp = backend.cupy()
    linalg = backend.cupy("_core._routines_linalg")  # private: CuPy's compute type for matmul
    cublas = backend.cublas()

    compute = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
    linalg.set_compute_type(np.float32, compute)
    # CUBLAS_TF32_TENSOR_OP_MATH = 3, CUBLAS_DEFAULT_MATH = 0 (cublas_api.h)
    mode = getattr(cublas, "CUBLAS_TF32_TENSOR_OP_MATH", 3) if enabled else 0
    cublas.setMathMode(cp.cuda.device.get_cublas_handle(), mode)
    return previous


def tf32_enabled() -> bool:
    return _tf32


# ---- dynamic loss scaling ------------------------------------------------------------------------
class GradScaler:
    """Dynamic loss scaling with PyTorch's ``torch.amp.GradScaler`` semantics and defaults:

        scaler.scale(loss).backward()
        scaler.step(optimizer)     # skipped when a gradient is inf/NaN
        scaler.update()            # halve after a skip; double after growth_interval clean steps

    One difference, on purpose: ``unscale_`` does not rewrite ``.grad``. A float16 gradient
    divided by 2^16 in float16 would underflow, which is what scaling avoids, so the division is
    handed to the optimizer (``optimizer.grad_scale = 1 / scale``) and done in its float32 step,
    as Chainer does. ``unscale_`` still checks every gradient for inf/NaN.

    A second: the scale never drops below ``MIN_SCALE`` (2^-24, float16's smallest subnormal).
    PyTorch halves without end, so after about a thousand skips in a row the scale reaches 0 and
    ``1 / scale`` divides by zero; a scale that low means the gradients overflow by themselves,
    and ``StepGuard`` stops such a run anyway (``docs/precision.md``).
    """

    MIN_SCALE = 2.0**-24

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ):
        if growth_factor <= 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval must be >= 1, got {growth_interval}")
        self.enabled = enabled
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._growth_tracker = 0  # clean steps in a row since the last change of scale
        self._stage: dict[int, str] = {}  # id(optimizer) -> "unscaled" | "stepped"
        self._found_inf: dict[int, bool] = {}
        self.skipped_steps = 0  # steps skipped on an inf/NaN gradient, for the training log

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def scale(self, loss):
        """loss * scale, in float32 (a float16 loss times 2^16 could overflow by itself)."""
        if not self.enabled:
            return loss
        if loss.dtype not in (np.float32, np.float64):
            loss = loss.astype(np.float32)
        return loss * self._scale

    def unscale_(self, optimizer) -> None:
        """Check the gradients for inf/NaN and hand 1 / scale to the optimizer's step."""
        if not self.enabled:
            return
        key = id(optimizer)
        if key in self._stage:
            raise RuntimeError(
                f"GradScaler.unscale_: already called ({self._stage[key]}) on this optimizer "
                "since the last update()"
            )
        self._found_inf[key] = not all(
            all_finite(p.grad.data) for p in optimizer.params if p.grad is not None
        )
        optimizer.grad_scale = 1.0 / self._scale
        self._stage[key] = "unscaled"

    def step(self, optimizer) -> bool:
        """``optimizer.step()`` unless a gradient is inf/NaN. Returns whether it stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        key = id(optimizer)
        if self._stage.get(key) == "stepped":
            raise RuntimeError("GradScaler.step: already called since the last update()")
        if key not in self._stage:
            self.unscale_(optimizer)
        stepped = not self._found_inf[key]
        if stepped:
            optimizer.step()
        else:
            self.skipped_steps += 1
        optimizer.grad_scale = 1.0
        self._stage[key] = "stepped"
        return stepped

    def update(self, new_scale: float | None = None) -> None:
        """Halve the scale if any step since the last update met an inf/NaN gradient, else count a
        clean step and grow the scale after growth_interval of them."""
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = float(new_scale)
        else:
            if not self._found_inf:
                raise RuntimeError("GradScaler.update: no unscale_() or step() since the last one")
            if any(self._found_inf.values()):
                self._scale = max(self._scale * self.backoff_factor, self.MIN_SCALE)
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self.growth_interval:
                    grown = self._scale * self.growth_factor
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
        self._stage.clear()
        self._found_inf.clear()

    def state_dict(self) -> dict:
        """PyTorch's keys, so a checkpoint reads the same; empty when disabled (as PyTorch)."""
        if not self.enabled:
            return {}
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state: dict) -> None:
        if not self.enabled:
            return
        if not state:
            raise RuntimeError("GradScaler.load_state_dict: the checkpoint's scaler was disabled")
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])
