"""PyTorch's semantics at the edges a user's habits reach: dims, 0-d tensors, empty axes, type
promotion with Python scalars, pow at its singular points, advanced indexing, dtypes.

Each test is named after the PyTorch behaviour it checks and compares with PyTorch in float64
where PyTorch has the behaviour; ops with a GPU branch run on both devices (the GPU branch under
the kernel emulator).
"""

import operator

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import nn
from minidl.autograd import Function
from minidl.ops.activation import bias_relu
from tests.helpers import forward_backward, random, torch_forward_backward

torch = pytest.importorskip("torch")

DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    """Both branches of an op: "cuda" runs the GPU branch under the kernel emulator."""
    if request.param == "cuda":
        monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    return request.param


def assert_same(ours, expected, what=""):
    """Values (NaN and inf where PyTorch has them) and shapes equal to PyTorch's in float64."""
    ours, expected = np.asarray(ours), np.asarray(expected)
    assert ours.shape == expected.shape, f"{what}: shape {ours.shape}, PyTorch {expected.shape}"
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12, err_msg=what)


def compare_with_torch(ours_fn, torch_fn, arrays, device="cpu"):
    """Forward and every input gradient of ours_fn against torch_fn, in float64."""
    y, grads = forward_backward(ours_fn, arrays, device=device)
    y_ref, grads_ref = torch_forward_backward(torch, torch_fn, arrays)
    assert_same(y, y_ref, "forward")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert_same(g, g_ref, f"gradient of input {i}")


# ---- matmul --------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    pytest.param((3,), (3,), id="1d@1d-is-0d"),
    pytest.param((3,), (3, 4), id="1d@2d"),
    pytest.param((2, 3), (3,), id="2d@1d"),
    pytest.param((5, 2, 3), (3,), id="batched@1d"),
    pytest.param((3,), (5, 3, 4), id="1d@batched"),
    pytest.param((5, 2, 3), (3, 4), id="batched@2d"),
    pytest.param((2, 3), (5, 3, 4), id="2d@batched"),
    pytest.param((5, 1, 2, 3), (4, 3, 2), id="broadcast-batches"),
]


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES)
def test_matmul_follows_torch_matmul_for_vectors_and_batches(a_shape, b_shape, device):
    compare_with_torch(
        lambda a, b: a @ b, lambda a, b: a @ b, [random(a_shape), random(b_shape, 1)], device
    )


# ---- dims ----------------------------------------------------------------------------------------
OUT_OF_RANGE = [
    pytest.param(lambda x: x.sum(3), 3, id="sum"),
    pytest.param(lambda x: x.sum(-4), -4, id="sum-negative"),
    pytest.param(lambda x: x.sum(dim=(0, 3)), 3, id="sum-tuple"),
    pytest.param(lambda x: x.mean(3), 3, id="mean"),
    pytest.param(lambda x: x.max(3), 3, id="max"),
    pytest.param(lambda x: x.argmax(3), 3, id="argmax"),
    pytest.param(lambda x: x.flatten(3), 3, id="flatten"),
    pytest.param(lambda x: x.transpose(0, 3), 3, id="transpose"),
    pytest.param(lambda x: x.permute(0, 1, 3), 3, id="permute"),
    pytest.param(lambda x: F.softmax(x, 3), 3, id="softmax"),
    pytest.param(lambda x: F.log_softmax(x, -4), -4, id="log_softmax"),
    pytest.param(lambda x: x.size(3), 3, id="size"),
]


@pytest.mark.parametrize("fn, got", OUT_OF_RANGE)
def test_dim_out_of_range_raises_index_error_as_torch(fn, got):
    message = f"Dimension out of range (expected to be in range of [-3, 2], but got {got})"
    with pytest.raises(IndexError) as theirs:
        torch.tensor(random((2, 3, 4))).sum(got)
    assert str(theirs.value) == message
    with pytest.raises(IndexError) as ours:
        fn(mdl.tensor(random((2, 3, 4))))
    assert message in str(ours.value)


def test_a_dim_repeated_in_a_reduction_raises_as_torch():
    x = mdl.tensor(random((2, 3, 4)))
    with pytest.raises(RuntimeError, match="dim 0 appears multiple times in the list of dims"):
        x.sum((0, -3))
    with pytest.raises(RuntimeError, match="dim 0 appears multiple times"):
        torch.tensor(random((2, 3, 4))).sum((0, -3))


