"""minidl -> ONNX (docs/onnx.md): every exported model runs in onnxruntime and matches minidl.

onnxruntime is the oracle (neither PyTorch nor ourselves; onnx's own reference evaluator gets LRN
wrong). Each model is exported, checked by ``onnx.checker`` (full check), run in onnxruntime on
the example input and compared with minidl's eval forward (float32, rtol 1e-4); its initializers
must be the model's parameters and buffers bit for bit. The conventions of
``minidl/onnx/conventions.py`` are each checked against onnxruntime, not assumed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import nn
from minidl.autograd import Function
from minidl.models import AlexNet, SmallAlexNet
from minidl.models.keras_alexnet import KerasAlexNet
from tests.helpers import without_package

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402 - after the skip

from minidl.onnx import conventions  # noqa: E402 - imports onnx
from minidl.onnx.exporter import ExportError, export  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


# ---- helpers -------------------------------------------------------------------------------------
def session(path_or_model) -> ort.InferenceSession:
    source = (
        path_or_model.SerializeToString() if hasattr(path_or_model, "graph") else str(path_or_model)
    )
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def minidl_output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with mdl.no_grad():
        y = model(mdl.tensor(x)).numpy()
    for m, mode in modes:
        m.training = mode
    return y


def initializers(path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def nodes(path) -> list:
    return list(onnx.load(str(path)).graph.node)


def export_and_compare(model: nn.Module, x: np.ndarray, tmp_path, **options):
    """Export, check the file, compare onnxruntime with minidl and the weights bit for bit.
    Returns the file's path."""
    path = export(model, mdl.tensor(x), tmp_path / "model.onnx", **options)
    onnx.checker.check_model(str(path), full_check=True)
    (theirs,) = session(path).run(None, {"input": x})
    np.testing.assert_allclose(theirs, minidl_output(model, x), rtol=RTOL, atol=ATOL)
    stored = initializers(path)
    for name, array in model.state_dict().items():
        if array.dtype.kind == "f":  # BatchNorm's int64 step counter is not part of inference
            assert name in stored, f"{name} is not an initializer of the file"
            assert stored[name].dtype == array.dtype and stored[name].shape == array.shape
            assert stored[name].tobytes() == array.tobytes(), f"{name} changed on the way"
    return path


