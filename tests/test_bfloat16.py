"""bfloat16 Tensors (ml_dtypes.bfloat16, minidl/dtypes.py): every op keeps the dtype, sums and
GEMMs accumulate in float32 and round once, and forward and gradients match PyTorch's bfloat16
on the CPU path and on the emulated GPU (docs/precision.md)."""

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import dtypes, train

pytest.importorskip("ml_dtypes")  # a checkout run without installing (the GPU machine) may lack it
BF16 = dtypes.require_bfloat16("tests/test_bfloat16.py")
ULP = 2.0**-7  # bfloat16's spacing relative to a value in [1, 2): 8 significant bits


@pytest.fixture(params=["cpu", "cuda"])
def device(request, monkeypatch):
    if request.param == "cuda":
        monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    return request.param


def bf(array, device="cpu", requires_grad=True):
    values = np.asarray(array, dtype=np.float32).astype(BF16)
    return mdl.tensor(values, requires_grad=requires_grad, device=device)


def f32(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t).astype(np.float32)


def test_bfloat16_is_a_floating_dtype():
    assert dtypes.kind(BF16) == "f" and dtypes.is_16bit(BF16) and np.dtype(BF16).kind == "V"
    assert mdl.tensor([1.0, 2.5], dtype="bfloat16").dtype == BF16
    assert mdl.tensor([1, 2]).astype(BF16).dtype == BF16
    x = bf([1.0, 2.0])
    assert x.requires_grad and float(x.sum().item()) == 3.0
    with pytest.raises(TypeError, match="share one dtype"):  # as float16 beside float32
        F.linear(x.reshape(1, 2), mdl.tensor(np.ones((3, 2), np.float32)))


def test_python_numbers_and_integer_tensors_keep_bfloat16():
    """NumPy widens bfloat16 to float32 beside a Python float; a minidl op rounds back once."""
    x = bf([1.0, 3.0, -2.0])
    results = [x * 0.1, x + 1.5, 0.5 - x, x / 3.0, x**2.0, x + mdl.tensor([1, 2, 3]), x.mean()]
    assert all(r.dtype == BF16 for r in results)
    # one rounding from float32: 3 * 0.1 = 0.3 -> bfloat16 0.30078125
    assert f32(results[0])[1] == np.float32(0.3).astype(BF16).astype(np.float32)
    total = results[0].sum() + results[1].sum() + results[6]
    total.backward()
    assert x.grad.dtype == BF16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_python_number_beside_a_16bit_tensor_is_computed_in_float32(dtype):
    """PyTorch's "opmath": x * 0.3 is x times the float32 0.3, rounded once (not times 0.3
    rounded to 16 bits first). The same as torch's mul and div; its CPU add and sub round the
    number to the tensor's dtype first, so there minidl can be 1 ulp closer to the exact sum."""
    dt = np.dtype(dtype)
    x = np.random.default_rng(0).standard_normal(2000).astype(np.float32).astype(dt)
    t = mdl.tensor(x, requires_grad=True)
    for y, exact in [
        (t * 0.3, x.astype(np.float32) * np.float32(0.3)),
        (t / 3.0, x.astype(np.float32) / np.float32(3.0)),
        (t + 0.7, x.astype(np.float32) + np.float32(0.7)),
        (2 - t, np.float32(2) - x.astype(np.float32)),
    ]:
        assert y.dtype == dt
        np.testing.assert_array_equal(f32(y), exact.astype(dt).astype(np.float32))
    (t * 0.3).sum().backward()
    assert t.grad.dtype == dt
    assert np.all(f32(t.grad) == np.float32(0.3).astype(dt).astype(np.float32))
    torch = pytest.importorskip("torch")
    theirs = torch.from_numpy(x.astype(np.float32)).to(getattr(torch, dtype))
    np.testing.assert_array_equal(f32(t * 0.3), (theirs * 0.3).float().numpy())
    np.testing.assert_array_equal(f32(t / 3.0), (theirs / 3.0).float().numpy())