SCALAR_OPS = [
    pytest.param(lambda s: s.sum(0), id="sum(0)"),
    pytest.param(lambda s: s.sum(-1), id="sum(-1)"),
    pytest.param(lambda s: s.sum(dim=0, keepdim=True), id="sum(0,keepdim)"),
    pytest.param(lambda s: s.mean(0), id="mean(0)"),
    pytest.param(lambda s: s.flatten() * 3.0, id="flatten"),
    pytest.param(lambda s: s.transpose(0, -1) * 3.0, id="transpose(0,-1)"),
    pytest.param(lambda s: s.permute(()) * 3.0, id="permute(())"),
]


@pytest.mark.parametrize("fn", SCALAR_OPS)
def test_0d_tensor_accepts_dims_0_and_minus_1_as_torch(fn, device):
    compare_with_torch(fn, fn, [np.array(1.5)], device)


def test_0d_tensor_max_over_dim_0_as_torch_amax(device):
    compare_with_torch(lambda s: s.max(-1), lambda s: s.amax(-1), [np.array(1.5)], device)


SCALAR_LAYERS = [
    pytest.param(lambda s: F.softmax(s, 0), lambda s: torch.softmax(s, 0), id="softmax(0)"),
    pytest.param(lambda s: F.softmax(s, -1), lambda s: torch.softmax(s, -1), id="softmax(-1)"),
    pytest.param(
        lambda s: F.log_softmax(s, 0), lambda s: torch.log_softmax(s, 0), id="log_softmax"
    ),
    pytest.param(F.relu, torch.relu, id="relu"),
    pytest.param(
        lambda s: F.dropout(s, 0.5, mask=np.array(True)),
        lambda s: s * 2.0,
        id="dropout-mask",
    ),
]


@pytest.mark.parametrize("ours, theirs", SCALAR_LAYERS)
def test_0d_tensor_through_layers_keeps_shape_as_torch(ours, theirs, device):
    compare_with_torch(ours, theirs, [np.array(1.5)], device)


def test_0d_dropout_keeps_its_shape_on_both_branches(device):
    s = mdl.tensor(np.array(1.5), requires_grad=True, device=device)
    y = F.dropout(s, 0.5)
    assert y.shape == () == tuple(torch.nn.functional.dropout(torch.tensor(1.5)).shape)
    assert y.item() in (0.0, 3.0)
    y.backward()
    assert s.grad.shape == () and s.grad.item() == y.item() / 1.5


def test_softmax_dim_out_of_range_on_a_0d_tensor_raises_as_torch():
    with pytest.raises(IndexError, match=r"range of \[-1, 0\], but got 1"):
        F.softmax(mdl.tensor(np.array(1.5)), 1)
    with pytest.raises(IndexError, match=r"range of \[-1, 0\], but got 1"):
        torch.softmax(torch.tensor(1.5), 1)


def test_len_of_a_0d_tensor_raises_type_error_as_torch():
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(torch.tensor(1.0))
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(mdl.tensor(1.0))


def test_flatten_start_after_end_raises_as_torch():
    with pytest.raises(RuntimeError, match="start_dim cannot come after end_dim"):
        mdl.tensor(random((2, 3))).flatten(1, 0)


# ---- empty axes ----------------------------------------------------------------------------------
EMPTY = [
    pytest.param((0, 3), 0, id="(0,3)-dim0"),
    pytest.param((0, 3), 1, id="(0,3)-dim1"),
    pytest.param((0, 3), None, id="(0,3)-all"),
    pytest.param((2, 0, 3), (0, 1), id="(2,0,3)-dims01"),
]


@pytest.mark.parametrize("shape, dim", EMPTY)
def test_mean_over_an_empty_dim_is_nan_as_torch(shape, dim, device):
    x = np.ones(shape)
    ours = mdl.tensor(x, device=device)
    theirs = torch.tensor(x)
    expected = theirs.mean() if dim is None else theirs.mean(dim)
    assert_same((ours.mean() if dim is None else ours.mean(dim)).numpy(), expected.numpy())