def random_input(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def with_trained_statistics(model: nn.Module, x: np.ndarray, steps: int = 2) -> nn.Module:
    """A few training forwards, so BatchNorm's running mean and (unbiased) variance are real,
    far from their 0 and 1, and its affine weights not 1 and 0."""
    rng = np.random.default_rng(1)
    for layer in model.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.affine:
            layer.weight.data[...] = rng.uniform(0.5, 1.5, layer.weight.shape)
            layer.bias.data[...] = rng.uniform(-0.5, 0.5, layer.bias.shape)
    model.train()
    with mdl.no_grad():
        for step in range(steps):
            model(mdl.tensor(3.0 * x + step + 1.0))
    return model


# ---- the AlexNets --------------------------------------------------------------------------------
def test_alexnet_two_towers(tmp_path):
    """The paper's AlexNet (LRN, groups=2, overlapping pools) at 99x99, the size that leaves a
    2x2 map before fc6 (so Flatten's order matters); 10 classes to keep the file small."""
    mdl.manual_seed(0)
    model = AlexNet(num_classes=10, input_size=99)
    path = export_and_compare(model, random_input(2, 3, 99, 99), tmp_path)
    ops = [n.op_type for n in nodes(path)]
    assert ops.count("LRN") == 2 and ops.count("MaxPool") == 3 and ops.count("Gemm") == 3
    groups = [
        a.i for n in nodes(path) if n.op_type == "Conv" for a in n.attribute if a.name == "group"
    ]
    assert groups == [1, 2, 1, 2, 2]
    assert "Dropout" not in ops  # inference: dropout is the identity


def test_small_alexnet(tmp_path):
    mdl.manual_seed(0)
    export_and_compare(SmallAlexNet(), random_input(3, 1, 28, 28), tmp_path)


def test_small_alexnet_with_batch_norm(tmp_path):
    mdl.manual_seed(0)
    x = random_input(4, 1, 28, 28)
    model = with_trained_statistics(SmallAlexNet(norm="batch"), x)
    export_and_compare(model, x, tmp_path)


def test_keras_alexnet_in_eval(tmp_path):
    """The Keras BN AlexNet: BatchNorm2d and BatchNorm1d (on (N, C)) with Keras's momentum and
    eps, exported after training steps gave it real running statistics."""
    mdl.manual_seed(0)
    x = random_input(2, 3, 224, 224)
    model = with_trained_statistics(KerasAlexNet(), x, steps=1)
    path = export_and_compare(model, x, tmp_path)
    norms = [n for n in nodes(path) if n.op_type == "BatchNormalization"]
    assert len(norms) == 8
    for node in norms:
        attributes = {a.name: a.f for a in node.attribute}
        assert attributes["momentum"] == pytest.approx(0.99)  # Keras's, and ONNX's, convention
        assert attributes["epsilon"] == pytest.approx(1e-3)


# ---- one model per layer and op ------------------------------------------------------------------
class Case(NamedTuple):
    name: str
    make: Callable[[], nn.Module]
    shape: tuple


class Lambda(nn.Module):
    """A layer whose forward is a function of x (and of its own parameter ``w``, if it has a
    shape: an unused parameter would not be in the file)."""

    def __init__(self, fn, parameter_shape=None):
        super().__init__()
        self.fn = fn
        self.w = None if parameter_shape is None else nn.Parameter(random_input(*parameter_shape))

    def forward(self, x):
        return self.fn(x, self.w)


class Residual(nn.Module):
    """Arithmetic between layers, which walking the Modules would miss."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        return F.relu(x + self.norm(self.conv(x))).flatten(1)


def tensor_math(x, w):
    # x: (2, 3, 4, 4), w: (4,)
    y = (x * 2.0 + 1.0 - w) / 3.0  # constants and a broadcast parameter
    y = y**2 - (-x).exp() * 0.1 + (x * x + 1.0).log()
    y = y.transpose(2, 3).reshape(2, 3, 16).permute(0, 2, 1)  # (2, 16, 3)
    z = y @ mdl.tensor(random_input(3, 5, seed=3))  # a constant matrix: (2, 16, 5)
    return z.sum(axis=1) + z.max(axis=1) + z.mean(dim=1) + z.T.sum()


def tensor_api(x, w):
    # x: (2, 3, 4, 5), w: (4,)
    a = mdl.cat([x.sigmoid(), x.tanh().abs(), (x * x).sqrt()], dim=3).clamp(min=0.1, max=0.9)
    b = mdl.stack([x[:, 0], x[:, 1].clamp(max=0.5)], dim=1)  # (2, 2, 4, 5)
    c = x.clone().clamp(min=-0.2)[:, :2].sum(3)
    return a.min(dim=3)[:, :2] + b.min(dim=3) + c + w.expand(2, 2, 4)


CASES = [
    Case("conv", lambda: nn.Conv2d(3, 4, 3), (2, 3, 7, 7)),
    Case("conv-stride-pad", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 9)),
    Case(
        "conv-rectangular",
        lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(0, 1)),
        (1, 3, 7, 6),
    ),
    Case("conv-groups-dilation", lambda: nn.Conv2d(4, 6, 3, dilation=2, groups=2), (2, 4, 9, 9)),
    Case("conv-same-asymmetric", lambda: nn.Conv2d(2, 3, (2, 5), padding="same"), (1, 2, 5, 6)),
    Case("conv-no-bias", lambda: nn.Conv2d(3, 4, 3, bias=False), (1, 3, 5, 5)),
    Case("maxpool-overlapping", lambda: nn.MaxPool2d(3, 2), (2, 3, 9, 9)),
    Case("maxpool-ceil-mode", lambda: nn.MaxPool2d(2, 2, padding=1, ceil_mode=True), (1, 2, 5, 5)),
    Case("maxpool-ceil-odd", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (1, 2, 8, 8)),
    Case("maxpool-dilation", lambda: nn.MaxPool2d(3, 1, padding=1, dilation=2), (1, 2, 7, 7)),
    Case("lrn-alpha-1", lambda: nn.LocalResponseNorm(5, alpha=1.0, beta=0.75, k=2.0), (2, 7, 3, 3)),
    Case("lrn-size-3", lambda: nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.0), (1, 6, 2, 2)),
    Case("relu", nn.ReLU, (2, 3, 4)),
    Case("dropout", lambda: nn.Dropout(0.5), (4, 8)),
    Case("batchnorm2d", lambda: nn.BatchNorm2d(3), (4, 3, 5, 5)),
    Case("batchnorm2d-no-affine", lambda: nn.BatchNorm2d(3, affine=False), (4, 3, 5, 5)),
    Case("batchnorm1d-NC", lambda: nn.BatchNorm1d(5, momentum=0.3), (6, 5)),
    Case("batchnorm1d-NCL", lambda: nn.BatchNorm1d(4), (3, 4, 6)),
    Case("linear", lambda: nn.Linear(6, 3), (4, 6)),
    Case("linear-3d-input", lambda: nn.Linear(6, 3), (2, 5, 6)),
    Case("linear-no-bias", lambda: nn.Linear(6, 3, bias=False), (4, 6)),
    Case("flatten", lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), (2, 3, 4, 4)),
    Case("softmax-channels", lambda: Lambda(lambda x, w: F.softmax(x, dim=1)), (2, 3, 4, 4)),
    Case("log-softmax", lambda: Lambda(lambda x, w: F.log_softmax(x, dim=-1)), (3, 10)),
    Case("bias-relu", lambda: Lambda(lambda x, w: F.bias_relu(x, w), (4,)), (2, 4, 3, 3)),
    Case("residual", Residual, (2, 3, 5, 5)),
    Case("tensor-math", lambda: Lambda(tensor_math, (4,)), (2, 3, 4, 4)),
    Case("tensor-api", lambda: Lambda(tensor_api, (4,)), (2, 3, 4, 5)),
    Case(
        "getitem",
        lambda: Lambda(lambda x, w: x[0, :, 1:3] * 2.0 + x[1, ..., ::-1][:, -2:]),
        (2, 3, 4, 5),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_layer_and_op(case, tmp_path):
    mdl.manual_seed(0)
    x = random_input(*case.shape)
    model = case.make()
    if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()):
        model = with_trained_statistics(model, x)
    export_and_compare(model, x, tmp_path)


# ---- conventions, each checked against onnxruntime -----------------------------------------------
def test_lrn_alpha_is_multiplied_by_size_and_k_is_bias(tmp_path):
    """The paper's known answer (DESIGN.md): channels 1..7, n=5, k=2, beta=0.75, alpha=1."""
    x = np.arange(1, 8, dtype=np.float32).reshape(1, 7, 1, 1)
    path = export(nn.LocalResponseNorm(5, alpha=1.0, k=2.0), mdl.tensor(x), tmp_path / "lrn.onnx")
    (node,) = nodes(path)
    attributes = {a.name: a.f for a in node.attribute if a.type == onnx.AttributeProto.FLOAT}
    assert attributes == pytest.approx({"alpha": 5.0, "beta": 0.75, "bias": 2.0})
    (y,) = session(path).run(None, {"input": x})
    paper = [0.125, 0.14865089, 0.14461559, 0.13465396, 0.12486180, 0.15766808, 0.20332207]
    np.testing.assert_allclose(y.reshape(-1), paper, rtol=1e-6)


def test_batch_norm_momentum_is_one_minus_ours(tmp_path):
    x = random_input(4, 3, 2, 2)
    for ours, theirs in ((0.1, 0.9), (0.01, 0.99), (0.3, 0.7)):
        layer = nn.BatchNorm2d(3, momentum=ours)
        (node,) = nodes(export(layer, mdl.tensor(x), tmp_path / "bn.onnx"))
        momentum = next(a.f for a in node.attribute if a.name == "momentum")
        assert momentum == pytest.approx(theirs)
        assert conventions.batch_norm_momentum_from_onnx(momentum) == pytest.approx(ours)


def test_batch_norm_running_variance_is_the_unbiased_one_ours_keeps(tmp_path):
    """After one training batch from var 1 with momentum 1, running_var is the batch's unbiased
    variance; the file carries it unchanged and onnxruntime normalizes with it, as our eval."""
    x = random_input(2, 3, 1, 2)  # m = 4 values per channel: unbiased = biased * 4/3
    layer = nn.BatchNorm2d(3, momentum=1.0)
    with mdl.no_grad():
        layer(mdl.tensor(x))
    unbiased = x.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1, ddof=1)
    np.testing.assert_allclose(layer.running_var.numpy(), unbiased, rtol=1e-5)
    export_and_compare(layer, x, tmp_path)


