"""The shared-trunk model builder, task losses, and the digits data set."""

import pytest
import torch
from torch import nn

from torchopt_edu.multitask import DIGITS_TASKS, Task, load_digits_tasks, shared_trunk_model

DOCUMENT_TASKS = [Task("classification", "classification", 3), Task("regression", "regression")]


def test_builder_reproduces_the_documents_keras_model():
    torch.manual_seed(0)
    model = shared_trunk_model(10, DOCUMENT_TASKS)
    linear, activation = model.trunk
    assert (linear.in_features, linear.out_features) == (10, 64) and isinstance(activation, nn.ReLU)
    outputs = model(torch.randn(5, 10))
    assert outputs["classification"].shape == (5, 3) and outputs["regression"].shape == (5,)
    assert model.shared_parameters() == [linear.weight, linear.bias]
    assert model.last_shared_parameters() == [linear.weight, linear.bias]


def test_builder_hidden_layers_and_representation_split():
    model = shared_trunk_model(8, DIGITS_TASKS, hidden=(32, 16), activation=nn.Tanh)
    widths = [m.out_features for m in model.trunk if isinstance(m, nn.Linear)]
    assert widths == [32, 16]
    assert model.last_shared_parameters() == list(model.trunk[2].parameters())
    inputs = torch.randn(4, 8)
    z = model.trunk(inputs)
    torch.testing.assert_close(model.head_outputs(z)["digit"], model(inputs)["digit"])


def test_task_losses_are_cross_entropy_and_mse():
    model = shared_trunk_model(10, DOCUMENT_TASKS)
    inputs = torch.randn(6, 10)
    targets = {"classification": torch.tensor([0, 1, 2, 0, 1, 2]), "regression": torch.randn(6)}
    outputs = model(inputs)
    losses = model.losses(outputs, targets)
    logits = outputs["classification"]
    nll = -logits.log_softmax(-1).gather(1, targets["classification"][:, None]).mean()
    torch.testing.assert_close(losses["classification"], nll)
    torch.testing.assert_close(
        losses["regression"], ((outputs["regression"] - targets["regression"]) ** 2).mean()
    )


def test_regression_shape_mismatch_is_an_error_not_a_broadcast():
    task = Task("reg", "regression")
    with pytest.raises(ValueError, match=r"output shape \(100,\) and target shape \(100, 1\)"):
        task.loss(torch.zeros(100), torch.zeros(100, 1))


def test_bad_tasks_and_targets():
    with pytest.raises(ValueError, match="task kind must be 'classification' or 'regression'"):
        Task("x", "ranking")
    with pytest.raises(ValueError, match="out_features must be an int >= 2 for classification"):
        Task("x", "classification", 1)
    with pytest.raises(ValueError, match="contain no '.'"):
        Task("a.b", "regression")
    with pytest.raises(ValueError, match="at least 2 tasks with distinct names"):
        shared_trunk_model(4, [Task("a", "regression"), Task("a", "regression")])
    with pytest.raises(ValueError, match=r"hidden=\(\)"):
        shared_trunk_model(4, DOCUMENT_TASKS, hidden=())
    model = shared_trunk_model(4, DOCUMENT_TASKS)
    with pytest.raises(ValueError, match=r"targets lack tasks \['regression'\]"):
        model.losses(model(torch.randn(2, 4)), {"classification": torch.tensor([0, 1])})


def test_digits_tasks_split_and_targets():
    train, test = load_digits_tasks(test_fraction=0.25, seed=0)
    assert (len(train), len(test)) == (1348, 449)
    assert train.inputs.shape[1] == 64 and 0 <= train.inputs.min() and train.inputs.max() <= 1
    assert set(train.targets["digit"].tolist()) == set(range(10))
    ink = train.targets["ink"]
    assert abs(ink.mean().item()) < 1e-5 and ink.std().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(
        torch.corrcoef(torch.stack([test.inputs.mean(1), test.targets["ink"]]))[0, 1],
        torch.tensor(1.0),
    )
    again, _ = load_digits_tasks(seed=0)
    assert torch.equal(again.inputs, train.inputs)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_digits_tasks(test_fraction=1.0)
