# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""FMN: minimal norms against the analytic distance of linear models, the reported result, and strength."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from monai_adv.attacks import APGD, FMN, attack_arguments, make_attack
from monai_adv.attacks.fmn import cosine_schedule, robust_accuracy_curve
from tests.cases import problems
from tests.models import PerSample, TinyClassifier, TinySegmenter, accuracy, bars_dataset, train_classifier
from tests.test_host_syncs import _syncs_per_step


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.double().flatten(1)
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(dim=1)


def _dual(w: torch.Tensor, norm: str) -> torch.Tensor:
    return w.abs().sum(dim=-1) if norm == "Linf" else w.norm(dim=-1)


def _predict(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    return (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(dim=1)


def _linear_problem(seed: int, classes: int, norm: str, n: int):
    """A linear model (float64) and a batch in the middle of [0, 1] whose distances to the decision boundary are
    small (0.02 .. 0.3), so that the value range never binds; returns the model, the batch, its labels (the clean
    predictions), the analytic minimal distance per sample, and whether the closest other class is also the runner-up
    logit (then a margin-following attack reaches the closest boundary directly).

    The samples differ from each other only within the null space of the weights, so that they share their logits
    (and distances) while every sample is a different image."""
    g = torch.Generator().manual_seed(seed)
    shape, dim = (1, 4, 4), 16
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, classes)).double()
    w = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    centre = 0.5 + 0.1 * (torch.rand(dim, generator=g, dtype=torch.float64) - 0.5)
    offsets = 0.05 * (torch.rand(n, dim, generator=g, dtype=torch.float64) - 0.5)
    offsets[0] = 0.0
    basis = torch.linalg.qr(w.T).Q  # (dim, classes): the span of the weights
    offsets = offsets - (offsets @ basis) @ basis.T
    x = (centre + offsets).reshape(n, *shape)
    if classes == 1:  # z = <w, x> + b: distance |z| / ||w||_*
        r = 0.02 + 0.28 * torch.rand((), generator=g, dtype=torch.float64)
        sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
        bias = sign * r * _dual(w[0], norm) - w[0] @ centre
        b = bias.reshape(1)
    else:  # the gap of each other class is its distance times the dual norm of the weight difference
        label = int(torch.randint(0, classes, (1,), generator=g))
        r = 0.02 + 0.28 * torch.rand(classes, generator=g, dtype=torch.float64)
        gaps = r * _dual(w[label] - w, norm)
        b = -(w @ centre) - gaps
        b[label] = -(w[label] @ centre)
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(b)
        z = model(x)
    if classes == 1:
        y = (z[:, 0] > 0).long()
        distance = z[:, 0].abs() / _dual(w[0], norm)
        runner_up_is_closest = torch.ones(n, dtype=torch.bool)
    else:
        y = z.argmax(dim=1)
        gap = z.gather(1, y[:, None]) - z  # (n, K), >= 0
        dual = _dual(w[y][:, None, :] - w[None, :, :], norm)  # (n, K)
        per_class = torch.where(gap > 0, gap / dual.clamp_min(1e-30), torch.full_like(gap, float("inf")))
        distance = per_class.min(dim=1).values
        runner_up = torch.where(gap > 0, gap, torch.full_like(gap, float("inf"))).argmin(dim=1)
        runner_up_is_closest = per_class.argmin(dim=1) == runner_up
    return model.eval(), x, y, distance, runner_up_is_closest


@settings(max_examples=30)
@given(
    seed=st.integers(0, 10_000),
    classes=st.sampled_from([1, 2, 3, 5]),
    norm=st.sampled_from(["Linf", "L2"]),
    n=st.integers(1, 3),
)
def test_min_norm_on_linear_models_is_the_analytic_distance(seed, classes, norm, n):
    model, x, y, distance, direct = _linear_problem(seed, classes, norm, n)
    result = FMN(model, eps=0.5, norm=norm, steps=30).perturb(x, y)
    found = result.details["min_norm"]
    assert found.dtype == torch.float64 and found.shape == (n,) and found.device == x.device
    # nothing is closer than the boundary: a norm below the analytic distance would be a bookkeeping error
    assert (found >= distance * (1 - 1e-9)).all(), (found, distance)
    # where the closest class is also the runner-up logit, the search reaches that boundary, within 2%
    assert (found[direct] <= distance[direct] * 1.02).all(), (found, distance)
    assert torch.isfinite(found).all() and (distance < 0.3).all()
    # the result at eps = 0.5: where found within it, the smallest adversarial point found
    assert torch.equal(result.success, found <= 0.5) and result.success[direct].all()
    size = _norms(result.x_adv - x, norm)
    torch.testing.assert_close(size[result.success], found[result.success], rtol=1e-12, atol=0)
    assert torch.equal(_predict(model, result.x_adv) != y, result.success)