def test_pads_are_listed_begins_then_ends(tmp_path):
    """padding="same" with a 2x5 kernel: (top, bottom, left, right) = (0, 1, 2, 2) in minidl,
    [top, left, bottom, right] = [0, 2, 1, 2] in ONNX."""
    layer = nn.Conv2d(1, 1, (2, 5), padding="same")
    path = export_and_compare(layer, random_input(1, 1, 5, 6), tmp_path)
    (node,) = nodes(path)
    assert list(next(a.ints for a in node.attribute if a.name == "pads")) == [0, 2, 1, 2]
    assert conventions.pads_from_onnx([0, 2, 1, 2]) == (0, 1, 2, 2)


def test_max_pool_ceil_mode_never_starts_a_window_in_the_end_padding(tmp_path):
    """5 rows, kernel 2, stride 2, padding 1, ceil_mode: onnx's shape inference for MaxPool
    before opset 22 counts ceil(4 / 2) + 1 = 3 windows plus one starting in the bottom padding
    (4); minidl, PyTorch and onnxruntime drop that one (3), and the checker would refuse a file
    declaring 3.
    The file says floor mode with the padding the 3 windows reach: pads [1, 1, 0, 0]."""
    layer = nn.MaxPool2d(2, 2, padding=1, ceil_mode=True)
    path = export_and_compare(layer, random_input(1, 2, 5, 5), tmp_path)
    (node,) = nodes(path)
    attributes = {a.name: a for a in node.attribute}
    assert attributes["ceil_mode"].i == 0 and list(attributes["pads"].ints) == [1, 1, 0, 0]
    kept = nn.MaxPool2d(3, 2, ceil_mode=True)  # 8 rows: 4 windows both ways, ceil_mode kept
    (node,) = nodes(export_and_compare(kept, random_input(1, 2, 8, 8), tmp_path))
    assert next(a.i for a in node.attribute if a.name == "ceil_mode") == 1


