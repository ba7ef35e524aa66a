import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import data, nn
from minidl.ops.dropout import dropout_bits, dropout_mask_numpy
from tests.helpers import assert_all_close, forward_backward, random

SHAPES = [(64, 100), (2, 3, 17, 19), (1, 4096), (7,)]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_statistical_bounds(p):
    mdl.manual_seed(0)
    y = F.dropout(mdl.tensor(np.ones((200, 1000))), p).numpy()
    kept = (y != 0).mean()
    n = y.size
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # five standard errors
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-6)  # inverted: kept units scaled


def test_mask_bits_are_uniform_and_uncorrelated():
    bits = dropout_bits(12345, 1 << 16).astype(np.float64) / 2**32
    assert abs(bits.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(bits[:-1], bits[1:])[0, 1]) < 0.02  # neighbours independent


def test_same_seed_same_mask_and_fresh_mask_per_call():
    x = mdl.tensor(np.ones((50, 50)))
    mdl.manual_seed(3)
    a, b = F.dropout(x, 0.5).numpy(), F.dropout(x, 0.5).numpy()
    mdl.manual_seed(3)
    assert np.array_equal(F.dropout(x, 0.5).numpy(), a)
    assert not np.array_equal(a, b)


def test_backward_uses_the_forward_mask():
    mdl.manual_seed(1)
    x = mdl.tensor(random((30, 40)), requires_grad=True)
    y = F.dropout(x, 0.4)
    y.backward(np.ones(y.shape))
    assert np.array_equal(x.grad.numpy() != 0, y.numpy() != 0)
    np.testing.assert_allclose(x.grad.numpy()[y.numpy() != 0], 1 / 0.6)


def test_eval_mode_and_p0_are_identity():
    x = mdl.tensor(random((4, 5)))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    assert np.all(F.dropout(x, 1.0).numpy() == 0)


def test_gradcheck_with_injected_mask():
    mask = np.random.default_rng(0).random((3, 4, 5)) > 0.5
    x = mdl.tensor(random((3, 4, 5)), requires_grad=True)
    assert mdl.gradcheck(lambda x: F.dropout(x, 0.5, mask=mask), [x])


def test_bad_p_and_mask_shape_are_errors():
    x = mdl.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="p must be a probability"):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError, match="mask has shape"):
        F.dropout(x, 0.5, mask=np.ones((3, 2)))


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_mask_equals_numpy_mask(shape, kernel_device, dtype):
    """Same seed, same generator: the GPU (or emulated) mask equals NumPy's, forward and back."""
    fn = lambda x: F.dropout(x, 0.3)  # noqa: E731
    expected = forward_backward(fn, [random(shape)], "cpu", dtype, seed=7)
    assert_all_close(
        forward_backward(fn, [random(shape)], kernel_device, dtype, seed=7), expected, dtype
    )


