import numpy as np
import pytest

import minidl as mdl
from minidl import optim
from minidl.nn import Parameter


def quadratic_grads(params, step):
    """Deterministic fake gradients, different every step."""
    for i, p in enumerate(params):
        g = np.sin(np.arange(p.numel()).reshape(p.shape) + step + i).astype(p.dtype)
        p.grad = mdl.tensor(g, device=p.device)


def run(rule, lr_schedule, device="cpu", dtype=np.float64):
    mdl.manual_seed(0)
    params = [Parameter(np.linspace(-1, 1, 12).reshape(3, 4).astype(dtype), device=device)]
    opt = optim.SGD(params, lr=lr_schedule[0], momentum=0.9, weight_decay=5e-4, rule=rule)
    for step, lr in enumerate(lr_schedule):
        opt.lr = lr
        quadratic_grads(params, step)
        opt.step()
    return params[0].numpy()


def test_paper_rule_is_exactly_the_papers_update():
    w0 = np.linspace(-1, 1, 12).reshape(3, 4)
    w, v = w0.copy(), np.zeros_like(w0)
    lrs = [0.01] * 3 + [0.001] * 3
    for step, lr in enumerate(lrs):
        g = np.sin(np.arange(12).reshape(3, 4) + step)
        v = 0.9 * v - 0.0005 * lr * w - lr * g  # section 5 of the paper, verbatim
        w = w + v
    np.testing.assert_allclose(run("paper", lrs), w, rtol=1e-14)


def test_pytorch_rule_matches_torch():
    torch = pytest.importorskip("torch")
    lrs = [0.01] * 3 + [0.001] * 3
    p = torch.tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=5e-4)
    for step, lr in enumerate(lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(np.sin(np.arange(12).reshape(3, 4) + step))
        opt.step()
    np.testing.assert_allclose(run("pytorch", lrs), p.detach().numpy(), rtol=1e-12)


def test_rules_agree_with_constant_lr_and_differ_after_a_drop():
    np.testing.assert_allclose(run("paper", [0.01] * 5), run("pytorch", [0.01] * 5), rtol=1e-12)
    assert not np.allclose(run("paper", [0.01, 0.001, 0.001]), run("pytorch", [0.01, 0.001, 0.001]))


@pytest.mark.parametrize("rule", ["pytorch", "paper"])
def test_sgd_kernel_matches_numpy(rule, kernel_device, dtype):
    lrs = [0.01, 0.01, 0.001]
    expected = run(rule, lrs, "cpu", dtype)
    np.testing.assert_allclose(
        run(rule, lrs, kernel_device, dtype), expected, rtol=1e-5 if dtype == np.float32 else 1e-12
    )


def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    p = torch.tensor(np.linspace(-1, 1, 6), requires_grad=True)
    ours = Parameter(np.linspace(-1, 1, 6))
    topt = torch.optim.Adam([p], lr=0.01, weight_decay=0.1)
    opt = optim.Adam([ours], lr=0.01, weight_decay=0.1)
    for step in range(5):
        g = np.cos(np.arange(6) * (step + 1))
        p.grad = torch.tensor(g)
        ours.grad = mdl.tensor(g)
        topt.step()
        opt.step()
    np.testing.assert_allclose(ours.numpy(), p.detach().numpy(), rtol=1e-10)


def test_schedules():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.01)
    step = optim.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(4):
        step.step()
    assert abs(opt.lr - 1e-4) < 1e-12
    opt.lr = 0.01
    plateau = optim.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=1)
    for accuracy in [0.5, 0.6, 0.6, 0.6]:
        plateau.step(accuracy)
    assert abs(opt.lr - 0.001) < 1e-12  # two epochs without improvement (patience 1): lr / 10
    plateau.step(0.7)
    assert abs(opt.lr - 0.001) < 1e-12


def test_optimizer_state_round_trip():
    p = Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = mdl.tensor(np.ones(3))
    opt.step()
    state = opt.state_dict()
    fresh = optim.SGD([p], lr=0.5, momentum=0.9)
    fresh.load_state_dict(state)
    assert fresh.lr == 0.1
    np.testing.assert_array_equal(fresh.state[0]["velocity"], opt.state[0]["velocity"])


# ---- parameters own their storage (issue #21) ----------------------------------------------------
def sgd_step_on_square(p, lr=0.1):
    """One SGD step on sum(p * p): p <- p - lr * 2p."""
    loss = (p * p).sum()
    loss.backward()
    optim.SGD([p], lr=lr).step()


def test_sgd_updates_a_parameter_made_from_a_transposed_array_as_torch():
    torch = pytest.importorskip("torch")
    p = Parameter(np.ones((3, 4), np.float32).T)
    sgd_step_on_square(p)
    expected = torch.nn.Parameter(torch.from_numpy(np.ones((3, 4), np.float32).T))
    (expected * expected).sum().backward()
    torch.optim.SGD([expected], lr=0.1).step()
    np.testing.assert_allclose(p.numpy(), expected.detach().numpy())
    assert np.allclose(p.numpy(), 0.8)


def test_sgd_updates_a_parameter_loaded_from_a_transposed_array():
    model = mdl.nn.Linear(3, 4, bias=False)
    model.load_state_dict({"weight": np.ones((3, 4), np.float32).T})
    sgd_step_on_square(model.weight)
    assert np.allclose(model.weight.numpy(), 0.8)


