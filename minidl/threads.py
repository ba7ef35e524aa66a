"""The CPU path's threads: one persistent pool, and the batch cut into parts (docs/threads.md).

NumPy releases the GIL inside copies, ufunc loops and BLAS calls, so threads that each run an op's
NumPy code on their own slice of the batch keep every core busy, for every op (not only the GEMMs,
which OpenBLAS already runs on all cores). An op's NumPy code stays as it is; the op wraps it:

    y = threads.over_batch(lrn_forward, x)                 # y[part] = lrn_forward(x[part])
    dx, db = threads.over_batch(f, dy, y, combine=("join", "sum"))     # db: the parts' sum

The same numbers for any thread count: the parts depend on the size of the work only
(``parts``), never on the number of threads; one thread runs the same parts one after the other,
and what is summed over the parts (a weight or bias gradient) is summed in part order.

One design for both thread pools: OpenBLAS keeps its own threads, which spin for a while after each
GEMM and would fight our workers for the cores. While the pool runs parts, every GEMM is one part's
and runs on one BLAS thread; outside (a GEMM that is not split) BLAS gets ``BLAS_OUTSIDE`` threads.

    minidl.set_num_threads(n), minidl.get_num_threads(); MINIDL_NUM_THREADS=n in the environment.
    The default: the cores this process may run on.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# At most this many parts, whatever the size: at least 4 (2 a thread on two cores: a part that
# runs long, another process on its core, is made up by the other thread; 4 measured 1-2% faster
# than 8 at two threads, docs/threads.md) and at least the cores, so that every core has one. A
# property of the machine, never of the thread count. The count of parts is a power of two, so
# that 2, 4, 8 ... threads share them evenly.
MAX_PARTS = max(4, 1 << (cores() - 1).bit_length())
# At least this many bytes of work (the first array's) in a part: below it, a split costs more
# than it saves (one thread, AlexNet batch 16: pool5's 2.7 MB in 4 parts ran 16% slower than whole;
# the steps at two threads ran as fast with 128 KiB, 512 KiB and 1 MiB).
MIN_PART_BYTES = 1 << 20

_num_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_inside = threading.local()  # .active: this thread is running a part (a nested split runs inline)
_blas = None  # threadpoolctl's controllers of the loaded OpenBLAS libraries, found on first use
_blas_threads: int | None = None  # what BLAS was last set to by us


def _forget_pool() -> None:
    """In a forked child: the parent's worker threads are not there; a new pool is made on use."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _default_threads() -> int:
    text = os.environ.get("MINIDL_NUM_THREADS")
    if text is not None and text.strip():
        try:
            return _checked(int(text))
        except ValueError:
            raise ValueError(
                f"MINIDL_NUM_THREADS must be a positive integer, got {text!r}"
            ) from None
    return cores()


