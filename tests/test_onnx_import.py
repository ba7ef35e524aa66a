"""ONNX import (minidl/onnx/importer.py) against oracles: onnxruntime on the same file, PyTorch
on a model it exported, and the old attribute forms of the zoo's files against their newer form.

Every model here is small, except the synthetic zoo AlexNet (minidl/onnx/zoo.py), written once
for the module. onnx and onnxruntime are test oracles: the tests skip without them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import minidl as mdl  # noqa: E402
from minidl.nn.module import Parameter  # noqa: E402
from minidl.onnx.importer import OnnxImportError, load  # noqa: E402
from minidl.onnx.zoo import synthetic_bvlc_alexnet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-4


def onnxruntime_outputs(source, inputs: dict) -> list:
    """What onnxruntime computes on a file or a ModelProto (warnings about the zoo's layout off)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def minidl_outputs(model, inputs: dict) -> list:
    with mdl.no_grad():
        out = model(**inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def assert_close(got, want, rtol=RTOL):
    """float32 results, equal to rtol (atol scaled to the largest value, for values near 0)."""
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.abs(w).max() or 1))


# ---- small hand-written graphs -------------------------------------------------------------------
def initializer(rng, name, *shape, scale=0.3):
    return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)


def small_alexnet_graph(opset: int, rng=None) -> onnx.ModelProto:
    """conv (SAME_LOWER, stride 2: the odd pixel at the start) -> BatchNorm -> ReLU -> LRN
    (alpha 1: every term counts) -> MaxPool (pool5's end-only pads) -> grouped, dilated conv
    (asymmetric pads) -> Add (a bias by broadcast) -> Reshape -> Dropout -> Gemm (transB) ->
    Softmax, in ``opset``'s attribute forms: before 7, Dropout's is_test, BatchNorm's spatial
    and consumed_inputs, Gemm's and Add's broadcast; before 5, Reshape's shape attribute; from 12
    on, Dropout's ratio as an input."""
    rng = rng or np.random.default_rng(0)
    old = opset < 7
    consumed = {"consumed_inputs": [0, 0, 0, 1, 1]} if opset < 6 else {}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", kernel_shape=[4, 4],
                         auto_pad="SAME_LOWER", strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], "bn1",
                         epsilon=1e-3, **({"spatial": 1, "is_test": 1} if old else {}), **consumed),
        helper.make_node("Relu", ["n1"], ["r1"], "relu1"),
        helper.make_node("LRN", ["r1"], ["l1"], "norm1", size=5, alpha=1.0, beta=0.75, bias=2.0),
        helper.make_node("MaxPool", ["l1"], ["p1"], "pool1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], "conv2", kernel_shape=[3, 3], group=2,
                         dilations=[2, 2], pads=[1, 2, 3, 2]),
        helper.make_node("Add", ["c2", "b2"], ["a2"], "bias2",
                         **({"broadcast": 1, "axis": 1} if old else {})),
    ]  # fmt: skip
    if opset < 5:
        nodes.append(helper.make_node("Reshape", ["a2"], ["f"], "flat", shape=[1, -1]))
    else:
        nodes.append(helper.make_node("Reshape", ["a2", "shape"], ["f"], "flat"))
    ratio = {"ratio": 0.5} if opset < 12 else {}
    ratio.update({"is_test": 1} if old else {})
    nodes += [
        helper.make_node("Dropout", ["f"], ["d"], "drop", **ratio),
        helper.make_node("Gemm", ["d", "w3", "b3"], ["z"], "fc", transB=1,
                         **({"broadcast": 1} if old else {})),
        helper.make_node("Softmax", ["z"], ["y"], "prob"),
    ]  # fmt: skip
    weights = [
        initializer(rng, "w1", 8, 3, 4, 4), initializer(rng, "b1", 8),
        initializer(rng, "g", 8), initializer(rng, "beta", 8), initializer(rng, "mean", 8),
        numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "var"),
        initializer(rng, "w2", 8, 4, 3, 3), initializer(rng, "b2", 8, 1, 1),
        initializer(rng, "w3", 5, 8 * 3 * 3), initializer(rng, "b3", 5),
    ]  # fmt: skip
    if opset >= 5:
        weights.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 13, 13])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])
    return model_of(nodes, [x], [y], weights, opset)


