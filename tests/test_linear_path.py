"""The linear path (Wide & Deep / LSTNet highway), new classifier options and the step schedule.

Fast checks on tiny tensors: shapes, backward compatibility of configs without the new keys,
the AR path against the task's ridge AR, rollout state, gradients through both paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anndata_rnn.errors import InputError
from anndata_rnn.networks import build_module
from anndata_rnn.networks.blocks import downsample
from anndata_rnn.training import TrainConfig, fit, schedule_for

torch.set_num_threads(1)
ARCH = {"hidden": [8], "cell": "lstm", "dropout": 0.0, "bidirectional": False}


def classifier_config(level="unit", **extra):
    return {"architecture": {**ARCH, **extra}, "classes": ["a", "b", "c"], "label_level": level}


def forecaster_config(**extra):
    return {"architecture": {**ARCH, **extra}, "n_outputs": 3, "residual": True, "ar_lags": 3}


def batch(n=5, steps=7, f=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, f, generator=g)
    lengths = torch.tensor([steps, steps - 2, 3, steps, 1][:n])
    x[torch.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, lengths


def test_old_classifier_config_keeps_its_weights():
    """A config without the new keys builds the original module (same state-dict keys)."""
    module = build_module("classify", 4, classifier_config())
    assert sorted(module.state_dict()) == sorted(
        ["head.weight", "head.bias"]
        + [f"encoder.layers.0.{p}_l0" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    )
    assert module.linear is None and module.penalty() == 0.0


@pytest.mark.parametrize(
    "extra",
    [
        {"linear_path": True, "max_steps": 7},
        {"linear_path": True, "recurrent": False, "max_steps": 7},
        {"pooling": "mean"},
        {"pooling": "attention", "linear_path": True, "max_steps": 7},
        {"conv": [4, 4, 4]},
        {"downsample": 3, "pooling": "mean"},
    ],
)
def test_classifier_variants_shapes_and_gradients(extra):
    module = build_module("classify", 4, classifier_config(**extra))
    x, lengths = batch()
    x.requires_grad_(True)
    logits, embedding = module(x, lengths)
    assert logits.shape == (5, 3) and embedding.shape[0] == 5
    logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # padding never matters: changing padded values leaves the output unchanged
    module.eval()
    y = x.detach().clone()
    y[1, 6] = 100.0
    assert torch.allclose(module(x.detach(), lengths)[0], module(y, lengths)[0], atol=1e-5)


def test_linear_path_starts_at_zero_and_reads_whole_sequence():
    module = build_module(
        "classify", 4, classifier_config(linear_path=True, recurrent=False, max_steps=7)
    )
    x, lengths = batch()
    assert torch.all(module(x, lengths)[0] == 0)
    assert module.linear.linear.in_features == 28
    # longer inputs are cut, shorter padded
    assert module(x[:, :5], lengths.clamp(max=5))[0].shape == (5, 3)
    assert module(torch.cat([x, x], 1), lengths)[0].shape == (5, 3)


def test_step_level_linear_path():
    module = build_module("classify", 4, classifier_config("step", linear_path=True))
    x, lengths = batch()
    logits, _ = module(x, lengths)
    assert logits.shape == (5, 7, 3)
    assert module.linear.linear.in_features == 4


def test_downsample_averages_real_steps():
    x = torch.arange(10.0).reshape(1, 10, 1).repeat(2, 1, 1)
    out, lengths = downsample(x, torch.tensor([10, 5]), 4)
    assert lengths.tolist() == [3, 2]
    assert out[0, :, 0].tolist() == [1.5, 5.5, 8.5]
    assert out[1, :2, 0].tolist() == [1.5, 4.0]


def test_old_forecaster_config_unchanged():
    config = forecaster_config()
    module = build_module("forecast", 4, config)
    assert module.ar is None
    x, lengths = batch()
    prediction, hidden, state = module(x, lengths)
    assert torch.allclose(prediction, x[..., :3])  # persistence at the start
    assert isinstance(state, list)


def ridge_like_design(x, lags):
    """The task's ``_lag_design``: steps t, t-1, ... clamped at 0."""
    n, steps, f = x.shape
    cols = [x[:, np.maximum(np.arange(steps) - j, 0)] for j in range(lags)]
    return np.concatenate(cols, axis=-1)


