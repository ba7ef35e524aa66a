"""Classify images with an ImageNet model from an ONNX file: the top-5 classes, with their names.

    python examples/classify.py --onnx bvlcalexnet-12.onnx cat.jpg dog.png
    python examples/classify.py --onnx bvlcalexnet-12.onnx --device cuda cat.jpg

The model is BVLC's Caffe AlexNet, trained on ImageNet: the paper's network (LRN, two towers)
as the ONNX model zoo publishes it. Get ``bvlcalexnet-12.onnx`` (233 MB) from
github.com/onnx/models, folder validated/vision/classification/alexnet/model/ (the zoo reports
54.80% top-1 and 78.23% top-5 on the ImageNet validation set for it). It is imported with
``minidl.onnx.importer.load``: every layer runs on minidl's own ops.

The file's own preprocessing is BVLC's Caffe recipe, not torchvision's (minidl/onnx/zoo.py,
``bvlc_preprocess``):

1. resize the image to 256 x 256 (warped, as Caffe's ImageNet data layer did);
2. crop the centre 224 x 224 (the file's input ``data_0`` is (1, 3, 224, 224));
3. reorder the channels RGB -> BGR;
4. subtract the mean pixel B, G, R = 104, 117, 123 (the zoo's note; Caffe also shipped a mean
   image, whose per-channel average this is);
5. keep the 0..255 scale: no division by 255, no standard deviation.

The output ``prob_1`` is already a softmax; a file whose output is logits gets one here. The class
names are the 1000 ImageNet synsets in the models' order (minidl/onnx/imagenet_classes.txt).
Without the real file, ``--synthetic`` first writes an AlexNet of the same layout with random
weights to the ``--onnx`` path (what the tests do): its answers are meaningless, its shapes
and its preprocessing are the real file's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import minidl as mdl  # noqa: E402
from minidl.onnx.importer import load  # noqa: E402
from minidl.onnx.zoo import bvlc_preprocess, imagenet_classes, synthetic_bvlc_alexnet  # noqa: E402


def probabilities(output: np.ndarray) -> np.ndarray:
    """The model's output as probabilities: kept if it already is a softmax, else given one."""
    rows = output.reshape(output.shape[0], -1).astype(np.float64)
    if rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return rows
    exp = np.exp(rows - rows.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def classify(model, image_path, names: list[str], top: int = 5) -> list[tuple[str, float]]:
    """The ``top`` (class name, probability) pairs for one image, most likely first."""
    (name,) = model.input_names
    size = model.input_shapes[name][-1] or 224
    with mdl.no_grad():
        output = model(bvlc_preprocess(image_path, size)).numpy()
    p = probabilities(output)[0]
    best = np.argsort(-p)[:top]
    return [(names[i], float(p[i])) for i in best]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, type=Path, help="the model file (.onnx)")
    parser.add_argument("images", nargs="+", type=Path, help="JPEG or PNG files")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print")
    parser.add_argument(
        "--synthetic", action="store_true", help="first write a random-weight AlexNet to --onnx"
    )
    args = parser.parse_args(argv)
    if args.synthetic:
        synthetic_bvlc_alexnet(args.onnx, opset=12)
    model = load(args.onnx, device=args.device)
    names = imagenet_classes()
    results = {}
    for image_path in args.images:
        results[str(image_path)] = classify(model, image_path, names, args.top)
        print(f"{image_path}:")
        for rank, (name, p) in enumerate(results[str(image_path)], start=1):
            print(f"  {rank}. {p:7.2%}  {name}")
    return results


if __name__ == "__main__":
    main()