def test_max_over_an_empty_dim_raises_index_error_as_torch():
    with pytest.raises(IndexError, match="Expected reduction dim 0 to have non-zero size"):
        torch.ones(0, 3).amax(0)
    with pytest.raises(IndexError, match="max: cannot reduce over a dimension of size 0"):
        mdl.tensor(np.ones((0, 3))).max(0)
    assert mdl.tensor(np.ones((0, 3))).max(1).shape == (0,) == tuple(torch.ones(0, 3).amax(1).shape)


def test_mean_of_an_integer_tensor_is_refused_as_torch():
    with pytest.raises(TypeError, match="mean: .*int64"):
        mdl.tensor([1, 2]).mean()


def test_local_response_norm_on_an_empty_batch_is_empty(device):
    x = mdl.tensor(np.zeros((0, 3, 4, 4)), requires_grad=True, device=device)
    y = F.local_response_norm(x, size=3, alpha=1.0)
    assert y.shape == (0, 3, 4, 4)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 4, 4)


def test_bias_relu_on_an_empty_batch_is_empty(device):
    x = mdl.tensor(np.zeros((0, 3, 4)), requires_grad=True, device=device)
    b = mdl.tensor(np.ones(3), requires_grad=True, device=device)
    y = bias_relu(x, b)
    assert y.shape == (0, 3, 4)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 4) and b.grad.numpy().tolist() == [0.0, 0.0, 0.0]


# ---- type promotion with Python scalars ----------------------------------------------------------
# Named examples on an int64 tensor; the sweeps below cover every dtype.
PROMOTION = [
    pytest.param(lambda i: i + 0.5, id="int+float"),
    pytest.param(lambda i: 0.5 + i, id="float+int"),
    pytest.param(lambda i: i - 0.5, id="int-float"),
    pytest.param(lambda i: 0.5 - i, id="float-int"),
    pytest.param(lambda i: i * 0.5, id="int*float"),
    pytest.param(lambda i: i / 2, id="int/int-is-float"),
    pytest.param(lambda i: 3 / i, id="int/int-reflected"),
    pytest.param(lambda i: i / 2.0, id="int/float"),
    pytest.param(lambda i: i**0.5, id="int**float"),
    pytest.param(lambda i: i**-1.0, id="int**negative-float"),
    pytest.param(lambda i: 2.0**i, id="float**int"),
    pytest.param(lambda i: 2**i, id="int**int-stays-int"),
    pytest.param(lambda i: i + 1, id="int+int-stays-int"),
    pytest.param(lambda i: i * True, id="int*bool-stays-int"),
    pytest.param(lambda i: (i > 1) + 1, id="bool+int-is-int64"),
    pytest.param(lambda i: (i > 1) + 0.5, id="bool+float-is-float32"),
    pytest.param(lambda i: (i > 1) * True, id="bool*bool-stays-bool"),
    pytest.param(lambda i: i * np.float32(0.5), id="int*numpy-float-is-float32"),
    pytest.param(lambda i: i.exp(), id="exp-of-int-is-float32"),
    pytest.param(lambda i: i.log(), id="log-of-int-is-float32"),
]


@pytest.mark.parametrize("fn", PROMOTION)
def test_python_scalars_promote_as_torch(fn, device):
    values = np.array([1, 2, 3])
    ours = fn(mdl.tensor(values, device=device))
    theirs = fn(torch.tensor(values))
    assert ours.dtype == np.dtype(str(theirs.dtype).removeprefix("torch."))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)  # float32 exp: 1 ulp


DTYPES = ["bool", "uint8", "int8", "int32", "int64", "float16", "float32", "float64"]
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
BINARY.update({"div": operator.truediv, "pow": operator.pow})
# Not covered on purpose: a bool tensor or a bool to a power (PyTorch gives bool or refuses; we
# give NumPy's int8); two different float dtypes are refused by name (the test after these).


def _values(dtype):
    return np.array([True, False, True]) if dtype == "bool" else np.array([1, 2, 3]).astype(dtype)


def _outcome(op, a, b):
    """op(a, b) as (dtype name, float64 values), or ("error", None) when it is refused."""
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # x / 0 is inf, as in PyTorch
            result = op(a, b)
    except (TypeError, ValueError, RuntimeError):
        return "error", None
    return str(result.dtype).removeprefix("torch."), result.numpy().astype(np.float64)