@pytest.mark.parametrize("recurrent", [True, False])
def test_ar_path_matches_linear_ar_and_rolls_out(recurrent):
    module = build_module("forecast", 4, forecaster_config(linear_path=True, recurrent=recurrent))
    module.eval()
    rng = np.random.default_rng(0)
    coef, intercept = rng.normal(size=(3, 12)), rng.normal(size=3)
    module.init_linear_ar(coef, intercept)
    x, lengths = batch(n=2, steps=6)
    lengths = torch.tensor([6, 6])
    x = torch.randn(2, 6, 4)
    prediction, _, state = module(x, lengths)
    expected = x[..., :3].numpy() + ridge_like_design(x.numpy(), 3) @ coef.T + intercept
    if not recurrent:
        np.testing.assert_allclose(prediction.detach().numpy(), expected, atol=1e-5)
    # the carried state continues the sequence exactly like one pass over the whole of it
    first, _, state = module(x[:, :4], torch.tensor([4, 4]))
    rest, _, _ = module(x[:, 4:], torch.tensor([2, 2]), state)
    np.testing.assert_allclose(
        torch.cat([first, rest], 1).detach().numpy(), prediction.detach().numpy(), atol=1e-5
    )


def test_ar_window_uses_each_sequence_end():
    module = build_module("forecast", 4, forecaster_config(linear_path=True, recurrent=False))
    x, lengths = batch(n=3, steps=7)
    _, _, state = module(x, lengths)
    window = state["window"]
    assert window.shape == (3, 2, 4)
    for i, n in enumerate(lengths.tolist()):
        expected = x[i, [max(n - 2, 0), n - 1]] if n >= 2 else x[i, [0, 0]]
        assert torch.allclose(window[i], expected)


def test_schedule_sizes_to_the_data(default_schedule):
    config = TrainConfig(schedule="steps")  # batch 64, 100 epochs, patience 10, min 600 steps
    small = schedule_for(42, config)
    assert small["batch_size"] == 11 and small["steps_per_epoch"] == 4
    assert small["max_steps"] == 600 and small["patience_steps"] == 300
    assert small["eval_every"] == 10 and small["lr_patience"] == 15
    large = schedule_for(100_000, config)
    assert large["batch_size"] == 64 and large["eval_every"] == math.ceil(100_000 / 64)
    assert large["max_steps"] == 100 * large["steps_per_epoch"]


def toy_fit(schedule, seed=0, lr=1e-2, **train):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 5, 2, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long()
    lengths = torch.full((48,), 5)
    config = {**classifier_config(), "classes": ["a", "b"]}
    config["architecture"].update(linear_path=True, max_steps=5)
    torch.manual_seed(seed)
    module = build_module("classify", 2, config)
    crit = torch.nn.CrossEntropyLoss()

    def loss_fn(net, b):
        return crit(net(b[0], b[1])[0], b[2])

    history = fit(
        module,
        loss_fn,
        (x[:36], lengths[:36], y[:36]),
        (x[36:], lengths[36:], y[36:]),
        TrainConfig(lr=lr, schedule=schedule, **train),
        device=torch.device("cpu"),
        quiet=True,
    )
    return history


def test_step_schedule_learns_and_reports():
    history = toy_fit("steps", min_steps=60, max_epochs=5)
    assert history["steps_run"] >= 60 and history["batch_size"] == 9
    assert history["final_train_loss"] < history["start_loss"] and not history["failed_fit"]


def test_failed_fit_is_detected():
    history = toy_fit("steps", lr=1e-9, min_steps=20, max_epochs=1)
    assert history["failed_fit"]
    assert abs(history["start_loss"] - math.log(2)) < 0.2