def model_of(nodes, inputs, outputs, weights, opset: int) -> onnx.ModelProto:
    """A model in the IR version of the zoo's files of that opset: IR 3 (up to opset 8) lists
    the weights among the graph's inputs too."""
    if opset <= 8:
        inputs = inputs + [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights
        ]
    graph = helper.make_graph(nodes, "small_alexnet", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset <= 8 else helper.find_min_ir_version_for(model.opset_import)
    return model


def image(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("opset", [7, 8, 9, 11, 12, 13, 17, 21])
def test_small_alexnet_matches_onnxruntime(opset):
    model = small_alexnet_graph(opset)
    inputs = {"x": image(1, 3, 13, 13)}
    assert_close(minidl_outputs(load(model), inputs), onnxruntime_outputs(model, inputs))


@pytest.mark.parametrize("opset", [3, 4, 5, 6])
def test_old_attribute_forms_import_as_their_opset_9_form(opset):
    """onnxruntime runs opset 7 and later only: the zoo's opset 3..6 forms are checked against
    the same network written in opset 9, itself checked against onnxruntime above."""
    inputs = {"x": image(1, 3, 13, 13)}
    want = minidl_outputs(load(small_alexnet_graph(9)), inputs)
    assert_close(minidl_outputs(load(small_alexnet_graph(opset)), inputs), want, rtol=1e-6)


def one_node_model(node, inputs: dict, opset: int = 13) -> onnx.ModelProto:
    """A model of one float32 node whose inputs are the given arrays (outputs by inference)."""
    infos = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in inputs.items()
    ]
    model = model_of([node], infos, [], [], opset)
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    model.graph.output.extend(v for v in inferred if v.name in node.output)
    return model


def test_lrn_alpha_is_divided_by_size_in_onnx_and_not_in_minidl():
    """DESIGN.md's known answer: the paper's alpha=1 (minidl) is ONNX's alpha=size=5."""
    x = np.arange(1, 8, dtype=np.float32).reshape(1, 7, 1, 1)
    node = helper.make_node("LRN", ["x"], ["y"], size=5, alpha=5.0, beta=0.75, bias=2.0)
    model = one_node_model(node, {"x": x})
    paper = [0.125, 0.14865089, 0.14461559, 0.13465396, 0.12486180, 0.15766808, 0.20332207]
    (y,) = minidl_outputs(load(model), {"x": x})
    np.testing.assert_allclose(y.reshape(-1), paper, rtol=1e-6)
    assert_close([y], onnxruntime_outputs(model, {"x": x}))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_axis_means_what_its_opset_says(op, opset, axis):
    """Before opset 13 the input is flattened to 2-D at ``axis`` and each row normalized; from
    13 on, only the one axis is normalized. Different answers on a 3-D input, except at -1."""
    x = {"x": image(2, 3, 4)}
    model = one_node_model(helper.make_node(op, ["x"], ["y"], axis=axis), x, opset=opset)
    assert_close(minidl_outputs(load(model), x), onnxruntime_outputs(model, x))


@pytest.mark.parametrize(
    "attributes",
    [
        dict(kernel_shape=[3, 3], strides=[2, 2]),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),  # Caffe's pool5
        dict(kernel_shape=[2, 3], strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2]),
        dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        dict(kernel_shape=[3, 3], strides=[2, 2], storage_order=1),
        dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", strides=[2, 2]),
        dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER", strides=[2, 2]),
    ],
    ids=["plain", "pads", "end-pads", "asymmetric-dilated", "ceil", "column-major", "same-upper",
         "same-lower"],
)  # fmt: skip
def test_max_pool_values_and_flat_indices_match_onnxruntime(attributes):
    """Indices are flat over the whole (N, C, H, W) input: batch 2 and 3 channels make the
    plane offsets count."""
    x = {"x": image(2, 3, 7, 8)}
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attributes)
    model = one_node_model(node, x, opset=12)
    got, want = minidl_outputs(load(model), x), onnxruntime_outputs(model, x)
    assert_close(got[:1], want[:1])
    np.testing.assert_array_equal(got[1], want[1])


def test_batch_norm_momentum_is_converted_when_fine_tuning():
    """ONNX's momentum 0.9 weighs the old running mean; in train() mode the model updates it as
    nn.BatchNorm2d with momentum 0.1: running = 0.9 * running + 0.1 * batch mean."""
    rng = np.random.default_rng(3)
    stats = {n: rng.standard_normal(4).astype(np.float32) for n in ("g", "b", "m")}
    weights = [numpy_helper.from_array(v, n) for n, v in stats.items()]
    weights.append(numpy_helper.from_array(np.ones(4, np.float32), "v"))
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], momentum=0.9)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3, 3])
    model = load(model_of([node], [x], [y], weights, 13)).train()
    batch = image(2, 4, 3, 3)
    model(x=batch)
    expected = 0.9 * stats["m"] + 0.1 * batch.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(model.m.numpy(), expected, rtol=1e-5)
    assert [name for name, _ in model.named_buffers()] == ["m", "v"]  # statistics: buffers