def _assert_same_outcome(op, ours, theirs, case):
    (ours_dtype, ours_values), (dtype, values) = _outcome(op, *ours), _outcome(op, *theirs)
    assert ours_dtype == dtype, f"{case}: ours {ours_dtype}, PyTorch {dtype}"
    if values is not None:
        np.testing.assert_allclose(ours_values, values, rtol=1e-3, err_msg=case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_python_scalar_and_tensor_dtype_promotes_as_torch(dtype):
    ours, theirs = mdl.tensor(_values(dtype)), torch.tensor(_values(dtype))
    for scalar in [True, 2, -3, 0, 0.5, -1.5]:
        for name, op in BINARY.items():
            if name == "pow" and (dtype == "bool" or scalar is True):
                continue
            case = f"{dtype} {name} {scalar!r}"
            _assert_same_outcome(op, (ours, scalar), (theirs, scalar), case)
            _assert_same_outcome(op, (scalar, ours), (scalar, theirs), f"{case}, reflected")


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensors_of_two_dtype_categories_promote_as_torch(dtype):
    for other in DTYPES:
        two_floats = dtype.startswith("float") and other.startswith("float") and dtype != other
        ours = mdl.tensor(_values(dtype)), mdl.tensor(_values(other))
        theirs = torch.tensor(_values(dtype)), torch.tensor(_values(other))
        for name, op in BINARY.items():
            if two_floats or (name == "pow" and "bool" in (dtype, other)):
                continue
            _assert_same_outcome(op, ours, theirs, f"{dtype} {name} {other}")


def test_a_list_of_floats_beside_an_integer_tensor_is_not_truncated():
    # PyTorch refuses tensor + list; minidl takes the list like a Python number of its category
    y = mdl.tensor([1, 2, 3]) + [0.5, 1.5, 2.5]
    assert y.dtype == np.float32 and y.numpy().tolist() == [1.5, 3.5, 5.5]
    assert (mdl.tensor([1.0, 2.0]) * [2, 3]).dtype == np.float32


def test_integer_to_a_negative_integer_power_is_refused_as_torch():
    with pytest.raises(ValueError, match="Integers to negative integer powers are not allowed"):
        mdl.tensor([1, 2]) ** -1


def test_tensors_of_two_float_dtypes_are_refused_by_name():
    # PyTorch promotes float32 + float64 to float64; minidl refuses it, naming both dtypes
    # (DESIGN.md: a dtype an op cannot take is refused by name, never converted silently).
    with pytest.raises(TypeError, match=r"Add: .*\['float32', 'float64'\]"):
        mdl.tensor(np.zeros(2, np.float32)) + mdl.tensor(np.zeros(2))


def test_float_tensor_gradient_through_an_int_float_product():
    x = mdl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    i = mdl.tensor([3, 4])
    (x * i).sum().backward()
    assert (x * i).dtype == np.float64
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])


# ---- pow at its singular points ------------------------------------------------------------------
BASES = np.array([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5])
EXPONENTS = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0])


def test_pow_gradients_match_torch_for_every_sign_of_base_and_exponent(device):
    a, b = np.meshgrid(BASES, EXPONENTS, indexing="ij")
    compare_with_torch(lambda a, b: a**b, lambda a, b: a**b, [a, b], device)


@pytest.mark.parametrize("exponent", [0, 0.5, 1, 2, -1, 3, -2, 2.5])
def test_pow_with_a_python_exponent_matches_torch(exponent):
    compare_with_torch(lambda a: a**exponent, lambda a: a**exponent, [BASES])


@pytest.mark.parametrize("base", [0.0, 2.0, 0.5, -2.0])
def test_python_base_to_a_tensor_power_matches_torch(base):
    compare_with_torch(lambda b: base**b, lambda b: base**b, [EXPONENTS])


def test_pow_at_zero_base_matches_torch_conventions():
    a = np.zeros(5)
    b = np.array([0.0, 0.5, 1.0, 2.0, -1.0])
    compare_with_torch(lambda a, b: a**b, lambda a, b: a**b, [a, b])
    ours = mdl.tensor(np.array(0.0), requires_grad=True)
    (ours**0).backward()
    assert ours.grad.item() == 0.0  # d(x^0)/dx = 0 at x = 0, not 0 * 0^-1 = NaN


