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


def test_load_state_dict_not_strict_loads_what_matches_as_torch():
    torch = pytest.importorskip("torch")
    a, b = small_net(), small_net()
    state = {k: v for k, v in a.state_dict().items() if k != "0.bias"}
    state["extra"] = np.zeros(1)
    result = b.load_state_dict(state, strict=False)
    assert result.missing_keys == ["0.bias"] and result.unexpected_keys == ["extra"]
    assert np.array_equal(b[0].weight.numpy(), a[0].weight.numpy())
    assert not np.array_equal(b[0].bias.numpy(), a[0].bias.numpy())  # left as it was
    assert b.load_state_dict(a.state_dict()) == ([], [])
    assert repr(b.load_state_dict(a.state_dict())) == "<All keys matched successfully>"
    theirs = torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(3, 2)}, strict=False)
    assert list(theirs.missing_keys) == ["bias"] and list(theirs.unexpected_keys) == []


def test_a_torch_state_dict_loads_into_the_same_model_with_batchnorm():
    """PyTorch's state dict (torch Tensors, BatchNorm's num_batches_tracked included) loads as
    is, and the model then computes what torch's computes."""
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()
    ).double()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    theirs(torch.tensor(x))  # training: the running statistics and the counter move
    ours = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert int(ours[1].num_batches_tracked.numpy()) == 1
    ours.eval(), theirs.eval()
    np.testing.assert_allclose(
        ours(mdl.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10
    )


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


# ---- PyTorch habits (issue #21) ------------------------------------------------------------------
def test_a_layer_used_twice_is_listed_once_first_name_wins_as_torch():
    torch = pytest.importorskip("torch")
    layer = nn.Linear(2, 2)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    their_layer = torch.nn.Linear(2, 2)
    theirs = torch.nn.Sequential(their_layer, torch.nn.ReLU(), their_layer)
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in theirs.named_parameters()] == ["0.weight", "0.bias"]
    assert len(model.parameters()) == 2
    assert model.num_parameters() == 6
    # state_dict keeps both names, as PyTorch's does
    assert list(model.state_dict()) == list(theirs.state_dict())


def test_assigning_a_tensor_over_a_parameter_raises_as_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="as parameter 'weight'"):
        t = torch.nn.Linear(2, 2)
        t.weight = t.weight * 2
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'weight'"):
        m.weight = m.weight * 2
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]


def test_in_place_update_under_no_grad_keeps_the_parameter_and_its_place():
    m = nn.Linear(2, 3)
    w = m.weight
    before = w.numpy().copy()
    with mdl.no_grad():
        m.weight *= 0.5
    assert m.weight is w
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    np.testing.assert_allclose(m.weight.numpy(), before * 0.5)


def test_a_hand_written_sgd_step_updates_the_model():
    m = nn.Linear(2, 1)
    x = mdl.tensor(np.ones((1, 2), np.float32))
    m(x).sum().backward()
    before = m.weight.numpy().copy()
    with mdl.no_grad():
        for p in m.parameters():
            p -= 0.1 * p.grad
    np.testing.assert_allclose(m.weight.numpy(), before - 0.1)