def test_weights_are_parameters_and_one_sgd_step_changes_them():
    model = load(small_alexnet_graph(12))
    assert all(isinstance(p, Parameter) for p in model.parameters())
    assert [n for n, _ in model.named_parameters()] == [
        "w1",
        "b1",
        "g",
        "beta",
        "w2",
        "b2",
        "w3",
        "b3",
    ]
    before = model.state_dict()
    model.train()
    out = model(x=image(1, 3, 13, 13))
    loss = (out * mdl.tensor(np.eye(5, dtype=np.float32)[:1])).sum()
    optimizer = mdl.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for name in ("w1", "w2", "w3", "b3"):
        assert not np.array_equal(before[name], after[name]), f"{name} did not move"
    model.load_state_dict(before)  # the state round-trips
    np.testing.assert_array_equal(model.w1.numpy(), before["w1"])


def test_value_names_become_attributes_that_shadow_nothing():
    """A file's names made into identifiers; one named like a Module attribute gets a suffix."""
    weights = [numpy_helper.from_array(np.full(3, 2.0, np.float32), n) for n in ("a.b", "steps")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    nodes = [
        helper.make_node("Mul", ["x", "a.b"], ["t"]),
        helper.make_node("Add", ["t", "steps"], ["y"]),
    ]
    model = load(model_of(nodes, [x], [y], weights, 13))
    assert model.onnx_names == {"a_b": "a.b", "steps_1": "steps"}
    np.testing.assert_array_equal(
        minidl_outputs(model, {"x": np.ones(3, np.float32)})[0], [4, 4, 4]
    )


def test_the_gpu_branch_matches_the_cpu(kernel_device):
    inputs = {"x": image(1, 3, 13, 13)}
    want = minidl_outputs(load(small_alexnet_graph(12)), inputs)
    model = load(small_alexnet_graph(12), device=kernel_device)
    assert {p.device for p in model.parameters()} == {"cuda"}
    assert_close(minidl_outputs(model, inputs), want, rtol=1e-5)


# ---- errors --------------------------------------------------------------------------------------
def test_an_unsupported_file_lists_every_unsupported_node_at_once():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])
    nodes = [
        helper.make_node("Softplus", ["x"], ["a"], "squash"),
        helper.make_node("Relu", ["a"], ["b"], "fine"),
        helper.make_node("LRN", ["b"], ["c"], "even_window", size=4),
        helper.make_node("Erf", ["c"], ["y"], "erf"),
    ]
    with pytest.raises(OnnxImportError) as error:
        load(model_of(nodes, [x], [y], [], 13))
    message = str(error.value)
    for name, op in (("squash", "Softplus"), ("even_window", "LRN"), ("erf", "Erf")):
        assert f"node {name!r} ({op})" in message
    assert "fine" not in message and "size=4" in message