# ---- advanced indexing ---------------------------------------------------------------------------
INDICES = [
    pytest.param((0, slice(None), [1, 2]), id="int,:,list"),
    pytest.param((slice(None), 0, [1, 2]), id=":,int,list"),
    pytest.param(([0], slice(None), [1, 2]), id="list,:,list"),
    pytest.param((0, slice(None), [1, 2], slice(None)), id="int,:,list,:"),
    pytest.param((slice(None), 0, slice(None), [1, 2]), id=":,int,:,list"),
    pytest.param((0, [1, 2]), id="int,list"),
    pytest.param((0, [1, 2], slice(None), [0, 1]), id="int,list,:,list"),
    pytest.param((Ellipsis, 0, [1, 2]), id="...,int,list"),
    pytest.param((0, Ellipsis, [1, 2]), id="int,...,list"),
    pytest.param((0, None, slice(None), [1, 2]), id="int,None,:,list"),
    pytest.param((slice(None), [0], 1, [1, 2]), id=":,list,int,list"),
    pytest.param(([0], slice(None), 1), id="list,:,int"),
    pytest.param(([1, 0], 0, slice(None), [1, 2]), id="list,int,:,list"),
    pytest.param((-1, slice(1, None), [[1, 2], [0, 1]]), id="negative-int,slice,2d-list"),
    pytest.param((np.int64(1), slice(None), np.array([3, 3, 0])), id="numpy-int,:,repeated"),
    pytest.param((0, [True, False, True], 1), id="int,bool-mask,int"),
    pytest.param((1, slice(None, None, 2), 2), id="basic-only"),
    pytest.param(([1, 0], [2, 0]), id="lists-only"),
]


def _torch_index(index):
    return tuple(torch.tensor(i) if isinstance(i, (list, np.ndarray)) else i for i in index)


@pytest.mark.parametrize("index", INDICES)
def test_advanced_indexing_follows_torch_axis_order(index, device):
    x = random((2, 3, 4, 5))
    compare_with_torch(lambda t: t[index], lambda t: t[_torch_index(index)], [x], device)


def random_index(rng, shape):
    """A random mix of integers, slices, lists, 2-D index arrays, None and one Ellipsis."""
    index, dim = [], 0
    for _ in range(rng.integers(1, 5)):
        kind = rng.integers(0, 6) if dim < len(shape) else 4
        if kind == 0:
            index.append(int(rng.integers(-shape[dim], shape[dim])))
        elif kind == 1:
            index.append(slice(int(rng.integers(0, 2)), None, int(rng.integers(1, 3))))
        elif kind == 2:
            index.append([int(v) for v in rng.integers(0, shape[dim], rng.integers(1, 4))])
        elif kind == 3:
            index.append(rng.integers(0, shape[dim], (2, 2)))
        elif kind == 4:
            index.append(None)
        elif not any(i is Ellipsis for i in index):
            index.append(Ellipsis)
            dim = len(shape) - 1
        dim += kind in (0, 1, 2, 3)
    return tuple(index)


def test_random_mixed_indices_follow_torch():
    rng = np.random.default_rng(0)
    x = random((3, 4, 5, 6))
    for _ in range(300):
        index = random_index(rng, x.shape)
        try:
            torch.tensor(x)[_torch_index(index)]
        except IndexError:
            continue  # an index PyTorch refuses (e.g. two Ellipsis-free lists of other lengths)
        compare_with_torch(lambda t: t[index], lambda t: t[_torch_index(index)], [x])  # noqa: B023


def test_a_0d_integer_index_counts_as_an_integer_as_torch():
    x = random((2, 3, 4))
    ours = mdl.tensor(x)[mdl.tensor(np.array(0)), :, [1, 2]]
    theirs = torch.tensor(x)[torch.tensor(0), :, [1, 2]]
    assert_same(ours.numpy(), theirs.numpy())


# ---- dtypes --------------------------------------------------------------------------------------
ARRAYS = [
    pytest.param(np.ones(2, np.float16), id="float16"),
    pytest.param(np.ones(2, np.float32), id="float32"),
    pytest.param(np.ones(2, np.float64), id="float64"),
    pytest.param(np.ones(2, np.int32), id="int32"),
    pytest.param(np.ones(2, np.uint8), id="uint8"),
    pytest.param(np.ones(2, bool), id="bool"),
    pytest.param([1.0, 2.0], id="python-floats"),
    pytest.param([1, 2], id="python-ints"),
    pytest.param(np.float64(2.0), id="numpy-float64-scalar"),
    pytest.param(2.5, id="python-float"),
]