def test_budget_is_not_a_ceiling_while_validation_improves(default_schedule):
    """Issue 25: when the step floor sets the budget (here 20 steps against 2 epochs of 4
    steps), ``ceiling`` lets training pass it while early stopping has not fired, up to
    ``ceiling`` × the budget; when ``max_epochs`` sets the budget, or without a validation set
    (nothing could tell that training still improves), the budget stays the maximum."""
    floored = TrainConfig(schedule="steps", max_epochs=2, min_steps=20, ceiling=4)
    plan = schedule_for(36, floored)
    assert plan["steps_per_epoch"] == 4 and plan["budget"] == 20 and plan["max_steps"] == 80
    by_epochs = TrainConfig(schedule="steps", max_epochs=5, min_steps=0, ceiling=4)
    assert schedule_for(36, by_epochs)["max_steps"] == schedule_for(36, by_epochs)["budget"] == 20
    assert schedule_for(36, TrainConfig(schedule="steps", min_steps=0))["max_steps"] == 100 * 4
    history = toy_fit("steps", max_epochs=2, min_steps=20, patience=5, ceiling=4)
    assert history["max_steps"] == 80
    # the toy problem keeps improving on validation: training runs past the budget of 20
    assert history["steps_run"] > 20 and history["best_step"] > 20
    once = toy_fit("steps", max_epochs=2, min_steps=20, patience=5)
    assert once["max_steps"] == 20 and once["steps_run"] <= 20
    with pytest.raises(InputError, match="ceiling"):
        TrainConfig(schedule="steps", ceiling=0).validate()


def test_epoch_schedule_still_available():
    history = toy_fit("epochs", max_epochs=3, batch_size=16)
    assert history["epochs_run"] == 3 and history["steps_run"] == 9


@pytest.mark.parametrize("n_classes", [2, 3])
def test_warm_start_reproduces_logistic_regression(n_classes):
    """init_linear copies sklearn's fit: the untrained joint model is the logistic baseline."""
    from sklearn.linear_model import LogisticRegression

    x, lengths = batch(n=5, steps=7)
    x = torch.cat([x] * 4)
    lengths = torch.full((20,), 7)
    y = np.arange(20) % n_classes
    flat = x.numpy().reshape(20, -1)
    lr = LogisticRegression(max_iter=1000).fit(flat, y)
    config = classifier_config(linear_path=True, max_steps=7)
    config["classes"] = config["classes"][:n_classes]
    module = build_module("classify", 4, config).eval()
    module.init_linear(lr.coef_, lr.intercept_, lr.classes_)
    proba = torch.softmax(module(x, lengths)[0], -1).detach().numpy()
    np.testing.assert_allclose(proba, lr.predict_proba(flat), atol=1e-5)
    assert float(module.penalty()) == pytest.approx(float((lr.coef_**2).sum() / 2), rel=1e-4)


def test_new_architecture_defaults():
    from anndata_rnn.networks.classifier import new_architecture

    short = new_architecture(ARCH, max_steps=24)
    assert short["linear_path"] and short["max_steps"] == 24 and "downsample" not in short
    long = new_architecture(ARCH, max_steps=150)
    assert long["downsample"] == 5 and long["pooling"] == "mean"
    assert "downsample" not in new_architecture(ARCH, max_steps=150, level="step")
    kept = new_architecture({**ARCH, "pooling": "last"}, max_steps=150, linear_path=False)
    assert kept["pooling"] == "last" and not kept["linear_path"]
    config = {**classifier_config(), "architecture": long}
    module = build_module("classify", 4, config)
    x = torch.randn(2, 150, 4)
    assert module(x, torch.tensor([150, 40]))[0].shape == (2, 3)


@pytest.mark.parametrize("task", ["classify", "forecast"])
def test_new_models_survive_the_model_file(task, tmp_path):
    from anndata_rnn import Model
    from anndata_rnn.preprocessing import Preprocessor

    prep = Preprocessor(layout="obs-series", use_time=False)
    prep.features = np.asarray(["g0", "g1", "g2", "g3"], dtype=object)
    prep.mean, prep.std = np.zeros(4), np.ones(4)
    if task == "classify":
        config = classifier_config(linear_path=True, max_steps=7, pooling="mean", downsample=2)
        prep.features, prep.mean, prep.std = prep.features, prep.mean, prep.std
    else:
        config = forecaster_config(linear_path=True)
        config["n_outputs"] = 4
    config.update(task=task, layout="obs-series", n_inputs=4, keys={"layout": "obs-series"})
    module = build_module(task, 4, config).eval()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.1) if p.requires_grad else None
    path = tmp_path / "m.h5"
    Model(config, prep, module).save(path)
    back = Model.load(path).module
    x, lengths = batch()
    np.testing.assert_allclose(
        back(x, lengths)[0].detach().numpy(), module(x, lengths)[0].detach().numpy(), atol=1e-6
    )