def conv_node_model(weight: np.ndarray, shape, **attributes) -> onnx.ModelProto:
    """One ONNX Conv node with ``weight``, for onnxruntime to compute by the file's rules."""
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=list(weight.shape[2:]), **attributes
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_auto_pad_same_upper_is_our_same_and_same_lower_puts_the_odd_pixel_first():
    x = random_input(1, 1, 5, 6)
    weight = random_input(1, 1, 2, 4, seed=2)
    ours = F.conv2d(mdl.tensor(x), mdl.tensor(weight), padding="same").numpy()
    (upper,) = session(conv_node_model(weight, x.shape, auto_pad="SAME_UPPER")).run(None, {"x": x})
    np.testing.assert_allclose(upper, ours, rtol=RTOL, atol=ATOL)
    (lower,) = session(conv_node_model(weight, x.shape, auto_pad="SAME_LOWER")).run(None, {"x": x})
    assert not np.allclose(lower, ours)
    top, bottom = conventions.auto_pads(5, 2, 1, 1, "SAME_LOWER")
    left, right = conventions.auto_pads(6, 4, 1, 1, "SAME_LOWER")
    assert (top, bottom, left, right) == (1, 0, 2, 1)  # the odd pixel first
    pads = conventions.pads_to_onnx(top, bottom, left, right)
    (explicit,) = session(conv_node_model(weight, x.shape, pads=pads)).run(None, {"x": x})
    np.testing.assert_allclose(lower, explicit, rtol=RTOL, atol=ATOL)
    assert conventions.auto_pads(5, 2, 1, 1, "SAME_UPPER") == (0, 1)


def test_max_pool_indices_are_flat_over_the_whole_tensor_in_onnx():
    x = random_input(2, 3, 5, 5)
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 3], strides=[2, 2])
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [
            helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y, flat = session(model).run(None, {"x": x})
    ours_y, ours_i = F.max_pool2d(mdl.tensor(x), 3, 2, return_indices=True)
    np.testing.assert_array_equal(y, ours_y.numpy())
    assert flat.max() >= 5 * 5  # counts past the first plane
    np.testing.assert_array_equal(conventions.plane_indices(flat, 5, 5), ours_i.numpy())


def test_opsets_before_13_are_refused_softmax_changed_meaning(tmp_path):
    with pytest.raises(ValueError, match=r"opset must be an int from 13 \(Softmax"):
        export(nn.ReLU(), mdl.tensor(random_input(2, 3)), tmp_path / "m.onnx", opset=12)


@pytest.mark.parametrize("opset", [13, 18])
def test_other_opsets(opset, tmp_path):
    """ReduceMax takes its axes as an attribute before 18, as an input from 18."""
    model = Lambda(lambda x, w: F.softmax(x, dim=1).max(axis=1) + x.sum(axis=(2, 3)).mean())
    export_and_compare(model, random_input(2, 3, 4, 4), tmp_path, opset=opset)


# ---- training mode, dropout ----------------------------------------------------------------------
def test_a_model_in_training_mode_is_exported_in_its_eval_form(tmp_path):
    """As torch.onnx.export's default (TrainingMode.EVAL): dropout leaves no node, BatchNorm
    reads its running statistics (not updated by the export), and every layer's mode is given
    back afterwards."""
    x = random_input(4, 6)
    model = with_trained_statistics(
        nn.Sequential(
            nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)
        ),
        x,
    )
    model[4].eval()  # a mixed state, to see that each layer's own mode comes back
    modes = [m.training for m in model.modules()]
    before = model.state_dict()
    path = export_and_compare(model, x, tmp_path)
    assert [m.training for m in model.modules()] == modes
    assert all((before[k] == v).all() for k, v in model.state_dict().items())
    assert [n.op_type for n in nodes(path)] == ["Gemm", "BatchNormalization", "Relu", "Gemm"]