def _eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of ``model`` in eval mode (as the attack runs it), leaving its mode as it was."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(training)


@settings(max_examples=15)
@given(problems(attacks=("fmn",)))
def test_result_is_what_the_model_and_the_norms_say(p):
    """On the contract's random problems (tasks, dims, ranges, masks, budgets including 0, targeted modes): the
    budget, range and mask hold exactly, success is "an adversarial point within eps was found", x_adv is then the
    smallest one, and success is what the model says on x_adv."""
    model = PerSample(p.model)  # one sample at a time: the check below sees the logits the attack saw
    result = make_attack("fmn", model, **p.kwargs).perturb(p.x, p.y, mask=p.mask)
    eps, norm = p.kwargs["eps"], p.kwargs["norm"]
    x_adv, found = result.x_adv, result.details["min_norm"]
    assert x_adv.shape == p.x.shape and x_adv.dtype == p.x.dtype and not x_adv.requires_grad
    assert found.dtype == torch.float64 and found.shape == (p.x.shape[0],)
    size = _norms(x_adv - p.x, norm)
    assert (size <= eps).all(), "left the eps-ball"
    if p.value_range is not None:
        assert x_adv.min() >= p.value_range[0] and x_adv.max() <= p.value_range[1], "left the value range"
    if p.mask is not None:
        frozen = p.mask.expand_as(p.x) if p.mask.ndim == p.x.ndim else p.mask.unsqueeze(0).expand_as(p.x)
        assert torch.equal(x_adv[frozen == 0], p.x[frozen == 0]), "changed a voxel outside the mask"
    assert (found >= 0).all() and not torch.isnan(found).any()
    assert (found[result.clean_success] == 0).all()
    assert torch.equal(result.success, found <= eps)
    torch.testing.assert_close(size[result.success], found[result.success], rtol=1e-6, atol=1e-7)
    if p.kwargs["targeted"] is False:
        assert torch.equal(_predict_logits(_eval_logits(model, x_adv)) != p.y, result.success)