def test_a_truncated_file_names_the_file(tmp_path):
    whole = small_alexnet_graph(12).SerializeToString()
    for cut in (len(whole) // 2, len(whole) - 3):
        path = tmp_path / f"cut_{cut}.onnx"
        path.write_bytes(whole[:cut])
        with pytest.raises(OnnxImportError, match=str(path).replace(".", r"\.")):
            load(path)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load(tmp_path / "missing.onnx")


def test_an_input_of_the_wrong_shape_names_the_input_and_the_expected_shape():
    model = load(small_alexnet_graph(12))
    with pytest.raises(ValueError, match=r"input 'x' has shape \(1, 3, 12, 13\).*\(1, 3, 13, 13\)"):
        model(image(1, 3, 12, 13))
    with pytest.raises(TypeError, match="input 'x' has dtype float64, the model expects float32"):
        model(image(1, 3, 13, 13).astype(np.float64))


# ---- the zoo's AlexNet, with random weights ------------------------------------------------------
@pytest.fixture(scope="module")
def zoo_alexnet(tmp_path_factory):
    """The synthetic bvlcalexnet in the layout and opset (12) of the zoo's validated file."""
    return synthetic_bvlc_alexnet(tmp_path_factory.mktemp("zoo") / "bvlcalexnet-12.onnx", opset=12)


def test_the_synthetic_file_has_the_zoo_layout(zoo_alexnet):
    model = onnx.load(str(zoo_alexnet))
    assert model.opset_import[0].version == 12
    assert [i.name for i in model.graph.input][:1] == ["data_0"]
    assert [o.name for o in model.graph.output] == ["prob_1"]
    lrn = [n for n in model.graph.node if n.op_type == "LRN"]
    assert len(lrn) == 2 and {a.name: a for a in lrn[0].attribute}["bias"].f == 1.0
    groups = [a.i for n in model.graph.node for a in n.attribute if a.name == "group"]
    assert groups == [2, 2, 2]
    imported = load(zoo_alexnet)
    assert imported.num_parameters() == 60_965_224  # the paper's count with groups


def test_the_synthetic_zoo_alexnet_matches_onnxruntime(zoo_alexnet):
    x = {"data_0": 60 * image(1, 3, 224, 224)}  # about the spread of a mean-subtracted image
    got, want = minidl_outputs(load(zoo_alexnet), x), onnxruntime_outputs(zoo_alexnet, x)
    assert_close(got, want)
    assert want[0].max() < 0.5, "the random weights saturate the softmax: nothing is compared"


def test_the_synthetic_zoo_alexnet_on_cuda_matches_the_cpu(zoo_alexnet, kernel_device):
    """The whole zoo graph through the GPU branch: the emulator here, a GPU where there is one."""
    x = {"data_0": 60 * image(1, 3, 224, 224)}
    want = minidl_outputs(load(zoo_alexnet), x)
    assert_close(minidl_outputs(load(zoo_alexnet, device=kernel_device), x), want)


def test_classify_prints_the_top_5_with_names(zoo_alexnet, tmp_path, capsys):
    from PIL import Image

    picture = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.jpg")
    Image.fromarray(picture[::-1]).save(tmp_path / "photo.png")
    example = load_example("classify")
    photos = [str(tmp_path / "photo.jpg"), str(tmp_path / "photo.png")]
    results = example.main(["--onnx", str(zoo_alexnet), *photos])
    printed = capsys.readouterr().out
    names = example.imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    for top5 in results.values():
        assert len(top5) == 5 and all(name in names for name, _ in top5)
        assert [p for _, p in top5] == sorted((p for _, p in top5), reverse=True)
        assert f"1. {top5[0][1]:7.2%}  {top5[0][0]}" in printed
    # the preprocessing is BVLC's: BGR order, mean subtracted, 0..255 scale
    x = example.bvlc_preprocess(tmp_path / "photo.png")
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    flat = Image.fromarray(np.full((50, 60, 3), (200, 100, 50), np.uint8))
    np.testing.assert_allclose(
        example.bvlc_preprocess(flat)[0, :, 0, 0], [50 - 104, 100 - 117, 200 - 123]
    )


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- PyTorch's exporter --------------------------------------------------------------------------
def torch_models():
    """A torchvision-style AlexNet at small sizes (no LRN, no groups; its AdaptiveAvgPool2d is
    left out: PyTorch's exporter cannot write it for a fixed size, and at the 224 input it is the
    identity), and a small net of conv (groups, dilation) / BatchNorm / pooling (padding,
    ceil_mode) / average pooling / log-softmax."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    small_alexnet = nn.Sequential(
        nn.Conv2d(3, 16, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(16, 24, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Dropout(), nn.Linear(24 * 2 * 2, 40), nn.ReLU(),
        nn.Dropout(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 10),
    )  # fmt: skip
    conv_bn_pool = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 6, 2, stride=1, bias=False), nn.AvgPool2d(2, 1, padding=1),
        nn.Flatten(), nn.Linear(6 * 6 * 6, 5), nn.LogSoftmax(dim=1),
    )  # fmt: skip
    for module in conv_bn_pool.modules():  # running statistics that are not 0 and 1
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return {
        "small_alexnet": (small_alexnet, (1, 3, 95, 95)),
        "conv_bn_pool": (conv_bn_pool, (2, 4, 11, 11)),
    }


# dynamo=False: PyTorch's newer exporter needs onnxscript, which is not among our test packages
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.parametrize("name", ["small_alexnet", "conv_bn_pool"])
def test_a_model_exported_by_pytorch_imports_and_matches_pytorch(name, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model, shape = torch_models()[name]
    model.eval()
    x = torch.randn(*shape)
    path = tmp_path / f"{name}.onnx"
    # without constant folding, the exporter keeps BatchNorm as a node of its own (folded, it
    # would be merged into the conv before it)
    torch.onnx.export(
        model, (x,), str(path), input_names=["input"], dynamo=False, do_constant_folding=False
    )
    with torch.no_grad():
        want = model(x).numpy()
    imported = load(path)
    trained = [p for p in model.parameters()]
    assert [p.shape for p in imported.parameters()] == [tuple(p.shape) for p in trained]
    assert_close(minidl_outputs(imported, {"input": x.numpy()}), [want])
    assert_close(onnxruntime_outputs(path, {"input": x.numpy()}), [want])
