"""An AlexNet-shaped stand-in for the ONNX model zoo's ``bvlcalexnet``, with random weights.

The real file (``validated/vision/classification/alexnet/model/bvlcalexnet-12.onnx`` in
github.com/onnx/models, 233 MB, 54.80% top-1 on ImageNet) is BVLC's Caffe AlexNet converted to
ONNX: the paper's network with LRN and two towers (group=2 in conv2, conv4 and conv5), input
``data_0`` of shape (1, 3, 224, 224) holding a BGR image with the mean subtracted, output
``prob_1`` (1, 1000), softmax probabilities. It is not on the machines the tests run on, so the
tests, ``examples/classify.py`` and the notebook ``07_inside_alexnet`` run on this file instead.

The onnx package ships the zoo's graph without its weights
(``onnx/backend/test/data/light/light_bvlc_alexnet.onnx``: each weight is a ConstantOfShape
node filling the weight's shape with 0.02). ``synthetic_bvlc_alexnet`` keeps that graph, node for
node and name for name, and puts random initializers in place of those nodes, so the file has the
zoo's layout: the same value names (``conv1_w_0``, ``fc8_b_0``, ...), the same attributes (LRN
alpha 1e-4 and bias 1 in ONNX's convention, pool5's pads (0, 0, 1, 1) that reproduce Caffe's
ceil-mode pooling), and the opset asked for, with the attribute forms of that opset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def light_alexnet_path() -> Path:
    """Where the onnx package keeps the zoo's weightless AlexNet graph."""
    import onnx.backend.test

    data = Path(onnx.backend.test.__file__).parent / "data" / "light"
    return data / "light_bvlc_alexnet.onnx"


def random_weight(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    """He-scaled uniform weights (PyTorch's kaiming_uniform: activations keep their size layer
    after layer), small biases, and fc8 a hundred times smaller, so that the softmax of a
    mean-subtracted image (pixels of about +-100) spreads over many classes instead of saturating
    on one. Uniform rather than normal values: drawing 61 million of them takes a third of the
    time."""
    values = rng.random(shape, dtype=np.float32) * np.float32(2) - np.float32(1)  # U(-1, 1)
    if name.endswith("_b_0"):
        return values * np.float32(0.01)
    bound = np.sqrt(6.0 / np.prod(shape[1:])) * (0.01 if name.startswith("fc8") else 1.0)
    return values * np.float32(bound)


def weights_from_shapes(graph, rng: np.random.Generator) -> dict:
    """{weight name: random array} for each ConstantOfShape node of the light graph."""
    from onnx import numpy_helper

    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {}
    for node in graph.node:
        if node.op_type == "ConstantOfShape":
            name = node.output[0]
            shape = tuple(int(d) for d in shapes[node.input[0]])
            weights[name] = random_weight(name, shape, rng)
    return weights


def attributes_for_opset(node, opset: int) -> None:
    """Rewrite one node's attributes into the form ``opset`` uses (the light graph is opset 9)."""
    from onnx import helper

    if node.op_type == "Dropout" and opset >= 12:  # the ratio became an input (0.5 by default)
        kept = [a for a in node.attribute if a.name != "ratio"]
        del node.attribute[:]
        node.attribute.extend(kept)
    if node.op_type == "Dropout" and opset < 7:  # inference was marked by is_test=1
        node.attribute.append(helper.make_attribute("is_test", 1))
    if node.op_type == "Gemm" and opset < 7:  # C broadcast only when asked
        node.attribute.append(helper.make_attribute("broadcast", 1))


def synthetic_bvlc_alexnet(path, opset: int = 9, seed: int = 0) -> Path:
    """Write an AlexNet-shaped ONNX file in the zoo's layout, with random weights drawn from
    ``seed``, for the operator set ``opset`` (3 to 21; the zoo has 3, 6, 7, 8, 9 and 12; the light
    graph is 9). Returns the path."""
    import onnx
    from onnx import helper, numpy_helper

    if not 3 <= opset <= 21:
        raise ValueError(f"synthetic_bvlc_alexnet: opset must be in 3..21, got {opset}")
    light = onnx.load(str(light_alexnet_path()))
    graph = light.graph
    weights = weights_from_shapes(graph, np.random.default_rng(seed))
    reshape_shape = numpy_helper.to_array(
        next(t for t in graph.initializer if t.name == "OC2_DUMMY_1")
    )
    nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape":
            continue
        if node.op_type == "Reshape" and opset < 5:  # the shape was an attribute
            shape = [int(d) for d in reshape_shape]
            node = helper.make_node("Reshape", node.input[:1], node.output, node.name, shape=shape)
        attributes_for_opset(node, opset)
        nodes.append(node)
    initializers = [numpy_helper.from_array(v, name) for name, v in weights.items()]
    if opset >= 5:
        initializers.append(numpy_helper.from_array(reshape_shape, "OC2_DUMMY_1"))
    # as in the zoo's files (IR version 3), each weight is listed among the graph's inputs too
    inputs = [graph.input[0]] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers
    ]
    new_graph = helper.make_graph(nodes, graph.name, inputs, list(graph.output), initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(new_graph, opset_imports=opsets, producer_name="minidl-zoo")
    # IR version 3, as the zoo's files up to opset 8; the first IR version that knows a newer opset
    model.ir_version = 3 if opset <= 8 else helper.find_min_ir_version_for(opsets)
    path = Path(path)
    onnx.save(model, str(path))
    return path


# ---- the zoo file's own preprocessing and labels -------------------------------------------------
# Caffe's ImageNet mean, per channel in the file's channel order (B, G, R), on the 0..255 scale
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)


def bvlc_preprocess(image, size: int = 224) -> np.ndarray:
    """An image (a path or a PIL image) as BVLC's Caffe AlexNet wants it: (1, 3, size, size)
    float32. Caffe's ImageNet recipe: resize to 256 x 256 (the whole image, warped, as its data
    layer did), crop the centre size x size, reorder RGB to BGR (OpenCV's order, which Caffe
    used), and subtract the mean pixel; the values stay on the 0..255 scale (no division by 255,
    no division by a standard deviation, unlike torchvision's models)."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.open(image)
    picture = picture.convert("RGB").resize((256, 256), Image.BILINEAR)
    top = (256 - size) // 2
    picture = picture.crop((top, top, top + size, top + size))
    bgr = np.asarray(picture, dtype=np.float32)[:, :, ::-1]  # (H, W, RGB) -> (H, W, BGR)
    return np.ascontiguousarray((bgr - BGR_MEAN).transpose(2, 0, 1)[None])  # (1, 3, H, W)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in the order of the models' outputs (class 0 "tench" to
    999 "toilet tissue"): the list pytorch/hub publishes as imagenet_classes.txt, shipped here."""
    path = Path(__file__).with_name("imagenet_classes.txt")
    names = path.read_text().splitlines()
    if len(names) != 1000:
        raise ValueError(f"{path}: expected 1000 class names, found {len(names)}")
    return names