def _predict_logits(z: torch.Tensor) -> torch.Tensor:
    return (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(dim=1)


@settings(max_examples=10)
@given(problems(dtype=torch.float64, attacks=("fmn",)))
def test_independent_of_batch_composition_and_deterministic(p):
    """Each sample's result and minimal norm are the same alone, in the batch and in the reversed batch; a second
    run gives the same bits."""
    attack = make_attack("fmn", PerSample(p.model), **p.kwargs)
    mask = p.mask
    if mask is not None and mask.ndim == p.x.ndim:
        mask = mask.expand(p.x.shape[0], *mask.shape[1:])
    batch = attack.perturb(p.x, p.y, mask=mask)
    again = make_attack("fmn", PerSample(p.model), **p.kwargs).perturb(p.x, p.y, mask=mask)
    assert torch.equal(batch.x_adv, again.x_adv) and torch.equal(batch.details["min_norm"], again.details["min_norm"])
    flip = torch.arange(p.x.shape[0] - 1, -1, -1)
    flipped_mask = None if mask is None else (mask if mask.ndim < p.x.ndim else mask[flip])
    flipped = attack.perturb(p.x[flip], p.y[flip], mask=flipped_mask)
    torch.testing.assert_close(flipped.x_adv[flip], batch.x_adv, rtol=0, atol=1e-6)
    torch.testing.assert_close(flipped.details["min_norm"][flip], batch.details["min_norm"], rtol=1e-9, atol=1e-12)
    for i in range(p.x.shape[0]):
        m = None if mask is None else (mask if mask.ndim < p.x.ndim else mask[i : i + 1])
        alone = attack.perturb(p.x[i : i + 1], p.y[i : i + 1], mask=m)
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(alone.details["min_norm"][0], batch.details["min_norm"][i], rtol=1e-9, atol=1e-12)


# ---- a trained network -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bars4():
    """A small CNN trained briefly on four bar orientations, and 64 test images it classifies."""
    x_train, y_train = bars_dataset(768, seed=0, classes=4)
    x_test, y_test = bars_dataset(64, seed=1, classes=4)
    torch.manual_seed(0)
    model = train_classifier(TinyClassifier(2, 1, 4, width=8), x_train, y_train, epochs=10)
    assert accuracy(model, x_test, y_test) >= 0.95
    return model, x_test, y_test


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_as_strong_as_apgd_at_its_budget(bars4, norm, eps):
    """FMN is about as strong as APGD-CE at APGD's budget: its robust accuracy at eps is at most APGD's plus two
    samples, and where APGD finds an adversarial example within eps, FMN's minimal norm is at most eps but for a few
    samples (FMN follows the margin to the leading other class and may settle on its boundary when another class's
    is closer). A second search pulled towards the next most likely class only lowers each norm, and then FMN is at
    least as strong as APGD but for one sample."""
    model, x, y = bars4
    result = FMN(model, eps=eps, norm=norm, steps=50).perturb(x, y)
    found = result.details["min_norm"]
    apgd = APGD(model, eps=eps, norm=norm, steps=20).perturb(x, y)
    assert 0 < apgd.success.float().mean() < 1  # a budget where both outcomes occur
    missed = apgd.success & (found > eps)
    assert missed.sum() <= 4 and found[apgd.success].median() <= eps
    ours, theirs = 1 - result.success.float().mean().item(), 1 - apgd.success.float().mean().item()
    assert ours <= theirs + 2 / len(y)
    # the curve from the minimal norms is the robust accuracy the result reports at eps
    curve = robust_accuracy_curve(found, [0.0, eps / 2, eps, 4 * eps])
    assert curve[0] == 1 - result.clean_success.float().mean() and curve[2] == ours
    assert (curve[1:] <= curve[:-1]).all()
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(dim=1) != y, result.success)
    two = FMN(model, eps=eps, norm=norm, steps=50, target_classes=2).perturb(x, y)
    assert (two.details["min_norm"] <= found).all()  # the first search is the same; the second only adds
    assert (apgd.success & (two.details["min_norm"] > eps)).sum() <= 1
    assert 1 - two.success.float().mean().item() <= theirs + 1 / len(y)
    with torch.no_grad():
        assert torch.equal(model(two.x_adv).argmax(dim=1) != y, two.success)


def test_clean_misclassified_samples_have_norm_zero_and_stay_clean(bars4):
    model, x, y = bars4
    x, y = x[:6], y[:6].clone()
    y[:3] = (y[:3] + 1) % 4  # wrong labels: the clean input already "fools" the model
    for early_stop in (True, False):
        result = FMN(model, eps=4 / 255, steps=10, early_stop=early_stop).perturb(x, y)
        found = result.details["min_norm"]
        assert result.clean_success[:3].all() and not result.clean_success[3:].any()
        assert (found[:3] == 0).all() and (found[3:] > 0).all()
        assert result.success[:3].all() and torch.equal(result.x_adv[:3], x[:3])


def test_eps_zero_returns_the_clean_input_and_still_reports_min_norm(bars4):
    model, x, y = bars4
    x, y = x[:4], y[:4]
    zero = FMN(model, eps=0.0, norm="L2", steps=20).perturb(x, y)
    some = FMN(model, eps=0.5, norm="L2", steps=20).perturb(x, y)
    assert torch.equal(zero.x_adv, x) and torch.equal(zero.success, zero.clean_success)
    assert torch.equal(zero.details["min_norm"], some.details["min_norm"])  # the search does not depend on eps
    assert torch.isfinite(zero.details["min_norm"]).all()


