"""Optimizers (SGD with momentum, Adam) and learning-rate schedules (StepLR, ReduceLROnPlateau).

SGD has two update rules, equal when the learning rate is constant:

    rule="pytorch" (default, torch.optim.SGD with dampening 0):
        v <- momentum * v + (g + weight_decay * w);     w <- w - lr * v
    rule="paper" (Krizhevsky et al. 2012, section 5):
        v <- momentum * v - weight_decay * lr * w - lr * g;     w <- w + v

With constant lr, v_paper = -lr * v_pytorch, so the weights agree step for step. When lr drops
(the paper divides it by 10 on a plateau) the paper's v still carries steps taken at the old rate
and decays them by momentum, while PyTorch's v is rescaled at once by the new lr. The paper's
recipe: momentum 0.9, weight_decay 5e-4, lr 0.01, batch 128.

On the GPU the SGD step is our kernel (``kernels/sgd.cu``); Adam is CuPy element-wise glue.

Master weights (mixed precision, ``docs/precision.md``): for a float16 (or bfloat16) parameter the
optimizer keeps a float32 copy in its state ("master"), updates that copy in float32 (velocity and
Adam's moments are float32 too) and writes the rounded value back into the parameter. An update
below half an ulp of a 16-bit weight would otherwise be lost every step. ``grad_scale``
multiplies the gradients inside the float32 step: ``GradScaler`` sets it to 1 / the loss scale.
"""

from __future__ import annotations

import math

import numpy as np

from minidl import backend, cuda, dtypes, threads
from minidl.autograd import GraphTensor, no_grad


