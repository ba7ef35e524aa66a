"""The onnx package's backend test suite (``onnx.backend.test``) through minidl's ONNX backend
(``minidl/onnx/backend.py``), on the CPU and on device="cuda" (the kernel emulator here, a GPU
where there is one).

Two kinds of cases, for our op families:

- *node* cases: one node, inputs, expected outputs. The onnx wheel does not ship their data
  files; the suite's own generators (``onnx.backend.test.case.node.<op>``) build them in memory
  when their module is imported, and that is where they are taken from.
- *pytorch-converted* cases: small PyTorch modules exported by the onnx project (Conv2d with
  groups and dilation, MaxPool2d, BatchNorm2d, ...), shipped as model.onnx plus one data set.

Every case of these families runs, or is in EXCLUDED / EXCLUDED_CONVERTED with the reason next
to it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

from minidl.onnx.backend import MinidlBackend  # noqa: E402

# op type -> the suite's generator module (onnx/backend/test/case/node/<module>.py)
NODE_FAMILIES = {
    "Conv": "conv",
    "MaxPool": "maxpool",
    "AveragePool": "averagepool",
    "GlobalAveragePool": "globalaveragepool",
    "LRN": "lrn",
    "BatchNormalization": "batch_normalization",
    "Dropout": "dropout",
    "Gemm": "gemm",
    "MatMul": "matmul",
    "Flatten": "flatten",
    "Reshape": "reshape",
    "Transpose": "transpose",
    "Concat": "concat",
    "Sum": "sum",
    "Relu": "relu",
    "Softmax": "softmax",
    "LogSoftmax": "logsoftmax",
    "SoftmaxCrossEntropyLoss": "softmax_cross_entropy_loss",
    "Abs": "abs",
    "Sqrt": "sqrt",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Clip": "clip",
    "Expand": "expand",
}
PYTORCH_CONVERTED = [
    "test_AvgPool1d",
    "test_AvgPool1d_stride",
    "test_AvgPool2d",
    "test_AvgPool2d_stride",
    "test_BatchNorm1d_3d_input_eval",
    "test_BatchNorm2d_eval",
    "test_BatchNorm2d_momentum_eval",
    "test_BatchNorm3d_eval",
    "test_BatchNorm3d_momentum_eval",
    "test_Conv1d",
    "test_Conv1d_dilated",
    "test_Conv1d_groups",
    "test_Conv1d_pad1",
    "test_Conv1d_pad1size1",
    "test_Conv1d_pad2",
    "test_Conv1d_pad2size1",
    "test_Conv1d_stride",
    "test_Conv2d",
    "test_Conv2d_depthwise",
    "test_Conv2d_depthwise_padded",
    "test_Conv2d_depthwise_strided",
    "test_Conv2d_depthwise_with_multiplier",
    "test_Conv2d_dilated",
    "test_Conv2d_groups",
    "test_Conv2d_groups_thnn",
    "test_Conv2d_no_bias",
    "test_Conv2d_padding",
    "test_Conv2d_strided",
    "test_Linear",
    "test_Linear_no_bias",
    "test_LogSoftmax",
    "test_MaxPool1d",
    "test_MaxPool1d_stride",
    "test_MaxPool1d_stride_padding_dilation",
    "test_MaxPool2d",
    "test_MaxPool2d_stride_padding_dilation",
    "test_ReLU",
    "test_Sigmoid",
    "test_Softmax",
    "test_log_softmax_dim3",
    "test_log_softmax_lastdim",
    "test_softmax_functional_dim3",
    "test_softmax_lastdim",
    "test_Tanh",
]

# The cases of these families that do not run, each with its reason: a real limitation.
THREE_D = "3-D windows (N, C, D, H, W): minidl's conv2d and max_pool2d are 2-D (1-D is lifted)"
RANDOM = "training-mode dropout draws a random mask; minidl's generator is not NumPy's"
EXCLUDED = {
    "test_maxpool_3d_default": THREE_D,
    "test_maxpool_3d_dilations": THREE_D,
    "test_maxpool_3d_dilations_use_ref_impl": THREE_D,
    "test_maxpool_3d_dilations_use_ref_impl_large": THREE_D,
    "test_averagepool_3d_default": THREE_D,
    "test_averagepool_3d_dilations_small": THREE_D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True": THREE_D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False": THREE_D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True": THREE_D,
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False": THREE_D,
    "test_training_dropout": RANDOM,
    "test_training_dropout_default": RANDOM,
    "test_training_dropout_mask": RANDOM,
    "test_training_dropout_default_mask": RANDOM,
    "test_dropout_random_old": RANDOM,
}


OTHER_FAMILY = "not one of our op families: the importer reports the op as unsupported"
EXCLUDED_CONVERTED = {
    "test_AvgPool3d": THREE_D,
    "test_AvgPool3d_stride": THREE_D,
    "test_AvgPool3d_stride1_pad0_gpu_input": THREE_D,
    "test_Conv3d": THREE_D,
    "test_Conv3d_dilated": THREE_D,
    "test_Conv3d_dilated_strided": THREE_D,
    "test_Conv3d_groups": THREE_D,
    "test_Conv3d_no_bias": THREE_D,
    "test_Conv3d_stride": THREE_D,
    "test_Conv3d_stride_padding": THREE_D,
    "test_MaxPool3d": THREE_D,
    "test_MaxPool3d_stride": THREE_D,
    "test_MaxPool3d_stride_padding": THREE_D,
    "test_ConvTranspose2d": "ConvTranspose: minidl has no transposed convolution (out of scope)",
    "test_ConvTranspose2d_no_bias": "ConvTranspose (as above)",
    **dict.fromkeys(
        [
            "test_ConstantPad2d", "test_ReflectionPad2d", "test_ReplicationPad2d",
            "test_ZeroPad2d", "test_ELU", "test_SELU", "test_LeakyReLU",
            "test_LeakyReLU_with_negval", "test_PReLU_1d", "test_PReLU_1d_multiparam",
            "test_PReLU_2d", "test_PReLU_2d_multiparam", "test_PReLU_3d",
            "test_PReLU_3d_multiparam", "test_Softplus",
            "test_Softsign", "test_Softmin", "test_GLU", "test_GLU_dim", "test_Embedding",
            "test_Embedding_sparse", "test_PixelShuffle", "test_PoissonNLLLLoss_no_reduce",
        ],
        OTHER_FAMILY,
    ),
}  # fmt: skip


def generated_node_cases() -> dict:
    """{name: TestCase} for the one-node cases of NODE_FAMILIES, built by the suite's generators.
    The function-expanded variants (``*_expanded``) are not ours: they test the primitive ops a
    function body is made of (ReduceMax, Exp, Where, ...), which minidl does not import."""
    from onnx.backend.test.case import node as cases

    for module in NODE_FAMILIES.values():
        importlib.import_module(f"onnx.backend.test.case.node.{module}")
    found = {}
    for case in cases._NodeTestCases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in NODE_FAMILIES:
            found[case.name] = case
    return found


NODE_CASES = generated_node_cases()
CONVERTED = Path(onnx.backend.test.__file__).parent / "data" / "pytorch-converted"


def read_data_set(folder: Path):
    """The inputs and expected outputs of one pytorch-converted data set (TensorProto files)."""

    def read(kind):
        files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]

    return read("input"), read("output")


def check(outputs, expected, rtol: float, atol: float, name: str):
    assert len(outputs) == len(expected), (
        f"{name}: {len(outputs)} outputs, {len(expected)} expected"
    )
    for i, (got, want) in enumerate(zip(outputs, expected)):
        assert got.dtype == want.dtype, (
            f"{name} output {i}: dtype {got.dtype}, expected {want.dtype}"
        )
        assert got.shape == want.shape, (
            f"{name} output {i}: shape {got.shape}, expected {want.shape}"
        )
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{name} output {i}")


def run_node_case(name: str, device: str):
    case = NODE_CASES[name]
    rep = MinidlBackend.prepare(case.model, device)
    assert rep.model.device == device.lower()  # inputs go there, even without any weight
    for inputs, expected in case.data_sets:
        check(rep.run(inputs), expected, case.rtol, case.atol, name)


def run_converted_case(name: str, device: str):
    model = onnx.load(str(CONVERTED / name / "model.onnx"))
    inputs, expected = read_data_set(CONVERTED / name / "test_data_set_0")
    check(MinidlBackend.prepare(model, device).run(inputs), expected, 1e-3, 1e-7, name)


RUN = sorted(name for name in NODE_CASES if name not in EXCLUDED)


@pytest.mark.parametrize("name", RUN)
def test_node_case_on_cpu(name):
    run_node_case(name, "CPU")


@pytest.mark.parametrize("name", RUN)
def test_node_case_on_cuda(name, kernel_device):
    run_node_case(name, "CUDA")


@pytest.mark.parametrize("name", PYTORCH_CONVERTED)
def test_pytorch_converted_case_on_cpu(name):
    run_converted_case(name, "CPU")


@pytest.mark.parametrize("name", PYTORCH_CONVERTED)
def test_pytorch_converted_case_on_cuda(name, kernel_device):
    run_converted_case(name, "CUDA")


def test_the_exclusions_name_real_cases():
    """A renamed or vanished case would leave a stale exclusion that hides nothing, and every
    pytorch-converted case the wheel ships is either run or excluded with its reason."""
    assert not set(EXCLUDED) - set(NODE_CASES)
    assert len(RUN) >= 100, f"only {len(RUN)} node cases found: the generators changed?"
    shipped = {p.name for p in CONVERTED.iterdir() if (p / "model.onnx").is_file()}
    assert shipped == set(PYTORCH_CONVERTED) | set(EXCLUDED_CONVERTED)
    assert not set(PYTORCH_CONVERTED) & set(EXCLUDED_CONVERTED)


def test_the_backend_answers_the_suite_interface():
    assert MinidlBackend.supports_device("CPU")
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    x = np.array([[-1.0, 2.0]], dtype=np.float32)
    (y,) = MinidlBackend.run_node(node, [x])
    np.testing.assert_array_equal(y, [[0.0, 2.0]])