def test_sums_accumulate_in_float32():
    """NumPy adds bfloat16 in bfloat16 (10,000 x 0.01 gives 4.0); minidl's sum gives 100."""
    ones = np.full(10_000, 0.01, dtype=np.float32).astype(BF16)
    assert float(ones.sum()) < 5  # the trap
    x = mdl.tensor(ones, requires_grad=True)
    assert abs(float(x.sum().item()) - 100.0) < 0.5
    # the bias gradient of a linear layer is such a sum over the batch
    w = bf(np.ones((1, 1)))
    b = bf(np.zeros(1))
    F.linear(mdl.tensor(np.ones((4096, 1), np.float32).astype(BF16)), w, b).sum().backward()
    assert float(b.grad.item()) == 4096.0


def test_matmul_is_float32_accumulation_rounded_once(device):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 300)).astype(np.float32).astype(BF16)
    b = rng.standard_normal((300, 5)).astype(np.float32).astype(BF16)
    y = mdl.tensor(a, device=device) @ mdl.tensor(b, device=device)
    expected = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32).astype(BF16)
    assert y.dtype == BF16
    np.testing.assert_allclose(f32(y), expected.astype(np.float32), rtol=ULP, atol=1e-6)


# ---- PyTorch's bfloat16, op by op ----------------------------------------------------------------
CASES = {
    "relu": ((2, 3, 4, 4),),
    "linear": ((6, 20), (5, 20), (5,)),
    "conv2d": ((2, 3, 9, 9), (4, 3, 3, 3), (4,)),
    "conv2d_groups": ((2, 4, 7, 7), (6, 2, 3, 3), (6,)),
    "max_pool2d": ((2, 3, 9, 9),),
    "local_response_norm": ((2, 7, 5, 5),),
    "batch_norm": ((4, 3, 5, 5), (3,), (3,)),
    "log_softmax": ((5, 10),),
    "softmax": ((5, 10),),
    "cross_entropy": ((6, 10),),
}


def call(f, name, args, lrn_alpha, cross_entropy):
    """One case through ``f``: minidl.functional or torch.nn.functional, which take the same
    arguments here but for LRN's alpha (PyTorch divides it by the size) and the loss's target."""
    if name == "local_response_norm":
        return f.local_response_norm(args[0], 5, lrn_alpha, 0.75, 2.0)
    if name == "cross_entropy":
        return cross_entropy(args[0])
    return {
        "relu": lambda: f.relu(*args),
        "linear": lambda: f.linear(*args),
        "conv2d": lambda: f.conv2d(*args, stride=1, padding=1),
        "conv2d_groups": lambda: f.conv2d(*args, stride=2, padding=1, groups=2),
        "max_pool2d": lambda: f.max_pool2d(args[0], 3, 2),
        "batch_norm": lambda: f.batch_norm(args[0], None, None, args[1], args[2], training=True),
        "log_softmax": lambda: f.log_softmax(args[0], dim=1),
        "softmax": lambda: f.softmax(args[0], dim=1),
    }[name]()