@pytest.mark.parametrize("data", ARRAYS)
def test_tensor_keeps_the_dtype_torch_tensor_keeps(data):
    expected = str(torch.tensor(data).dtype).removeprefix("torch.")
    assert mdl.tensor(data).dtype == np.dtype(expected)


def test_tensor_of_non_numbers_is_refused_by_name():
    with pytest.raises(TypeError, match="tensor: data must be booleans, integers or floats"):
        mdl.tensor(np.array(["a", "b"]))
    with pytest.raises(TypeError, match=r"got dtype object \(a list of Tensors\?"):
        mdl.tensor([mdl.tensor(1.0), mdl.tensor(2.0)])


def test_float16_gradients_stay_float16():
    x = mdl.tensor(np.array([1.0, 2.0], np.float16), requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.dtype == np.float16
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])


FLOAT_ONLY = [
    pytest.param(lambda x: F.dropout(x, 0.5), "dropout", id="dropout"),
    pytest.param(lambda x: F.local_response_norm(x, 3), "local_response_norm", id="lrn"),
    pytest.param(lambda x: F.softmax(x, 1), "softmax", id="softmax"),
    pytest.param(lambda x: F.log_softmax(x, 1), "log_softmax", id="log_softmax"),
    pytest.param(lambda x: F.conv2d(x, x[:1]), "conv2d", id="conv2d"),
    pytest.param(lambda x: F.linear(x, x[0, 0]), "linear", id="linear"),
]


@pytest.mark.parametrize("fn, name", FLOAT_ONLY)
def test_integer_input_to_a_floating_point_op_is_refused_by_name(fn, name, device):
    x = mdl.tensor(np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4), device=device)
    with pytest.raises(TypeError, match=rf"^{name}: .*int64.*float32"):
        fn(x)


def test_relu_of_an_integer_tensor_stays_integer_as_torch_on_the_cpu():
    x = np.array([-2, 0, 3])
    ours = F.relu(mdl.tensor(x))
    theirs = torch.relu(torch.tensor(x))
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_relu_of_an_integer_tensor_on_the_gpu_branch_names_the_kernel(monkeypatch):
    # our kernels are instantiated for floating-point types only: refused by name, not KeyError
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    with pytest.raises(TypeError, match=r"relu_forward \(activation\): no kernel instance.*int64"):
        F.relu(mdl.tensor(np.array([-2, 0, 3]), device="cuda"))


def test_a_kernel_launch_with_a_dtype_it_has_no_instance_for_names_the_kernel(monkeypatch):
    from minidl import cuda

    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    x = np.zeros(4, np.int64)
    with pytest.raises(TypeError, match=r"relu_forward \(activation\): .* int64; .* float32"):
        cuda.launch("activation", "relu_forward", x.dtype, (1,), (32,), (x, x, cuda.i64(4)))


def test_a_launch_outside_a_files_minidl_types_names_the_types_it_has(monkeypatch, tmp_path):
    from minidl import cuda

    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    source = tmp_path / "twice.cu"
    source.write_text(
        '#include "common.cuh"\n'
        "// minidl-types: float\n"
        "template <typename T>\n"
        "__global__ void twice(const T* x, T* y, long long total) {\n"
        "    FOR_EACH_INDEX(i, total) { y[i] = x[i] + x[i]; }\n"
        "}\n"
    )
    x, y = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    cuda.launch(source, "twice", x.dtype, (1,), (32,), (x, y, cuda.i64(4)))
    np.testing.assert_array_equal(y, [0, 2, 4, 6])
    x64 = x.astype(np.float64)
    with pytest.raises(
        TypeError, match=r"twice .*no kernel instance for dtype float64; .* float32$"
    ):
        cuda.launch(source, "twice", x64.dtype, (1,), (32,), (x64, x64, cuda.i64(4)))


class Twice(Function):
    @staticmethod
    def forward(ctx, x):
        return mdl.tensor(x * 2)  # a Tensor, as a PyTorch Function's forward returns

    @staticmethod
    def backward(ctx, dy):
        return dy * 2