class Optimizer:
    state_names: tuple[str, ...] = ()  # per-parameter buffers (state_dict keys "<index>.<name>")
    hyperparameters: tuple[str, ...] = ()  # what param_groups shows beside "params" and "lr"

    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            _check_parameter(type(self).__name__, p)
        if len({id(p) for p in self.params}) != len(self.params):
            # PyTorch warns ("duplicate parameters; in future, this will cause an error") and
            # steps such a parameter twice per step(); Module.parameters() lists each once.
            raise ValueError(
                f"{type(self).__name__}: a parameter appears more than once in the parameter list"
            )
        if not lr >= 0:  # as PyTorch's "not 0.0 <= lr": NaN is refused too
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        self.lr = float(lr)
        self.grad_scale = 1.0  # gradients are multiplied by this in the step (GradScaler.unscale_)
        self.state: list[dict] = [{} for _ in self.params]
        self._written: dict[int, int] = {}  # id(p) -> p._version when this optimizer wrote p

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @property
    def param_groups(self) -> list[dict]:
        """PyTorch's ``param_groups`` for minidl's one group: ``[{"params": ..., "lr": ...,
        <hyperparameters>}]``. Setting a key sets the optimizer's attribute, so a loop written for
        PyTorch (``for g in opt.param_groups: g["lr"] *= 0.5``) changes this optimizer."""
        return [_Group(self)]

    def step(self) -> None:
        with no_grad():
            for p, state in zip(self.params, self.state):
                if p.grad is None:
                    continue
                if not p.data.flags.c_contiguous:
                    # the update writes into a flat view of p's array; a copy would be lost
                    raise RuntimeError(
                        f"{type(self).__name__}: a parameter of shape {p.shape} is not "
                        "C-contiguous (was p.data set by hand? use p.copy_(...) under no_grad)"
                    )
                if dtypes.is_16bit(p.dtype) and self._written.get(id(p)) != p._version:
                    # float32 master weights, made on the first step, and anew when p was
                    # changed through the tensor since (in place, load_state_dict): else the
                    # update would write the stale master over the change
                    state["master"] = p.data.astype(np.float32)
                self._update(p, backend.xp(p.device).ascontiguousarray(p.grad.data), state)
                p._bump_version()  # as any write in place: a graph that saved p is stale now
                self._written[id(p)] = p._version

    def _update(self, p, g, state) -> None:
        """One step for p with gradient g; for a 16-bit p, state["master"] is its float32 copy."""
        raise NotImplementedError

    def _gradient(self, g, dtype):
        """g times grad_scale, as ``dtype`` (float32 for a 16-bit parameter's master)."""
        g = g.astype(np.float32) if dtypes.is_16bit(g.dtype) else g
        if self.grad_scale != 1.0:
            return g * np.dtype(dtype).type(self.grad_scale)
        return g.astype(dtype, copy=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat NumPy arrays (for an .npz checkpoint): lr and every per-parameter buffer."""
        out = {"lr": np.array(self.lr)}
        for i, state in enumerate(self.state):
            for name, value in state.items():
                out[f"{i}.{name}"] = np.asarray(backend.to_numpy(value))
        return out

    def load_state_dict(self, state) -> None:
        self.lr = float(state["lr"])
        self.state = [{} for _ in self.params]
        for key, value in state.items():
            if key == "lr":
                continue
            index, name = key.split(".", 1)
            p = self.params[int(index)]
            array = np.asarray(value)
            dtype = dtypes.compute_dtype(p.dtype)  # master copy and moments: float32 for 16-bit p
            self.state[int(index)][name] = (
                backend.move(array.astype(dtype), p.device) if array.ndim else array.item()
            )
        self._written = {id(p): p._version for p in self.params}  # the masters fit p as it is


def _check_parameter(optimizer: str, p) -> None:
    if isinstance(p, dict):
        raise TypeError(
            f"{optimizer}: parameter groups (dicts) are not supported; minidl's optimizers keep "
            f"one learning rate: pass the parameters, e.g. {optimizer}(model.parameters(), lr=...)"
        )
    if not isinstance(p, GraphTensor):
        raise TypeError(
            f"{optimizer}: the parameter list holds a {type(p).__name__}; expected Tensors "
            "(model.parameters())"
        )
    if p._node is not None:
        raise ValueError(f"{optimizer}: can't optimize a non-leaf Tensor (as PyTorch)")


class _Group(dict):
    """One parameter group as PyTorch shows it; a write goes to the optimizer's attribute."""

    def __init__(self, optimizer: Optimizer):
        names = ("lr", *optimizer.hyperparameters)
        super().__init__(params=optimizer.params, **{k: getattr(optimizer, k) for k in names})
        self._optimizer = optimizer

    def __setitem__(self, key, value) -> None:
        if key == "params" or key not in self:
            raise KeyError(f"param_groups: {key!r} cannot be set here; it holds {sorted(self)}")
        if key == "lr" and not value >= 0:
            raise ValueError(f"param_groups: lr must be >= 0, got {value}")
        setattr(self._optimizer, key, float(value) if key == "lr" else value)
        super().__setitem__(key, value)


class SGD(Optimizer):
    state_names = ("velocity", "master")  # the per-parameter buffers a checkpoint holds
    hyperparameters = ("momentum", "weight_decay")

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        rule: str = "pytorch",
    ):
        super().__init__(params, lr)
        if rule not in ("pytorch", "paper"):
            raise ValueError(f"SGD: rule must be 'pytorch' or 'paper', got {rule!r}")
        self.momentum, self.weight_decay, self.rule = momentum, weight_decay, rule

    def _update(self, p, g, state) -> None:
        master = state.get("master", p.data)  # the float32 copy of a 16-bit p, else p itself
        if "velocity" not in state:
            state["velocity"] = backend.xp(p.device).zeros_like(master)
        v = state["velocity"]
        if p.device == "cuda":
            self._step_cuda(p.data, g, master, v)  # the kernel writes the rounded master to p
            return
        self._step_numpy(master, self._gradient(g, master.dtype), v)
        if master is not p.data:
            p.data[...] = master.astype(p.dtype, copy=False)  # rounded to 16 bits, once

    def _step_numpy(self, w, g, v) -> None:
        lr, mu, wd = (w.dtype.type(x) for x in (self.lr, self.momentum, self.weight_decay))
        # flat views that cannot be copies (reshape would copy a non-contiguous array silently)
        w, g, v = (_flat_view(a) for a in (w, g, v))

        def update(part: slice) -> None:
            # In blocks of 64K elements: the temporaries stay in cache instead of making several
            # passes over fc6's 150 MB.
            for start in range(part.start, part.stop, 1 << 16):
                block = slice(start, min(start + (1 << 16), part.stop))
                wb, gb, vb = w[block], g[block], v[block]
                vb *= mu
                if self.rule == "paper":
                    vb -= wd * lr * wb + lr * gb
                    wb += vb
                else:
                    vb += gb + wd * wb
                    wb -= lr * vb

        # element by element: parts of the parameter on the thread pool give the same bits
        threads.map_parts(update, threads.parts(w.size, w.nbytes))

    def _step_cuda(self, w, g, master, v) -> None:
        # w: the parameter (any kernel dtype); master, v: acc_t (master is w for float32/64)
        cuda.launch_1d(
            "sgd",
            "sgd_step",
            w.dtype,
            w.size,
            (
                w,
                g,
                master,
                v,
                cuda.i64(w.size),
                *cuda.real(w.dtype, self.lr, self.momentum, self.weight_decay, self.grad_scale),
                cuda.i32(1 if self.rule == "paper" else 0),
            ),
        )


