import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl.models.alexnet import AlexNet, SmallAlexNet, feature_size
from minidl.testing import torch_twin


def test_parameter_counts_match_the_paper():
    assert AlexNet().num_parameters() == 60_965_224
    assert AlexNet(groups=1).num_parameters() == 62_378_344


def test_every_layer_output_shape_at_227():
    rows = AlexNet(num_classes=1000).summary((3, 227, 227), show=False)
    shapes = {name.split(".")[-1]: shape for name, _, shape, _ in rows}
    assert shapes["conv1"] == (96, 55, 55) and shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27) and shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13) and shapes["conv4"] == (384, 13, 13)
    assert shapes["conv5"] == (256, 13, 13) and shapes["pool5"] == (256, 6, 6)
    assert shapes["fc6"] == (4096,) and shapes["fc8"] == (1000,)


@pytest.mark.parametrize("size, side", [(227, 6), (224, 5)])
def test_flatten_width_follows_input_size(size, side):
    assert feature_size(size) == side
    net = AlexNet(num_classes=10, in_channels=1, input_size=size)
    assert net.classifier.fc6.weight.shape == (4096, 256 * side * side)


def test_paper_and_caffe_inits():
    mdl.manual_seed(0)
    net = AlexNet(num_classes=10, init="paper")
    biases = {name: p.numpy() for name, p in net.named_parameters() if name.endswith("bias")}
    for layer in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert np.all(next(v for k, v in biases.items() if layer in k) == 1.0)
    for layer in ("conv1", "conv3", "fc8"):
        assert np.all(next(v for k, v in biases.items() if layer in k) == 0.0)
    assert abs(net.features.conv3.weight.numpy().std() - 0.01) < 1e-3
    caffe = AlexNet(num_classes=10, init="caffe")
    assert abs(caffe.classifier.fc6.weight.numpy().std() - 0.005) < 1e-4
    assert np.all(caffe.features.conv2.bias.numpy() == np.float32(0.1))
    with pytest.raises(ValueError, match="init must be one of"):
        AlexNet(init="xavier-ish")


def paper_alexnet_in_torch(torch, num_classes, feature_side):
    """The paper's table written out in PyTorch by hand (its LRN alpha is ours times size)."""
    nn = torch.nn
    return [
        nn.Conv2d(3, 96, 11, stride=4),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * feature_side**2, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, num_classes),
    ]


def test_the_pytorch_twin_is_the_paper_layer_for_layer():
    """models/alexnet.py's table against the paper's, through torch_twin; the names of the state
    dict are ours."""
    torch = pytest.importorskip("torch")
    net = AlexNet(num_classes=10, input_size=67)
    twin = torch_twin(net)
    leaves = [m for m in twin.modules() if not list(m.children())]
    expected = paper_alexnet_in_torch(torch, 10, feature_side=1)
    assert [repr(m) for m in leaves] == [repr(m) for m in expected]
    assert list(twin.state_dict()) == list(net.state_dict())


@pytest.mark.slow
def test_logits_and_every_gradient_equal_a_pytorch_twin():
    torch = pytest.importorskip("torch")
    mdl.manual_seed(0)
    net = AlexNet(num_classes=10, init="kaiming").double().eval()
    twin = torch_twin(net).eval()  # float64, with our weights
    assert isinstance(twin.features.conv2, torch.nn.Conv2d) and twin.features.conv2.groups == 2
    x = np.random.default_rng(0).standard_normal((2, 3, 227, 227))
    y = np.array([3, 7])
    loss = F.cross_entropy(net(mdl.tensor(x)), y)
    loss.backward()
    logits = twin(torch.tensor(x))
    torch_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    torch_loss.backward()
    np.testing.assert_allclose(
        net(mdl.tensor(x)).numpy(), logits.detach().numpy(), rtol=1e-7, atol=1e-9
    )
    assert abs(loss.item() - torch_loss.item()) < 1e-9
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        scale = np.abs(q.grad.numpy()).max()
        np.testing.assert_allclose(
            p.grad.numpy(), q.grad.numpy(), rtol=1e-6, atol=1e-9 * scale, err_msg=name
        )


def test_small_alexnet_shapes_and_a_step():
    net = SmallAlexNet(num_classes=10)
    rows = net.summary((1, 28, 28), show=False)
    assert rows[-1][2] == (10,)
    x = mdl.tensor(np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32))
    loss = F.cross_entropy(net(x), np.array([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_alexnet_forward_on_the_emulated_gpu_matches_cpu(monkeypatch):
    """The same AlexNet (float64, eval) on the kernel path and the NumPy path; small input."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    mdl.manual_seed(0)
    net = AlexNet(num_classes=10, init="kaiming", input_size=67).double().eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 67, 67))
    cpu = net(mdl.tensor(x)).numpy()
    net.to("cuda")
    gpu = net(mdl.tensor(x, device="cuda")).numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_alexnet_forward_on_gpu_matches_cpu_float64(kernel_device):
    mdl.manual_seed(0)
    net = AlexNet(num_classes=10, init="kaiming").double().eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 227, 227))
    cpu = net(mdl.tensor(x)).numpy()
    net.to(kernel_device)
    gpu = net(mdl.tensor(x, device=kernel_device)).numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-11)