def _checked(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be a positive integer, got {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    return int(n)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the CPU path (ours and BLAS's together), as torch.set_num_threads."""
    global _num_threads, _pool
    n = _checked(n)
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _num_threads = n
    _set_blas(n)


def get_num_threads() -> int:
    if _num_threads is None:
        set_num_threads(_default_threads())  # BLAS gets the same count
    return _num_threads


def _set_blas(n: int) -> None:
    """BLAS's thread count (numpy's OpenBLAS), through threadpoolctl; a no-op when unchanged."""
    global _blas, _blas_threads
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    if n != _blas_threads:
        for controller in _blas:
            controller.set_num_threads(n)
        _blas_threads = n


# BLAS's threads outside the pool's parts, for a GEMM nobody splits: None, all of ours (the
# default); 1 keeps OpenBLAS's own threads asleep for good (docs/threads.md measures both).
BLAS_OUTSIDE: int | None = None


def blas_outside() -> int:
    return BLAS_OUTSIDE or get_num_threads()


def parts(n: int, nbytes: int = 0) -> list[slice]:
    """The parts of n items (a batch) whose work is ``nbytes`` (the first array's, or what the op
    says): a power of two of them, at most MAX_PARTS, at least MIN_PART_BYTES each, sizes within
    one of each other. A function of n and nbytes only."""
    count = max(1, min(n, MAX_PARTS, nbytes // MIN_PART_BYTES))
    count = 1 << (count.bit_length() - 1)  # 3 parts on two threads would leave one idle a third
    edges = [n * i // count for i in range(count + 1)]
    return [slice(first, last) for first, last in zip(edges, edges[1:])]


def map_parts(fn, items) -> list:
    """[fn(item) for item in items], run on the pool, BLAS on one thread meanwhile; the results
    in the order of ``items``. Inside a part (a nested split) it runs inline."""
    items = list(items)
    if getattr(_inside, "active", False):
        return [fn(item) for item in items]
    threads = min(get_num_threads(), len(items))
    _set_blas(1)
    try:
        if threads == 1:
            return [fn(item) for item in items]
        return _on_the_pool(fn, items, threads)
    finally:
        _set_blas(blas_outside())


def _on_the_pool(fn, items: list, threads: int) -> list:
    """``threads`` workers (the caller and threads - 1 of the pool's) take the items in order,
    each the next one not taken, until none is left: a part that runs long (another process on
    the core) does not hold the others up."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(get_num_threads() - 1, thread_name_prefix="minidl")
    results = [None] * len(items)
    taken = itertools.count()  # next() on it is atomic: each item is taken once

    def work() -> None:
        _inside.active = True
        try:
            while (i := next(taken)) < len(items):
                results[i] = fn(items[i])
        finally:
            _inside.active = False

    helpers = [_pool.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        for helper in helpers:
            helper.result()  # waits, and raises what a part raised
    return results


def over_batch(fn, *arrays, combine=None, out=None, nbytes=None):
    """fn(*parts) for the parts of the batch (axis 0 of every array), run on the pool. A list
    among ``arrays`` holds one array a part already (what "list" kept): part i takes item i.

    fn returns an array or a tuple of them; ``combine`` says, for each, how the parts' results
    become one: "join" (concatenated along axis 0, the default: each part copies its own rows in
    while its result is in cache), "sum" (added in part order) or "list" (kept per part, in
    order). None results stay None. With ``out`` (the whole batch's array for fn's one result),
    fn(*parts, out=out[part]) writes its rows in place: no copy to join. ``nbytes``: the size
    of the work that decides the parts (default: the first array's)."""
    n = arrays[0].shape[0] if arrays[0].ndim else 1
    slices = parts(n, arrays[0].nbytes if nbytes is None else nbytes)
    if len(slices) == 1:  # the whole batch at once, BLAS on all the threads
        whole = [a[0] if isinstance(a, list) else a for a in arrays]
        result = fn(*whole) if out is None else fn(*whole, out=out)
        if combine is None or "list" not in combine:
            return result
        return tuple([value] if how == "list" else value for value, how in zip(result, combine))
    if any(isinstance(a, list) and len(a) != len(slices) for a in arrays):
        raise ValueError("over_batch: a list of parts does not match the batch's parts")
    joined: dict[int, np.ndarray] = {} if out is None else {0: out}  # made by the first part
    lock = threading.Lock()

    def run(i: int):
        s = slices[i]
        part = [a[i] if isinstance(a, list) else a[s] for a in arrays]
        result = fn(*part) if out is None else fn(*part, out=out[s])
        values = result if isinstance(result, tuple) else (result,)
        kept = []
        for k, (value, how) in enumerate(zip(values, combine or ("join",) * len(values))):
            if how == "join" and value is not None and out is None:
                with lock:
                    if k not in joined:
                        joined[k] = np.empty((n, *value.shape[1:]), dtype=value.dtype)
                joined[k][s] = value
                value = None  # let the part's copy go
            kept.append(value)
        return isinstance(result, tuple), kept

    results = map_parts(run, range(len(slices)))
    combined = []
    for k, how in enumerate(combine or ("join",) * len(results[0][1])):
        pieces = [kept[k] for _, kept in results]
        if how == "join" or pieces[0] is None:
            combined.append(joined.get(k))
        else:
            combined.append(sum_in_order(pieces) if how == "sum" else pieces)
    return tuple(combined) if results[0][0] else combined[0]


def sum_in_order(pieces: list):
    """pieces[0] + pieces[1] + ..., left to right: the same bits for any thread count (None
    for pieces that are None: a gradient nobody needs)."""
    if pieces[0] is None:
        return None
    total = pieces[0].copy()
    for piece in pieces[1:]:
        total += piece
    return total