def test_a_dropout_forced_on_in_forward_is_a_dropout_node_identity_at_inference(tmp_path):
    """F.dropout(x, training=True) ignores the model's mode, so it is recorded; ONNX's Dropout
    (ratio an input since opset 12) is the identity at inference, which is what is compared."""
    x = random_input(3, 8)
    model = Lambda(lambda x, w: F.dropout(x, 0.25, training=True) + w.sum(), parameter_shape=(1,))
    path = export(model, mdl.tensor(x), tmp_path / "m.onnx")
    dropout = next(n for n in nodes(path) if n.op_type == "Dropout")
    assert len(dropout.input) == 2  # (x, ratio)
    (y,) = session(path).run(None, {"input": x})
    np.testing.assert_allclose(y, x + model.w.numpy().sum(), rtol=RTOL)


# ---- what cannot be exported ---------------------------------------------------------------------
class Square(Function):
    """A user's own op that the exporter has never heard of."""

    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, dy):
        raise NotImplementedError


class SquareLayer(nn.Module):
    def forward(self, x):
        return Square.apply(x)


def test_an_op_without_translation_is_one_error_naming_the_op_and_the_layer(tmp_path):
    model = nn.Sequential(
        body=nn.Sequential(fc=nn.Linear(3, 3), sq=SquareLayer()), head=SquareLayer()
    )
    with pytest.raises(ExportError) as error:
        export(model, mdl.tensor(random_input(2, 3)), tmp_path / "m.onnx")
    message = str(error.value)
    assert "square (Square) in module 'body.sq' (SquareLayer)" in message
    assert "square (Square) in module 'head' (SquareLayer)" in message
    assert not (tmp_path / "m.onnx").exists()


def test_batch_norm_without_running_statistics_is_refused_by_layer(tmp_path):
    model = nn.Sequential(norm=nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(
        ExportError, match=r"module 'norm' \(BatchNorm2d\): batch_norm with the batch"
    ):
        export(model, mdl.tensor(random_input(2, 3, 2, 2)), tmp_path / "m.onnx")


def test_max_pool_indices_are_refused_by_layer(tmp_path):
    model = Lambda(lambda x, w: F.max_pool2d(x, 2, return_indices=True)[0])
    with pytest.raises(
        ExportError, match=r"the model's forward \(Lambda\): max_pool2d with its indices"
    ):
        export(model, mdl.tensor(random_input(1, 2, 4, 4)), tmp_path / "m.onnx")


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_refused_never_cast(dtype, tmp_path):
    model = nn.Linear(3, 2).astype(dtype)
    with pytest.raises(TypeError, match=rf"export: weight is {np.dtype(dtype)}; .*model.float\(\)"):
        export(model, mdl.tensor(random_input(2, 3).astype(dtype)), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match=r"export: example_input is float64"):
        export(nn.ReLU(), mdl.tensor(random_input(2, 3).astype(np.float64)), tmp_path / "m.onnx")


def test_names_of_inputs_and_outputs(tmp_path):
    model = Lambda(lambda x, w: (x + w, x * 2.0), (4,))
    x = random_input(2, 4)
    path = export(model, x, tmp_path / "m.onnx", input_names=["image"], output_names=["a", "b"])
    a, b = session(path).run(["a", "b"], {"image": x})
    np.testing.assert_allclose(a, x + model.w.numpy(), rtol=RTOL)
    np.testing.assert_allclose(b, 2 * x, rtol=RTOL)
    with pytest.raises(ValueError, match="output_names 2"):
        export(model, x, tmp_path / "m.onnx", output_names=["a"])


def test_a_forward_that_fails_leaves_the_engine_as_it_was(tmp_path):
    """The recording replaces Function.apply and Module.__call__ while the forward runs; an
    error inside the forward must give both back."""
    apply, call = Function.__dict__["apply"], nn.Module.__call__
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(5, 1))  # the second layer cannot take (N, 2)
    with pytest.raises(ValueError, match="linear: x has 2 features"):
        export(model, mdl.tensor(random_input(2, 3)), tmp_path / "m.onnx")
    assert Function.__dict__["apply"] is apply and nn.Module.__call__ is call


