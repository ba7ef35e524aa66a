import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import nn


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.LocalResponseNorm(3, alpha=1e-3),
        nn.MaxPool2d(3, 2),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 10),
    )


def test_parameters_in_definition_order_weight_before_bias():
    names = [n for n, _ in small_net().named_parameters()]
    assert names == ["0.weight", "0.bias", "6.weight", "6.bias"]


def test_state_dict_round_trip_and_errors():
    a, b = small_net(), small_net()
    b.load_state_dict(a.state_dict())
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p.numpy(), q.numpy())
    state = a.state_dict()
    with pytest.raises(KeyError, match="missing entries"):
        b.load_state_dict({k: v for k, v in state.items() if k != "0.bias"})
    with pytest.raises(KeyError, match="unexpected entries"):
        b.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"0.weight has shape \(8, 3, 2, 2\)"):
        b.load_state_dict({**state, "0.weight": np.zeros((8, 3, 2, 2))})


def test_train_eval_switches_dropout():
    net = small_net()
    x = mdl.tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    net.eval()
    assert np.array_equal(net(x).numpy(), net(x).numpy())
    net.train()
    assert all(m.training for m in net.modules())


def test_double_float_and_to_keep_parameter_identity(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    net = small_net()
    params = net.parameters()
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    net.to("cuda")
    assert all(p.device == "cuda" for p in net.parameters())
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    net.float().to("cpu")
    assert all(p.dtype == np.float32 and p.device == "cpu" for p in net.parameters())


def test_zero_grad_and_summary(capsys):
    net = small_net()
    out = net(mdl.tensor(np.zeros((2, 3, 8, 8), np.float32)))
    F.cross_entropy(out, np.array([1, 2])).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    rows = net.summary((3, 8, 8))
    assert [r[2] for r in rows] == [
        (8, 8, 8),
        (8, 8, 8),
        (8, 8, 8),
        (8, 3, 3),
        (8, 3, 3),
        (72,),
        (10,),
    ]
    assert rows[0][3] == 8 * 3 * 9 + 8
    printed = capsys.readouterr().out
    assert "total parameters: 954" in printed and "Conv2d" in printed


def test_initializers_have_the_right_statistics():
    mdl.manual_seed(0)
    w = nn.Parameter(np.zeros((256, 128, 3, 3), np.float32))
    nn.init.normal_(w, 0.0, 0.01)
    assert abs(w.numpy().std() - 0.01) < 2e-4
    nn.init.kaiming_normal_(w)
    assert abs(w.numpy().std() - np.sqrt(2 / (128 * 9))) < 1e-3
    nn.init.xavier_uniform_(w)
    bound = np.sqrt(6 / (128 * 9 + 256 * 9))
    assert w.numpy().max() <= bound and w.numpy().min() >= -bound
    nn.init.constant_(w, 1.0)
    assert np.all(w.numpy() == 1.0) and w.dtype == np.float32


def test_layer_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="odd"):
        nn.LocalResponseNorm(4)