def test_mask_does_not_depend_on_launch_shape(kernel_device):
    from minidl import backend, cuda
    from minidl.ops.dropout import _key_args, keep_threshold

    x = np.ones(10_000, np.float32)
    outputs = []
    for grid, block in [((1,), (32,)), ((7,), (64,)), ((40,), (256,))]:
        xs = backend.move(x, "cuda")
        y = backend.xp("cuda").empty_like(xs)
        cuda.launch(
            "dropout",
            "dropout_apply",
            np.float32,
            grid,
            block,
            (
                xs,
                y,
                cuda.i64(x.size),
                cuda.i64(0),  # first: x[0] is element 0 of the batch
                *_key_args(99),
                np.uint32(keep_threshold(0.5)),
                np.float32(2.0),
            ),
        )
        outputs.append(backend.to_numpy(y))
    expected = dropout_mask_numpy(99, x.shape, 0.5) * 2.0
    for y in outputs:
        assert np.array_equal(y, expected)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_shard_of_the_batch_draws_the_whole_batchs_masks_for_its_samples(device, monkeypatch):
    """A data-parallel rank whose batch starts at sample 3 of the global batch (first=3) keeps
    and drops exactly what one process does for samples 3.., forward and backward."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    x = np.random.default_rng(0).standard_normal((8, 5, 3)).astype(np.float32)
    mdl.manual_seed(4)
    whole = mdl.tensor(x, requires_grad=True, device=device)
    F.dropout(whole, 0.5).sum().backward()
    mdl.manual_seed(4)  # every rank draws the same key
    part = mdl.tensor(x[3:], requires_grad=True, device=device)
    y = F.dropout(part, 0.5, first=3)
    y.sum().backward()
    np.testing.assert_array_equal(part.grad.numpy(), whole.grad.numpy()[3:])
    assert 0 < (part.grad.numpy() == 0).mean() < 1


def test_the_dropout_layer_passes_the_batchs_first_sample_on(monkeypatch):
    """nn.Dropout hands the position the loop gave it (Dropout.place, from the loader's
    Batch.first) to F.dropout: the layer draws the shard's part of the whole batch's mask."""
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    mdl.manual_seed(4)
    whole = F.dropout(mdl.tensor(x), 0.5).numpy()
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5))
    nn.Dropout.place(model, 3)
    assert model[1].first == 3
    mdl.manual_seed(4)
    np.testing.assert_array_equal(model[1](mdl.tensor(x[3:])).numpy(), whole[3:])
    nn.Dropout.place(model, 0)
    mdl.manual_seed(4)
    np.testing.assert_array_equal(model[1](mdl.tensor(x)).numpy(), whole)


def test_a_ranks_batches_carry_where_they_start_in_the_global_batch():
    """The DataLoader yields Batch pairs whose ``first`` is the rank's start in the global batch
    (np.array_split's shares: 9 -> 3 + 3 + 3, the last batch 5 -> 2 + 2 + 1); they unpack as
    (x, y). One process: always 0."""
    ds = data.ArrayDataset(np.zeros((23, 2), np.float32), np.arange(23))
    for rank, firsts in [(0, [0, 0, 0]), (1, [3, 3, 2]), (2, [6, 6, 4])]:
        loader = data.DataLoader(ds, 9, rank=rank, world_size=3, workers=0)
        batches = list(loader)
        assert [b.first for b in batches] == firsts == loader.shard_starts(0)
        x, y = batches[0]
        assert x.shape == (len(y), 2)
    assert {b.first for b in data.DataLoader(ds, 9, workers=2)} == {0}


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_16bit_dropout_scales_in_float32_and_rounds_once_on_both_paths(dtype_name, monkeypatch):
    """p = 0.4: 1 / (1 - p) is not a 16-bit number. The kernel multiplies in float32 and rounds
    once; the NumPy path must too (a pre-rounded 16-bit scale differed in ~1 element of 6)."""
    dtype = np.dtype(dtype_name) if dtype_name == "float16" else pytest.importorskip("ml_dtypes")
    dtype = np.dtype(getattr(dtype, "bfloat16", dtype))
    x = random((4, 257, 3)).astype(dtype)
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    results = []
    for device in ("cpu", "cuda"):
        mdl.manual_seed(9)
        t = mdl.tensor(x, requires_grad=True, device=device)
        y = F.dropout(t, 0.4)
        y.backward(mdl.tensor(x, device=device))
        results.append((y.numpy(), t.grad.numpy()))
    (y, dx), (y_gpu, dx_gpu) = results
    assert y.dtype == dtype and dx.dtype == dtype
    # equal values (a dropped negative element is -0.0 on the CPU, +0.0 from the kernel)
    assert np.array_equal(y, y_gpu) and np.array_equal(dx, dx_gpu)
    kept = y.astype(np.float32) != 0
    expected = (x.astype(np.float32) * np.float32(1 / 0.6)).astype(dtype)  # one rounding
    assert np.array_equal(y[kept].view(np.uint16), expected[kept].view(np.uint16))