@pytest.mark.parametrize("name", sorted(CASES))
def test_ops_match_torch_bfloat16(name, device):
    """The same bfloat16 inputs and output gradient through minidl and PyTorch (CPU, bfloat16):
    outputs and every input gradient bfloat16, within 2 ulps plus a small absolute slack (the
    order of float32 sums differs, and a result near zero carries its inputs' absolute error)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(sorted(CASES).index(name))
    arrays = [rng.standard_normal(shape).astype(np.float32).astype(BF16) for shape in CASES[name]]
    mine = [mdl.tensor(a, requires_grad=True, device=device) for a in arrays]
    target = mdl.tensor(np.arange(6) % 10, device=device)
    # the logits cast up for the loss, as fit does (Precision.loss_input)
    y = call(F, name, mine, 1e-2, lambda z: F.cross_entropy(z.astype(np.float32), target))
    dy = rng.standard_normal(y.shape).astype(np.float32).astype(y.dtype)
    y.backward(dy)
    # PyTorch has no bfloat16 LRN on the CPU: its float32 LRN of the same values, which is what
    # ours computes before it rounds
    to = torch.float32 if name == "local_response_norm" else torch.bfloat16
    theirs_in = [torch.from_numpy(a.astype(np.float32)).to(to).requires_grad_() for a in arrays]
    tf = torch.nn.functional
    t = call(
        tf, name, theirs_in, 5 * 1e-2, lambda z: tf.cross_entropy(z.float(), torch.arange(6) % 10)
    )
    t.backward(torch.from_numpy(dy.astype(np.float32)).to(t.dtype))
    expected_dtype = np.float32 if name == "cross_entropy" else BF16
    assert y.dtype == expected_dtype
    scale = max(1.0, float(np.abs(f32(t.detach().float())).max()))
    np.testing.assert_allclose(
        f32(y), t.detach().float().numpy(), rtol=2 * ULP, atol=2 * ULP * scale / 4, err_msg=name
    )
    for i, (m, th) in enumerate(zip(mine, theirs_in)):
        assert m.grad.dtype == BF16, (name, i)
        g = th.grad.float().numpy()
        scale = max(1.0, float(np.abs(g).max()))
        np.testing.assert_allclose(
            f32(m.grad), g, rtol=2 * ULP, atol=2 * ULP * scale / 4, err_msg=f"{name} input {i}"
        )


def test_dropout_drops_the_same_elements_in_bfloat16(device):
    x = np.ones((4, 64), np.float32)
    mdl.manual_seed(3)
    full = F.dropout(mdl.tensor(x, device=device), 0.5)
    mdl.manual_seed(3)
    half = F.dropout(mdl.tensor(x.astype(BF16), device=device), 0.5)
    assert half.dtype == BF16
    np.testing.assert_array_equal(f32(half), f32(full))


def test_a_bfloat16_model_checkpoints_exactly(tmp_path):
    mdl.manual_seed(0)
    model = mdl.nn.Sequential(mdl.nn.Linear(5, 4), mdl.nn.ReLU(), mdl.nn.Linear(4, 2))
    from minidl import precision

    precision.Precision("bf16").cast_model(model)
    train.save_checkpoint(tmp_path / "c.npz", model, None, epoch=1)
    other = mdl.nn.Sequential(mdl.nn.Linear(5, 4), mdl.nn.ReLU(), mdl.nn.Linear(4, 2))
    precision.Precision("bf16").cast_model(other)
    train.load_checkpoint(tmp_path / "c.npz", other, None, log=lambda message: None)
    for a, b in zip(model.parameters(), other.parameters()):
        assert b.dtype == BF16
        assert np.array_equal(a.numpy().view(np.uint16), b.numpy().view(np.uint16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_numpy_path_of_a_16bit_input_is_the_float32_computation_rounded_once(dtype):
    """LRN (forward and backward) and conv's input gradient (col2im's overlapping sums) on the
    NumPy path compute 16-bit input in float32, as their kernels do: exactly the float32 results
    from the same values, rounded once. Step by step in 16 bits they are not (LRN differed in
    most elements)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32).astype(dt)
    w = rng.standard_normal((4, 8, 5, 5)).astype(np.float32).astype(dt)

    def run(fn, arrays):
        ts = [mdl.tensor(a, requires_grad=True) for a in arrays]
        y = fn(*ts)
        dy = np.ones(y.shape, dtype=y.dtype)
        y.backward(dy)
        return y.numpy(), [t.grad.numpy() for t in ts]

    def lrn(t):
        return F.local_response_norm(t, 5, 1e-2, 0.75, 2.0)

    def conv(t, k):
        return F.conv2d(t, k, None, 1, 2)

    y16, (dx16,) = run(lrn, [x])
    y32, (dx32,) = run(lrn, [x.astype(np.float32)])
    np.testing.assert_array_equal(f32(y16), f32(y32.astype(dt)))
    np.testing.assert_array_equal(f32(dx16), f32(dx32.astype(dt)))
    _, (dx16, _) = run(conv, [x, w])
    _, (dx32, _) = run(conv, [x.astype(np.float32), w.astype(np.float32)])
    np.testing.assert_array_equal(f32(dx16), f32(dx32.astype(dt)))
