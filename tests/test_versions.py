"""In-place ops inside the graph, as PyTorch's: the tensor takes the op's place in the graph
(``out += identity`` carries its gradients; a write into a view remakes its base), and a value
saved for backward and then changed in
place makes backward refuse, as PyTorch's version counter makes it refuse ("modified by an
inplace operation"); otherwise the gradient would be computed from values the forward pass never
saw, without a word.

Each scenario is written once against a library namespace and run on minidl and on torch: both
raise, or both give the same gradients."""

import types

import numpy as np
import pytest

import minidl as mdl

W0 = np.array([0.5, -1.0, 2.0])
X0 = np.array([1.5, 0.25, -3.0])


def _leaf(lib, values, requires_grad=True):
    return lib.tensor(values.copy(), requires_grad=requires_grad)


def weight_changed_under_no_grad(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w * x).sum()  # mul saves w for x's gradient and x for w's
    y = (w * w).sum()  # and w for its own
    with lib.no_grad():
        w -= 0.1
    (loss + y).backward()
    return w.grad


def input_without_grad_changed_in_place(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w * x).sum()
    x += 1.0  # allowed: x needs no gradient; but mul saved it for w's
    loss.backward()
    return w.grad


def change_before_the_op_is_fine(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    x *= 2.0
    (w * x).sum().backward()
    return w.grad


def change_of_a_value_no_op_saved_is_fine(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w + x).sum()  # add saves no values
    x += 1.0
    loss.backward()
    return w.grad


def saved_output_changed_under_no_grad(lib):
    w = _leaf(lib, W0)
    y = w.exp()  # exp saves its output
    with lib.no_grad():
        y *= 2.0
    y.sum().backward()
    return w.grad


def change_through_detach(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w * x).sum()
    alias = x.detach()  # the same array, the same version counter
    alias += 1.0
    loss.backward()
    return w.grad


def change_of_a_clone_is_fine(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w * x).sum()
    copy = x.clone()
    copy += 1.0
    loss.backward()
    return w.grad


def clone_is_differentiable(lib):
    w = _leaf(lib, W0)
    y = w.clone()
    (y * y).sum().backward()
    return w.grad


def optimizer_step_between_two_backwards(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    optimizer = lib.optim.SGD([w], lr=0.1)
    loss = (w * w * x).sum()
    loss.backward(retain_graph=True)
    optimizer.step()  # writes w in place, which the graph saved
    loss.backward()
    return w.grad


def fill_and_zero_count_as_changes(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w * x).sum()
    x.zero_()
    loss.backward()
    return w.grad


def residual_add_in_place(lib):
    """``out += identity``, as a residual block writes it."""
    w, x = _leaf(lib, W0), _leaf(lib, X0)
    out = w * 2.0
    out += x * x
    (out * out).sum().backward()
    return w.grad, x.grad


def in_place_into_a_tensor_that_needed_no_gradient(lib):
    w = _leaf(lib, W0)
    buffer = lib.tensor(np.zeros(3), requires_grad=False)
    buffer += w * 3.0  # buffer joins the graph
    assert buffer.requires_grad
    (buffer * buffer).sum().backward()
    return w.grad


def multiply_in_place_keeps_the_values_it_multiplied(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0)
    y = w * 2.0
    y *= x  # x's gradient needs y's values from before the write
    y.mul_(x)
    y.sub_(w, alpha=0.5)
    y.sum().backward()
    return w.grad, x.grad


def add_in_place_after_exp_which_saved_its_output(lib):
    w = _leaf(lib, W0)
    y = w.exp()
    y += 1.0
    y.sum().backward()
    return w.grad


def zero_in_place_inside_the_graph(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0)
    y = w * 2.0
    y.zero_()
    (y + x).sum().backward()
    return w.grad, x.grad


def copy_in_place_sends_the_gradient_to_the_source(lib):
    w = _leaf(lib, W0)
    buffer = lib.tensor(np.zeros((2, 3)), requires_grad=False)
    buffer.copy_(w * w)  # broadcast over the rows
    (buffer * lib.tensor(np.arange(6.0).reshape(2, 3), requires_grad=False)).sum().backward()
    return w.grad


def saved_value_changed_through_a_view(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    loss = (w * x).sum()
    view = x.reshape(3, 1)  # the same array: a write through it changes x
    view += 1.0
    loss.backward()
    return w.grad


def plain_view_written_in_place_changes_its_base(lib):
    w, x = _leaf(lib, W0), _leaf(lib, X0, False)
    x.reshape(3, 1).mul_(2.0)  # no graph involved
    (w * x).sum().backward()
    return w.grad, x


def item_assignment_as_torch(lib):
    """``x[index] = value`` with ints, slices, index lists, a mask and a tensor value."""
    w = _leaf(lib, W0)
    x = lib.tensor(np.zeros((3, 4)), requires_grad=False)
    x[0, :3] = w * 2.0
    x[1:, [0, 2]] = 7.0
    x[x > 6] = -1.0
    x[2, 3] = w[1]
    h = w * 1.0
    h[0] = 5.0  # a tensor inside the graph: its other elements keep their gradient
    ((x * x).sum() + (h * h).sum()).backward()
    return w.grad, x.detach()


def item_add_in_place_on_a_plain_tensor(lib):
    x = lib.tensor(np.zeros((2, 3)), requires_grad=False)
    x[0] += 1.0  # x[0] is a view; then x[0] = it
    x[:, 1] *= 3.0
    return (x,)


def view_taken_before_its_base_is_written(lib):
    """The view holds the base's new values (one array); its gradient must follow them."""
    a, w = _leaf(lib, W0), _leaf(lib, X0)
    x = a * 1.0
    view = x.reshape(3, 1)
    x += w * w
    (view * view).sum().backward()
    return a.grad, w.grad


def write_into_views_inside_the_graph(lib):
    """x[0] += ..., a view of a view written in place, a reshape written in place: the base is
    made anew with the view's part replaced (PyTorch's CopySlices)."""
    a = lib.tensor(np.arange(6.0).reshape(2, 3) / 4, requires_grad=True)
    w = _leaf(lib, W0)
    x = a * 1.0
    x[0] += w * w
    x.t()[1] *= w[:2]
    x.reshape(-1)[4:].mul_(w[1])
    (x * x).sum().backward()
    return a.grad, w.grad, x.detach()


def item_add_inside_the_graph_on_a_buffer(lib):
    w = _leaf(lib, W0)
    buffer = lib.tensor(np.zeros((2, 3)), requires_grad=False)
    buffer[1] += w  # buffer joins the graph through its row
    buffer[:, 0] *= 3.0
    (buffer * buffer).sum().backward()
    return w.grad, buffer.detach()


SCENARIOS = [
    (weight_changed_under_no_grad, True),
    (input_without_grad_changed_in_place, True),
    (change_before_the_op_is_fine, False),
    (change_of_a_value_no_op_saved_is_fine, False),
    (saved_output_changed_under_no_grad, True),
    (change_through_detach, True),
    (change_of_a_clone_is_fine, False),
    (clone_is_differentiable, False),
    (optimizer_step_between_two_backwards, True),
    (fill_and_zero_count_as_changes, True),
    (residual_add_in_place, False),
    (in_place_into_a_tensor_that_needed_no_gradient, False),
    (multiply_in_place_keeps_the_values_it_multiplied, False),
    (add_in_place_after_exp_which_saved_its_output, True),
    (zero_in_place_inside_the_graph, False),
    (copy_in_place_sends_the_gradient_to_the_source, False),
    (saved_value_changed_through_a_view, True),
    (plain_view_written_in_place_changes_its_base, False),
    (item_assignment_as_torch, False),
    (item_add_in_place_on_a_plain_tensor, False),
    (view_taken_before_its_base_is_written, False),
    (write_into_views_inside_the_graph, False),
    (item_add_inside_the_graph_on_a_buffer, False),
]


def _minidl():
    return types.SimpleNamespace(
        tensor=lambda v, requires_grad: mdl.tensor(v, requires_grad=requires_grad),
        no_grad=mdl.no_grad,
        optim=mdl.optim,
    )


@pytest.mark.parametrize("scenario, refused", SCENARIOS, ids=[s.__name__ for s, _ in SCENARIOS])
def test_a_saved_value_changed_in_place_is_refused_at_backward(scenario, refused):
    if refused:
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as error:
            scenario(_minidl())
        assert "version" in str(error.value)
    else:
        assert scenario(_minidl()) is not None


@pytest.mark.parametrize("scenario, refused", SCENARIOS, ids=[s.__name__ for s, _ in SCENARIOS])
def test_torch_refuses_the_same_scenarios(scenario, refused):
    """The oracle: torch agrees on which scenarios are refused, and on the gradients of the rest."""
    torch = pytest.importorskip("torch")
    lib = types.SimpleNamespace(
        tensor=lambda v, requires_grad: torch.tensor(v, requires_grad=requires_grad),
        no_grad=torch.no_grad,
        optim=torch.optim,
    )
    if refused:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            scenario(lib)
    else:
        ours, theirs = _grads(scenario(_minidl())), _grads(scenario(lib))
        assert len(ours) == len(theirs)
        for mine, torchs in zip(ours, theirs):
            np.testing.assert_allclose(mine.numpy(), torchs.numpy(), rtol=1e-12, atol=0)


def _grads(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def test_the_error_names_the_op():
    w = mdl.tensor(W0.copy(), requires_grad=True)
    y = w.exp()
    with mdl.no_grad():
        y *= 2.0
    with pytest.raises(RuntimeError, match=r"exp saved .* version 1; expected version 0"):
        y.sum().backward()


def test_a_whole_training_step_is_not_refused():
    """Layers and optimizers of a normal step change nothing a live graph saved."""
    model = mdl.nn.Sequential(mdl.nn.Linear(4, 3), mdl.nn.ReLU(), mdl.nn.Linear(3, 2))
    optimizer = mdl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = mdl.tensor(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    target = mdl.tensor(np.array([0, 1, 1, 0, 1]))
    for _ in range(3):
        optimizer.zero_grad()
        mdl.functional.cross_entropy(model(x), target).backward()
        optimizer.step()


def test_relu_and_dropout_inplace_as_torch():
    """torchvision writes nn.ReLU(inplace=True) and nn.Dropout(p): the layer writes into its
    input and returns it; gradients as PyTorch's."""
    torch = pytest.importorskip("torch")
    x0 = np.random.default_rng(0).standard_normal((4, 6))
    w0 = np.random.default_rng(1).standard_normal((6, 6))
    results = []
    for lib, make in ((mdl, mdl.tensor), (torch, torch.tensor)):
        x, w = make(x0.copy(), requires_grad=True), make(w0.copy(), requires_grad=True)
        h = x @ w
        y = lib.nn.ReLU(inplace=True)(h)
        assert y is h
        z = lib.nn.functional.relu(y * 2.0 - 1.0, inplace=True)
        dropout = lib.nn.Dropout(0.5, inplace=True).eval()
        assert dropout(z) is z
        (z * z).sum().backward()
        results.append((z.detach().numpy(), x.grad.numpy(), w.grad.numpy()))
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert repr(mdl.nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(mdl.nn.Dropout(0.5)) == repr(torch.nn.Dropout(0.5))


def test_dropout_inplace_in_training_writes_the_masked_values_into_its_input():
    x = mdl.tensor(np.ones((50, 40)), requires_grad=True)
    h = x * 1.0
    y = mdl.nn.functional.dropout(h, 0.5, True, True)  # PyTorch's positional order
    assert y is h
    kept = h.numpy() != 0
    assert 0.4 < kept.mean() < 0.6 and np.all(h.numpy()[kept] == 2.0)
    h.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2.0 * kept)


def test_an_in_place_write_into_a_view_of_a_leaf_is_refused_as_torch():
    torch = pytest.importorskip("torch")
    for make in (mdl.tensor, torch.tensor):
        w = make(np.ones((2, 3)), requires_grad=True)
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            w.reshape(-1).mul_(2.0)
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            w[0] += 1.0


def test_item_assignment_errors_name_the_assignment():
    x = mdl.tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"x\[index\] = value: could not broadcast"):
        x[0] = np.ones(4)
    with pytest.raises(IndexError, match=r"x\[index\] = value: index 5 is out of bounds"):
        x[5] = 1.0
    w = mdl.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        w[0] = 2.0


def test_item_assignment_passes_gradcheck():
    rng = np.random.default_rng(3)
    a = mdl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    v = mdl.tensor(rng.standard_normal((2, 1)), requires_grad=True)  # broadcast over 2 columns

    def written(a, v):
        y = a * 1.0
        y[1:, [0, 2]] = v
        return y * y

    assert mdl.gradcheck(written, [a, v])