def _flat_view(array):
    """The array as 1-d, sharing its memory; an error where that would need a copy."""
    if not array.flags.c_contiguous:
        raise RuntimeError(f"optimizer state of shape {array.shape} is not C-contiguous")
    return array.reshape(-1)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; weight_decay adds wd * w to the gradient."""

    state_names = ("m", "v", "t", "master")  # the per-parameter buffers a checkpoint holds
    hyperparameters = ("betas", "eps", "weight_decay")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, p, g, state) -> None:
        xp = backend.xp(p.device)
        w = state.get("master", p.data)  # the float32 copy of a 16-bit p, else p itself
        g = self._gradient(g, w.dtype)
        if "m" not in state:
            state["m"] = xp.zeros_like(w)
            state["v"] = xp.zeros_like(w)
            state["t"] = 0
        b1, b2 = self.betas
        state["t"] += 1
        t = state["t"]
        step = self.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        eps = self.eps * math.sqrt(1 - b2**t)
        arrays = (w, g, state["m"], state["v"])
        if p.device == "cuda":
            self._adam_math(xp, *arrays, step, eps)
        else:  # element by element: parts of the flat arrays on the thread pool, the same bits
            w_, g_, m_, v_ = (_flat_view(a) for a in arrays)
            threads.map_parts(
                lambda s: self._adam_math(np, w_[s], g_[s], m_[s], v_[s], step, eps),
                threads.parts(w.size, w.nbytes),
            )
        if w is not p.data:
            p.data[...] = w.astype(p.dtype, copy=False)  # rounded to 16 bits, once

    def _adam_math(self, xp, w, g, m, v, step: float, eps: float) -> None:
        """In place on w, m, v: one Adam step (weight decay added to g), bias correction folded
        into ``step`` and ``eps``."""
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * w
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        w -= (step * m / (xp.sqrt(v) + eps)).astype(w.dtype)


class StepLR:
    """Multiply the learning rate by gamma every step_size epochs (call step() once per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        self.epoch = 0

    def step(self, metric=None) -> None:
        self.epoch += 1
        if self.epoch % self.step_size == 0:
            self.optimizer.lr *= self.gamma

    def state_dict(self) -> dict:
        return {"epoch": np.array(self.epoch)}

    def load_state_dict(self, state) -> None:
        self.epoch = int(state["epoch"])


class ReduceLROnPlateau:
    """Divide the learning rate when a metric stops improving (the paper: lr / 10 when the
    validation error stops improving). mode="max" for accuracy, "min" for a loss."""

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "max",
        factor: float = 0.1,
        patience: int = 2,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'max' or 'min', got {mode!r}")
        self.optimizer, self.mode, self.factor = optimizer, mode, factor
        self.patience, self.threshold, self.min_lr = patience, threshold, min_lr
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_epochs = 0

    def _improved(self, metric: float) -> bool:
        if self.mode == "max":
            return (
                metric > self.best * (1 + self.threshold) if self.best > 0 else metric > self.best
            )
        return metric < self.best * (1 - self.threshold) if self.best > 0 else metric < self.best

    def step(self, metric: float) -> None:
        if self._improved(float(metric)):
            self.best = float(metric)
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"best": np.array(self.best), "bad_epochs": np.array(self.bad_epochs)}

    def load_state_dict(self, state) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