class NoBackward(Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2


class ReturnsATuple(Function):
    @staticmethod
    def forward(ctx, x):
        return x, x


class Halve(Function):
    dtype_kinds = "f"
    public_name = "halve_it"

    @staticmethod
    def forward(ctx, x):
        return x / 2


def test_a_function_refusing_integers_is_named_by_its_public_name():
    with pytest.raises(TypeError, match="^halve_it: got dtype int32; halve_it takes floating"):
        Halve.apply(mdl.tensor(np.ones(2, np.int32)))
    assert Halve.apply(mdl.tensor(np.ones(2))).numpy().tolist() == [0.5, 0.5]


def test_custom_function_forward_may_return_a_tensor_as_in_torch():
    x = mdl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = Twice.apply(x)
    assert isinstance(y.data, np.ndarray) and y.dtype == np.float64
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_custom_function_forward_returning_something_else_is_refused_by_name():
    with pytest.raises(TypeError, match="ReturnsATuple.forward must return one array"):
        ReturnsATuple.apply(mdl.tensor(np.ones(2)))


def test_custom_function_without_backward_says_so_by_name():
    x = mdl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = NoBackward.apply(x)
    with pytest.raises(NotImplementedError, match=r"NoBackward has no backward\(ctx, dy\)"):
        y.sum().backward()


# ---- layers: constructor checks and state dicts -------------------------------------------------
BAD_LAYERS = [
    pytest.param(lambda: nn.Conv2d(3, 4, 0), "Conv2d: kernel_size", id="conv-kernel-0"),
    pytest.param(lambda: nn.Conv2d(3, 4, (3, 0)), "Conv2d: kernel_size", id="conv-kernel-(3,0)"),
    pytest.param(lambda: nn.Conv2d(0, 4, 3), "Conv2d: in_channels", id="conv-in-0"),
    pytest.param(lambda: nn.Conv2d(3, 0, 3), "Conv2d: out_channels", id="conv-out-0"),
    pytest.param(lambda: nn.Conv2d(3.0, 4, 3), "Conv2d: in_channels", id="conv-in-float"),
    pytest.param(lambda: nn.Conv2d(4, 4, 3, groups=0), "Conv2d: groups", id="conv-groups-0"),
    pytest.param(lambda: nn.Linear(0, 4), "Linear: in_features", id="linear-in-0"),
    pytest.param(lambda: nn.Linear(3, -1), "Linear: out_features", id="linear-out--1"),
]


@pytest.mark.parametrize("make, message", BAD_LAYERS)
def test_layer_sizes_below_one_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_load_state_dict_takes_tensors_as_torch():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {name: p for name, p in source.named_parameters()}  # Tensors, as torch's state_dict
    target.load_state_dict(state)
    for (_, p), (_, q) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
        assert p.data is not q.data  # copied, not shared


# ---- truth value and Python scalars --------------------------------------------------------------
@pytest.mark.parametrize("values", [[False], [True], 0.0, 2.5, [[3]]])
def test_bool_of_a_one_element_tensor_is_its_value_as_torch(values):
    assert bool(mdl.tensor(values)) == bool(torch.tensor(values))


@pytest.mark.parametrize(
    "values, message",
    [
        ([1.0, 2.0], "Boolean value of Tensor with more than one value is ambiguous"),
        (np.zeros((0,)), "Boolean value of Tensor with no values is ambiguous"),
    ],
)
def test_bool_of_other_tensors_is_ambiguous_as_torch(values, message):
    for make in (torch.tensor, mdl.tensor):
        with pytest.raises(RuntimeError, match=message):
            bool(make(values))
    a, b = mdl.tensor([1.0, 2.0]), mdl.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(a == b)


def test_comparing_a_scalar_loss_in_an_if_works_as_torch():
    loss = (mdl.tensor([0.1, 0.2], requires_grad=True) ** 2).sum()
    assert loss < 0.5
    assert not loss > 0.5


@pytest.mark.parametrize("convert", [float, int])
def test_float_and_int_of_one_element_tensors_as_torch(convert):
    for values in (2.75, [2.75], [[-3.5]], [7]):
        ours, theirs = convert(mdl.tensor(values)), convert(torch.tensor(values))
        assert ours == theirs and type(ours) is type(theirs)
    for make in (torch.tensor, mdl.tensor):
        with pytest.raises(ValueError, match="only one element tensors can be converted"):
            convert(make([1.0, 2.0]))


def test_format_of_a_0d_tensor_formats_its_value_as_torch():
    assert f"{mdl.tensor(2.5):.3f}" == f"{torch.tensor(2.5):.3f}" == "2.500"
    loss = (mdl.tensor([0.5], requires_grad=True) * 3).sum()
    assert f"loss {loss:.2f}" == "loss 1.50"
    for make in (torch.tensor, mdl.tensor):
        with pytest.raises(TypeError, match="unsupported format string"):
            f"{make([1.0]):.3f}"
    assert f"{mdl.tensor([1.0])}" == str(mdl.tensor([1.0]))


# ---- in-place operators --------------------------------------------------------------------------
INPLACE = [operator.iadd, operator.isub, operator.imul, operator.itruediv]


@pytest.mark.parametrize("op", INPLACE)
def test_in_place_operators_update_the_array_as_torch(op, device):
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = np.array([0.5, 2.0, -1.0])
    ours, theirs = mdl.tensor(a, device=device), torch.tensor(a)
    same = ours
    ours = op(ours, mdl.tensor(b, device=device))
    theirs = op(theirs, torch.tensor(b))
    assert ours is same
    ours = op(ours, 2)
    theirs = op(theirs, 2)
    assert_same(ours.numpy(), theirs.numpy(), op.__name__)


@pytest.mark.parametrize(
    "call",
    [
        lambda t, o: t.add_(o),
        lambda t, o: t.add_(o, alpha=-0.5),
        lambda t, o: t.sub_(o, alpha=2),
        lambda t, o: t.mul_(o),
        lambda t, o: t.div_(o),
    ],
    ids=["add_", "add_-alpha", "sub_-alpha", "mul_", "div_"],
)
def test_in_place_methods_as_torch(call, device):
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = np.array([0.5, 2.0, -1.0])
    ours, theirs = mdl.tensor(a, device=device), torch.tensor(a)
    assert call(ours, mdl.tensor(b, device=device)) is ours
    call(theirs, torch.tensor(b))
    assert_same(ours.numpy(), theirs.numpy())
    w = mdl.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        call(w, 2.0)


def test_in_place_on_a_leaf_that_requires_grad_is_refused_as_torch():
    message = "a leaf Variable that requires grad is being used in an in-place operation."
    for make in (torch.tensor, mdl.tensor):
        w = make([1.0, 2.0], requires_grad=True)
        for op in INPLACE:
            with pytest.raises(RuntimeError, match=message):
                op(w, 2.0)
        with pytest.raises(RuntimeError, match=message):
            w.zero_()
    with mdl.no_grad():
        w *= 2.0
    np.testing.assert_allclose(w.numpy(), [2.0, 4.0])


def test_in_place_results_that_do_not_fit_are_refused_as_torch():
    for make in (torch.tensor, mdl.tensor):
        with pytest.raises(RuntimeError, match="can't be cast to the desired output type"):
            i = make([1, 2])
            i += 0.5
        with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
            x = make([1.0, 2.0])
            x += make([[1.0, 2.0], [3.0, 4.0]])


def test_in_place_on_a_tensor_inside_a_graph_joins_the_graph_as_torch():
    """(more cases in tests/test_versions.py)"""
    grads = []
    for make in (mdl.tensor, torch.tensor):
        x = make([1.0, 2.0], requires_grad=True)
        y = x * 2
        y += 1.0
        (y * y).sum().backward()
        grads.append(np.asarray(x.grad.numpy()))
    assert_same(*grads)


def test_zero_copy_and_fill_as_torch(device):
    ours = mdl.tensor(np.arange(3.0), device=device)
    theirs = torch.tensor(np.arange(3.0))
    assert ours.zero_() is ours
    theirs.zero_()
    assert_same(ours.numpy(), theirs.numpy())
    ours.copy_(mdl.tensor([1.0, 2.0, 3.0], device=device))
    theirs.copy_(torch.tensor([1.0, 2.0, 3.0]))
    assert_same(ours.numpy(), theirs.numpy())
    ours.fill_(4.0)
    theirs.fill_(4.0)
    assert_same(ours.numpy(), theirs.numpy())