def test_sgd_refuses_a_parameter_whose_array_is_not_contiguous():
    p = Parameter(np.ones((3, 4), np.float32))
    p.grad = mdl.tensor(np.ones((3, 4), np.float32))
    p.data = np.ones((4, 3), np.float32).T  # set by hand: the step cannot update it in place
    with pytest.raises(RuntimeError, match="C-contiguous"):
        optim.SGD([p], lr=0.1).step()


def test_tensor_and_parameter_copy_the_callers_array_as_torch_tensor():
    initial = np.ones((2, 3), np.float32)
    a, b = Parameter(initial), Parameter(initial)
    sgd_step_on_square(a)
    assert np.all(initial == 1.0), "the step wrote into the caller's array"
    assert np.all(b.numpy() == 1.0), "two parameters made from one array are tied"
    t = mdl.tensor(initial)
    initial[0, 0] = 5.0
    assert t.numpy()[0, 0] == 1.0


def test_from_numpy_shares_the_array_as_torch_from_numpy():
    a = np.zeros(3, np.float32)
    t = mdl.from_numpy(a)
    a[0] = 2.0
    assert t.numpy()[0] == 2.0
    with mdl.no_grad():
        t += 1.0
    np.testing.assert_array_equal(a, [3.0, 1.0, 1.0])
    assert t.dtype == np.float32 and not t.requires_grad
    with pytest.raises(TypeError, match="from_numpy"):
        mdl.from_numpy([1.0, 2.0])


def test_an_optimizer_refuses_a_parameter_listed_twice():
    # PyTorch warns ("duplicate parameters; in future, this will cause an error") and steps it
    # twice; we refuse.
    p = Parameter(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.Adam([p, Parameter(np.ones(2, np.float32)), p])


def test_a_layer_used_twice_is_stepped_once():
    layer = mdl.nn.Linear(2, 2)
    model = mdl.nn.Sequential(layer, mdl.nn.ReLU(), layer)
    opt = optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = mdl.tensor(np.ones(p.shape, np.float32))
    before = layer.bias.numpy().copy()
    opt.step()
    np.testing.assert_allclose(layer.bias.numpy(), before - 0.1)


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("change", ["in_place", "copy_", "load_state_dict"])
def test_a_16bit_weight_changed_through_the_tensor_is_not_overwritten_by_the_master(
    optimizer, change
):
    """A 16-bit weight's float32 master copy is made anew when the weight was changed through
    the tensor since the optimizer wrote it; the stale master was written back over the change
    at the next step (a weight halved, reloaded or reset by hand came back)."""
    from minidl import nn

    layer = nn.Linear(4, 3, bias=False).astype(np.float16)
    make = getattr(optim, optimizer)
    opt = make(layer.parameters(), lr=0.01)
    x = mdl.tensor(np.ones((2, 4), np.float16))

    def step():
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()

    step()
    new = np.full((3, 4), 0.25, np.float16)
    with mdl.no_grad():
        if change == "in_place":
            layer.weight *= 0
            layer.weight += mdl.tensor(new)
        elif change == "copy_":
            layer.weight.copy_(new)
        else:
            layer.load_state_dict({"weight": new})
    step()
    # one step from the new weight, not from the old master: SGD moves each entry by lr * 2
    # (the gradient of the sum over a batch of two ones), Adam by about lr
    moved = layer.weight.numpy().astype(np.float32) - new.astype(np.float32)
    assert np.abs(moved).max() <= 0.021, moved


def test_lr_nan_is_refused_as_pytorch_refuses_it():
    with pytest.raises(ValueError, match="lr must be >= 0, got nan"):
        optim.SGD([Parameter(np.ones(3, np.float32))], lr=float("nan"))


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_param_groups_read_and_write_as_torch(name):
    """A loop written for PyTorch changes the learning rate through param_groups."""
    torch = pytest.importorskip("torch")
    w0 = np.array([1.0, -2.0, 3.0])
    results = []
    for lib, make in ((mdl, mdl.tensor), (torch, torch.tensor)):
        w = make(w0.copy(), requires_grad=True)
        opt = getattr(lib.optim, name)([w], lr=0.1, weight_decay=0.01)
        for _ in range(3):
            for group in opt.param_groups:
                group["lr"] *= 0.5
            opt.zero_grad()
            (w * w * w).sum().backward()
            opt.step()
        results.append((w.detach().numpy(), opt.param_groups[0]["lr"]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)
    assert results[0][1] == results[1][1] == pytest.approx(0.0125)
    ours = getattr(optim, name)([mdl.tensor(w0, requires_grad=True)], lr=0.1)
    assert ours.param_groups[0]["weight_decay"] == 0.0 and len(ours.param_groups) == 1
    with pytest.raises(KeyError, match="'nesterov' cannot be set here"):
        ours.param_groups[0]["nesterov"] = True
    with pytest.raises(ValueError, match="lr must be >= 0"):
        ours.param_groups[0]["lr"] = float("nan")


def test_a_parameter_list_that_is_not_parameters_is_refused_by_name():
    w = mdl.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="parameter groups \\(dicts\\) are not supported"):
        optim.SGD([{"params": [w], "lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="holds a ndarray; expected Tensors"):
        optim.Adam([np.ones(3)])
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        optim.SGD([w * 2.0], lr=0.1)
