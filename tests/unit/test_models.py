"""The model zoo: what both sides build, what Opacus admits, and which weights a hospital loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from datasites.contract.encoding import N_FEATURES
from datasites.contract.tasks import MODEL_NAMES, model_task
from datasites.contract.zoo import build_model, load_weights, model_weights

torch.set_num_threads(1)

INPUT_SHAPES = {"ehr": (N_FEATURES,), "pathmnist": (3, 28, 28)}
OUTPUTS = {"ehr": 1, "pathmnist": 9}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model_builds_runs_and_passes_the_opacus_validator(name: str) -> None:
    # Prepare
    task = model_task(name)
    model = build_model(name)
    # Execute
    errors = ModuleValidator.validate(model, strict=True)
    output = model(torch.zeros(5, *INPUT_SHAPES[task]))
    # Assert
    assert errors == []
    assert output.shape == (5, OUTPUTS[task])


def test_model_tasks() -> None:
    assert [model_task(name) for name in MODEL_NAMES] == ["ehr", "ehr", "pathmnist"]


def test_pathmnist_cnn_has_50_to_60_thousand_parameters_at_width_16() -> None:
    count = sum(p.numel() for p in build_model("pathmnist_cnn").parameters())
    assert 50_000 <= count <= 60_000


def test_keyword_arguments_shape_the_model() -> None:
    mlp = build_model("ehr_mlp", hidden=[8, 4, 2], dropout=0.2)
    cnn = build_model("pathmnist_cnn", width=8)
    linear_shapes = [tuple(m.weight.shape) for m in mlp if isinstance(m, torch.nn.Linear)]
    assert linear_shapes == [(8, N_FEATURES), (4, 8), (2, 4), (1, 2)]
    assert any(isinstance(m, torch.nn.Dropout) for m in mlp)
    assert cnn(torch.zeros(2, 3, 28, 28)).shape == (2, 9)
    assert ModuleValidator.validate(cnn, strict=True) == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_initialisation_is_deterministic_under_manual_seed(name: str) -> None:
    torch.manual_seed(11)
    first = model_weights(build_model(name))
    torch.manual_seed(11)
    second = model_weights(build_model(name))
    torch.manual_seed(12)
    other = model_weights(build_model(name))
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_unknown_model_lists_the_zoo() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet'") as error:
        build_model("resnet")
    assert all(name in str(error.value) for name in MODEL_NAMES)
    with pytest.raises(ValueError, match="unknown model"):
        model_task("resnet")


def test_unknown_keyword_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="'depth'.*allowed arguments: hidden, dropout"):
        build_model("ehr_mlp", depth=3)
    with pytest.raises(ValueError, match="'width'.*allowed arguments: intercept_scale"):
        build_model("ehr_logistic", width=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("ehr_mlp", {"hidden": [0]}, "hidden size must be in 1..4096"),
        ("ehr_mlp", {"hidden": [4097]}, "hidden size must be in 1..4096"),
        ("ehr_mlp", {"hidden": [8] * 7}, "1..6 layer sizes"),
        ("ehr_mlp", {"hidden": []}, "1..6 layer sizes"),
        ("ehr_mlp", {"hidden": "64"}, "1..6 layer sizes"),
        ("ehr_mlp", {"hidden": [8.5]}, "must be an int"),
        ("ehr_mlp", {"dropout": 0.95}, r"dropout must be in \[0.0, 0.9\]"),
        ("ehr_mlp", {"dropout": -0.1}, r"dropout must be in \[0.0, 0.9\]"),
        ("ehr_mlp", {"dropout": "0.1"}, "dropout must be a number"),
        ("pathmnist_cnn", {"width": 3}, "width must be in 4..128"),
        ("pathmnist_cnn", {"width": 129}, "width must be in 4..128"),
        ("pathmnist_cnn", {"width": True}, "width must be an int"),
        ("ehr_logistic", {"intercept_scale": 0}, r"intercept_scale must be in \[0.01, 100.0\]"),
        ("ehr_logistic", {"intercept_scale": 1e3}, r"intercept_scale must be in"),
        ("ehr_logistic", {"intercept_scale": float("nan")}, r"intercept_scale must be in"),
        ("ehr_logistic", {"intercept_scale": 10**400}, r"intercept_scale must be in"),
        ("ehr_logistic", {"intercept_scale": "5"}, "intercept_scale must be a number"),
        ("ehr_logistic", {"hidden": [8]}, "does not take the argument 'hidden'"),
        ("ehr_logistic", {"row_norm": -1.0}, r"row_norm must be in \[0.0, 100.0\]"),
        ("ehr_logistic", {"row_norm": 0.001}, r"row_norm must be 0 \(off\) or in"),
        ("ehr_logistic", {"row_norm": float("inf")}, "row_norm must be in"),
        ("ehr_logistic", {"row_norm": True}, "row_norm must be a number"),
        ("ehr_logistic", {"row_norm": "1"}, "row_norm must be a number"),
    ],
)
def test_bad_hyperparameters_are_refused_in_one_sentence(
    name: str, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as error:
        build_model(name, **kwargs)
    assert str(error.value).endswith(".") and "\n" not in str(error.value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_weights_round_trip_between_two_models(name: str) -> None:
    # Prepare
    torch.manual_seed(1)
    source = build_model(name)
    torch.manual_seed(2)
    target = build_model(name)
    shape = INPUT_SHAPES[model_task(name)]
    inputs = torch.randn(4, *shape)
    # Execute
    weights = model_weights(source)
    load_weights(target, weights)
    # Assert
    assert all(w.dtype == np.float32 for w in weights.values())
    assert set(weights) == set(source.state_dict())
    torch.testing.assert_close(target(inputs), source(inputs))


def test_model_weights_are_copies() -> None:
    model = build_model("ehr_logistic")
    weights = model_weights(model)
    weights["0.bias"][:] = 42.0
    assert model.state_dict()["0.bias"].item() != 42.0


def test_load_weights_accepts_nested_lists() -> None:
    model = build_model("ehr_mlp", hidden=[3])
    weights = {k: v.tolist() for k, v in model_weights(build_model("ehr_mlp", hidden=[3])).items()}
    load_weights(model, weights)
    np.testing.assert_array_equal(model_weights(model)["2.weight"], np.array(weights["2.weight"]))


def _sentinel_weights() -> dict[str, np.ndarray]:
    """Weights whose values are easy to spot if an error message leaked them."""
    weights = model_weights(build_model("ehr_mlp", hidden=[3]))
    return {k: np.full_like(v, 98765.4321) for k, v in weights.items()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.pop("0.bias"), r"lack the entries 0\.bias"),
        (lambda w: w.update({"evil": np.zeros(1)}), "unexpected entries evil"),
        (
            lambda w: w.update({"0.weight": np.full((3, 5), 98765.4321)}),
            rf"'0\.weight' must have shape \(3, {N_FEATURES}\), found shape \(3, 5\)",
        ),
        (lambda w: w["2.bias"].__setitem__(0, np.nan), r"'2\.bias' contains NaN or infinite"),
        (lambda w: w["2.weight"].__setitem__((0, 1), np.inf), r"'2\.weight' contains NaN"),
        (lambda w: w.update({"0.bias": ["98765.4321", "x", 1]}), r"'0\.bias' is not a numeric"),
    ],
)
def test_load_weights_refuses_bad_entries_without_echoing_values(change, message: str) -> None:
    # Prepare
    model = build_model("ehr_mlp", hidden=[3])
    before = model_weights(model)
    weights = _sentinel_weights()
    change(weights)
    # Execute
    with pytest.raises(ValueError, match=message) as error:
        load_weights(model, weights)
    # Assert: one sentence, no value, and the model untouched
    text = str(error.value)
    assert "98765" not in text and "\n" not in text and text.endswith(".")
    after = model_weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_load_weights_refuses_a_non_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        load_weights(build_model("ehr_logistic"), [np.zeros(3)])


def test_intercept_scale_is_the_weight_of_a_constant_input() -> None:
    # Prepare
    plain = build_model("ehr_logistic")
    scaled = build_model("ehr_logistic", intercept_scale=5.0)
    rows = torch.randn(7, N_FEATURES)
    weight = scaled.state_dict()["1.weight"]
    # Execute
    logits = scaled(rows)
    # Assert: the plain model keeps its layout; the scaled one has one more input, no bias
    assert set(plain.state_dict()) == {"0.weight", "0.bias"}
    assert set(scaled.state_dict()) == {"1.weight"}
    assert tuple(weight.shape) == (1, N_FEATURES + 1)
    expected = rows @ weight[0, :N_FEATURES] + 5.0 * weight[0, N_FEATURES]
    torch.testing.assert_close(logits[:, 0], expected)
    assert build_model("ehr_logistic", intercept_scale=1.0).state_dict().keys() == {
        "0.weight",
        "0.bias",
    }


def test_row_norm_scales_each_row_on_its_own_before_the_intercept_input() -> None:
    # Prepare: rows of very different norms, one all zero
    model = build_model("ehr_logistic", intercept_scale=0.5, row_norm=2.0)
    rows = torch.randn(6, N_FEATURES) * torch.tensor([[0.1], [1.0], [10.0], [3.0], [7.0], [0.0]])
    weight = model.state_dict()["2.weight"][0]
    # Execute
    logits = model(rows)[:, 0]
    alone = model(rows[1:2])[:, 0]
    # Assert: each row is scaled to norm 2 by its own norm alone; a zero row stays zero
    lengths = rows.norm(dim=1, keepdim=True)
    unit = torch.where(lengths > 0, rows * 2.0 / lengths.clamp_min(1e-6), rows)
    expected = unit @ weight[:N_FEATURES] + 0.5 * weight[N_FEATURES]
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(alone, logits[1:2])
    assert torch.isfinite(logits).all()
    assert set(model.state_dict()) == {"2.weight"}
    assert set(build_model("ehr_logistic", row_norm=1.0).state_dict()) == {"1.weight", "1.bias"}