def test_import_minidl_does_not_import_onnx():
    code = "import sys, minidl, minidl.nn, minidl.functional; assert 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minidl_onnx_without_the_onnx_package_names_the_extra():
    """A machine without onnx: ``import minidl.onnx`` says what to install."""
    code = without_package("onnx") + textwrap.dedent(
        """
        try:
            import minidl.onnx
        except ImportError as err:
            print(err)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install "minidl[onnx]"' in done.stdout, done.stdout + done.stderr


# ---- minidl -> ONNX -> minidl --------------------------------------------------------------------
def importer_load():
    if importlib.util.find_spec("minidl.onnx.importer") is None:
        pytest.skip(
            "the ONNX importer (minidl.onnx.importer, the import half of issue #20) is not "
            "there yet"
        )
    from minidl.onnx.importer import load

    return load


ROUND_TRIPS = [
    Case("alexnet", lambda: AlexNet(num_classes=10, input_size=99), (1, 3, 99, 99)),
    Case("small-alexnet-bn", lambda: SmallAlexNet(norm="batch"), (2, 1, 28, 28)),
]


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=[c.name for c in ROUND_TRIPS])
def test_round_trip_keeps_every_weight_bit_for_bit(case, tmp_path):
    load = importer_load()
    mdl.manual_seed(0)
    x = random_input(*case.shape)
    model = with_trained_statistics(case.make(), x)
    path = export(model, mdl.tensor(x), tmp_path / "model.onnx")
    loaded = load(path)
    theirs = {(a.shape, a.dtype.str, a.tobytes()) for a in loaded.state_dict().values()}
    for name, array in model.state_dict().items():
        if array.dtype.kind == "f":
            assert (array.shape, array.dtype.str, array.tobytes()) in theirs, f"{name} changed"
    with mdl.no_grad():
        y = loaded(mdl.tensor(x)).numpy()
    np.testing.assert_allclose(y, minidl_output(model, x), rtol=RTOL, atol=ATOL)


class ResidualBlock(nn.Module):
    """A torchvision-style block: ReLU(inplace=True) and ``out += identity``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        identity = x
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += identity
        return self.relu(out)  # the model's output is a tensor written in place


def test_in_place_ops_are_exported_as_the_values_they_make(tmp_path):
    """One tensor object holds two values around an in-place write; the file has both."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), ResidualBlock())
    path = export_and_compare(model, random_input(2, 3, 8, 8), tmp_path)
    assert [n.op_type for n in nodes(path)] == [
        "Conv",
        "Relu",
        "Conv",
        "Relu",
        "Conv",
        "Add",
        "Relu",
    ]


@pytest.mark.parametrize("opset", [13, 18])
def test_the_tensor_api_ops_at_the_oldest_and_a_newer_opset(opset, tmp_path):
    """ReduceMin's axes were an attribute before opset 18, an input from 18 on."""
    export_and_compare(Lambda(tensor_api, (4,)), random_input(2, 3, 4, 5), tmp_path, opset=opset)


class WritesThroughViews(nn.Module):
    """A forward that writes into a view of a tensor (x[:, 0] += ...), and that uses a view
    taken before its base was written: one tensor object holds several values in turn."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        flat = y.reshape(2, -1)  # taken before y is written
        y.reshape(-1).mul_(3.0)  # a write through a view of y: y is made anew
        y.permute(1, 0, 2, 3).add_(1.0)  # and again
        return flat.sum(1) + y.sum((1, 2, 3))  # flat holds y's new values


def test_writes_through_views_are_exported_as_the_values_they_make(tmp_path):
    export_and_compare(WritesThroughViews(), random_input(2, 3, 5, 5), tmp_path)