def test_max_batch_chunks_join_min_norm(bars4):
    model, x, y = bars4
    x, y = x[:5], y[:5]
    whole = FMN(model, eps=0.3, norm="L2", steps=8).perturb(x, y)
    chunked = FMN(model, eps=0.3, norm="L2", steps=8, max_batch=2).perturb(x, y)
    assert chunked.details["min_norm"].shape == (5,)
    torch.testing.assert_close(chunked.details["min_norm"], whole.details["min_norm"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(chunked.x_adv, whole.x_adv, rtol=0, atol=1e-6)


def test_targeted_reaches_the_target(bars4):
    model, x, y = bars4
    x, y = x[:8], y[:8]
    target = (y + 2) % 4
    result = FMN(model, eps=1.0, norm="L2", steps=30, targeted=True).perturb(x, y, target=target)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(dim=1)
    assert torch.equal(pred == target, result.success) and result.success.float().mean() >= 0.5


def test_a_sample_that_cannot_move_has_no_adversarial_norm(bars4):
    model, x, y = bars4
    mask = torch.ones_like(x[:2])
    mask[0] = 0  # the first sample may change nowhere
    result = FMN(model, eps=1.0, norm="L2", steps=10).perturb(x[:2], y[:2], mask=mask)
    assert math.isinf(result.details["min_norm"][0].item()) and torch.equal(result.x_adv[0], x[0])
    assert not result.success[0]


# ---- the interface ---------------------------------------------------------------------------------------------


def test_classification_only_and_fixed_arguments():
    x = torch.rand(2, 1, 8, 8)
    multilabel = TinyClassifier(2, 1, 3).eval()
    with pytest.raises(ValueError, match="`task`"):
        FMN(multilabel, steps=2)(x, torch.tensor([[0, 1, 1], [1, 0, 0]]))
    segmenter = TinySegmenter(2, 1, 2).eval()
    with pytest.raises(ValueError, match="`task`"):
        FMN(segmenter, steps=2)(x, torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="`task`"):  # class-index labels, but per-voxel logits
        FMN(segmenter, steps=2)(x, torch.tensor([0, 1]))
    for fixed in ("task", "loss", "restarts", "kappa", "objective"):
        assert fixed not in attack_arguments("fmn")
    with pytest.raises(TypeError, match="task"):
        FMN(multilabel, task="multilabel")
    with pytest.raises(ValueError, match="target_classes"):
        FMN(multilabel, targeted=True, target_classes=2)
    for bad in (
        {"gamma": 1.0},
        {"gamma": 0.01, "gamma_final": 0.02},
        {"alpha": 0.0},
        {"alpha": 1.0, "alpha_final": 2.0},
    ):
        with pytest.raises(ValueError):
            FMN(multilabel, **bad)


def test_cosine_schedule():
    assert cosine_schedule(1.0, 0.01, 0, 10) == 1.0
    assert math.isclose(cosine_schedule(1.0, 0.01, 5, 10), 0.505)
    values = [cosine_schedule(0.05, 0.001, k, 7) for k in range(7)]
    assert all(a > b for a, b in zip(values, values[1:])) and values[-1] > 0.001


def test_robust_accuracy_curve():
    norms = torch.tensor([0.0, 0.1, 0.2, float("inf")], dtype=torch.float64)
    curve = robust_accuracy_curve(norms, [0.0, 0.1, 0.15, 1e9])
    assert curve.dtype == torch.float64 and curve.tolist() == [0.75, 0.5, 0.5, 0.25]
    assert robust_accuracy_curve([0.3, 0.4], (0.35,)).tolist() == [0.5]
    assert math.isnan(robust_accuracy_curve(torch.zeros(0), [0.1])[0].item())
    with pytest.raises(ValueError, match="min_norms"):
        robust_accuracy_curve(torch.tensor([0.1, float("nan")]), [0.1])
    with pytest.raises(ValueError, match="min_norms"):
        robust_accuracy_curve(torch.tensor([-0.1]), [0.1])
    with pytest.raises(ValueError, match="eps_grid"):
        robust_accuracy_curve(norms, [-1.0])
    # other attacks' breaks at fixed budgets count from their budget on
    broken_at = torch.tensor([float("inf"), 0.05, float("inf"), 0.5], dtype=torch.float64)
    assert robust_accuracy_curve(norms, [0.0, 0.1, 0.15, 1e9], broken_at).tolist() == [0.75, 0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="broken_at"):
        robust_accuracy_curve(norms, [0.1], broken_at[:2])


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_no_host_synchronisation_per_step(monkeypatch, norm):
    def build(model, steps):
        return FMN(model, eps=1e-5, steps=steps, norm=norm)

    assert _syncs_per_step(monkeypatch, build, (3, 7)) == 0


@pytest.mark.slow
@settings(max_examples=300)
@given(problems(attacks=("fmn",)))
def test_result_is_what_the_model_and_the_norms_say_thorough(p):
    """The same checks over many more random problems (run with `pytest -m slow`)."""
    test_result_is_what_the_model_and_the_norms_say.hypothesis.inner_test(p)


@pytest.mark.slow
@settings(max_examples=200)
@given(problems(dtype=torch.float64, attacks=("fmn",)))
def test_independent_of_batch_composition_and_deterministic_thorough(p):
    """The same checks over many more random problems (run with `pytest -m slow`)."""
    test_independent_of_batch_composition_and_deterministic.hypothesis.inner_test(p)
