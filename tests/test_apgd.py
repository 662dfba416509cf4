# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""APGD and APGD-T: the step-size schedule, and strength against the torchattacks reference."""

import pytest
import torch

from monai_adv.attacks import APGD, APGDT, ActiveSet
from monai_adv.attacks.apgd import apgd_checkpoints
from tests.models import TinyClassifier, accuracy

SEEDS = range(4)


def test_checkpoints_follow_the_paper():
    # p_0 = 0.22, then intervals shrinking by 0.03 down to 0.06 (Croce & Hein 2020)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]


def test_step_size_is_halved_on_oscillation_or_stall():
    attack = APGD(lambda v: v.flatten(1), eps=1.0, steps=10, rho=0.75, value_range=None)
    n = 3
    history = torch.zeros(n, 11, dtype=torch.float64)
    history[0, :5] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])  # rising at every step: keep the step
    history[1, :5] = torch.tensor([0.0, 1.0, 0.5, 1.5, 1.0])  # rising at 2 of 4 steps (< 0.75): halve
    history[2, :5] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])  # rising, but stalled since the last check: halve
    state = ActiveSet(
        torch.arange(n),
        x_adv=torch.zeros(n, 1, 2),
        grad=torch.zeros(n, 1, 2),
        x_best=torch.ones(n, 1, 2),
        grad_best=torch.full((n, 1, 2), 2.0),
        loss_best=torch.tensor([4.0, 1.5, 4.0], dtype=torch.float64),
        loss_best_last=torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64),
        reduced_last=torch.tensor([False, False, False]),
        step=torch.full((n,), 2.0, dtype=torch.float64),
        history=history,
    )
    attack._check_step_size(state, done=4, interval=4)
    assert state.step.tolist() == [2.0, 1.0, 1.0]
    assert state.reduced_last.tolist() == [False, True, True]
    # the halved samples restart from their best point and its gradient; the other one goes on
    assert torch.equal(state.x_adv[0], torch.zeros(1, 2)) and torch.equal(state.x_adv[1:], torch.ones(2, 1, 2))
    assert torch.equal(state.grad[1:], torch.full((2, 1, 2), 2.0))


def _mean_accuracy(model, x, y, make):
    return sum(accuracy(model, make(seed)(x, y), y) for seed in SEEDS) / len(SEEDS)


torchattacks = pytest.importorskip("torchattacks")


@pytest.mark.parametrize("loss,eps", [("ce", 12 / 255), ("ce", 16 / 255), ("dlr", 12 / 255)])
def test_apgd_100_at_most_one_point_above_reference(trained_bars, loss, eps):
    """Robust accuracy averaged over random starts: ours <= reference + 1 percentage point."""
    model, x, y = trained_bars
    ours = _mean_accuracy(model, x, y, lambda s: APGD(model, eps=eps, steps=100, loss=loss, seed=s))
    theirs = _mean_accuracy(
        model, x, y, lambda s: torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss=loss, seed=s)
    )
    print(f"APGD-{loss.upper()}-100 eps {eps * 255:.0f}/255: robust accuracy ours {ours:.4f}, reference {theirs:.4f}")
    assert 0.0 < theirs < 1.0
    assert ours <= theirs + 0.01


def test_apgd_t_at_most_one_point_above_reference(trained_bars4):
    model, x, y = trained_bars4
    eps = 12 / 255
    ours = _mean_accuracy(model, x, y, lambda s: APGDT(model, eps=eps, steps=100, target_classes=3, seed=s))
    theirs = _mean_accuracy(model, x, y, lambda s: torchattacks.APGDT(model, eps=eps, steps=100, n_classes=4, seed=s))
    print(f"APGD-T-100 eps 12/255 (4 classes): robust accuracy ours {ours:.4f}, reference {theirs:.4f}")
    assert 0.0 < theirs < 1.0
    assert ours <= theirs + 0.01
    assert "notes" not in APGDT(model, eps=eps, steps=2).perturb(x[:4], y[:4]).details  # 4 classes: no substitute


def test_apgd_t_substitutes_the_loss_below_four_classes(trained_bars):
    model, x, y = trained_bars
    attack = APGDT(model, eps=16 / 255, steps=20)
    result = attack.perturb(x[:64], y[:64])
    assert any("targeted CW margin" in note for note in result.details["notes"])
    assert result.success.float().mean() > 0.5


def test_apgd_t_on_a_single_logit_binary_classifier():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 1).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 1, 0])
    result = APGDT(model, eps=8 / 255, steps=5).perturb(x, y)
    assert any("targeted CW margin" in note for note in result.details["notes"])
    assert (result.x_adv - x).abs().max() <= 8 / 255


def test_apgd_t_is_for_classification_only():
    seg = torch.nn.Conv2d(1, 3, 3, padding=1)
    with pytest.raises(ValueError, match='`task`="classification" needs logits'):
        APGDT(seg, eps=8 / 255, steps=2)(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


def test_apgd_restarts_only_add_fooled_samples(trained_bars):
    model, x, y = trained_bars
    one = APGD(model, eps=12 / 255, steps=20, restarts=1).perturb(x, y)
    three = APGD(model, eps=12 / 255, steps=20, restarts=3).perturb(x, y)
    assert bool((three.success | ~one.success).all())


def test_apgd_is_at_least_as_strong_as_pgd_on_average(trained_bars):
    from monai_adv.attacks import PGD

    model, x, y = trained_bars
    eps = 12 / 255
    apgd = _mean_accuracy(model, x, y, lambda s: APGD(model, eps=eps, steps=100, seed=s))
    pgd = _mean_accuracy(model, x, y, lambda s: PGD(model, eps=eps, steps=20, seed=s))
    print(f"eps 12/255 robust accuracy: APGD-CE-100 {apgd:.4f}, PGD-20 {pgd:.4f}")
    assert apgd <= pgd


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_from_the_reference_start_matches_it_sample_by_sample(trained_bars, monkeypatch, loss):
    """From torchattacks' own random start, each sample ends robust or fooled exactly as in torchattacks:
    the step-size schedule, momentum, checkpoints and best-point restarts are the same algorithm."""
    from monai_adv.attacks import apgd
    from tests.reference import torchattacks_apgd_start

    model, x, y = trained_bars
    differ = 0
    for seed in range(2):
        monkeypatch.setattr(apgd, "boundary_start", torchattacks_apgd_start(seed))
        ours = APGD(model, eps=12 / 255, steps=100, loss=loss, seed=seed)(x, y)
        theirs = torchattacks.APGD(model, eps=12 / 255, steps=100, loss=loss, seed=seed)(x, y)
        with torch.no_grad():
            differ += int(((model(ours).argmax(1) == y) != (model(theirs).argmax(1) == y)).sum())
    assert differ <= 1


@pytest.mark.parametrize("loss,share", [("ce", 1.0), ("dlr", 0.95)])
def test_apgd_from_the_reference_start_follows_its_trajectory(trained_bars, monkeypatch, loss, share):
    """Without early exit, a sample never fooled ends at the reference's highest-loss point with its loss.

    The one known difference: at the first checkpoint the reference compares the first step's loss with a
    zero-filled buffer, where the paper (and ours) compares it with the start's loss; with the DLR loss,
    negative before a sample is fooled, this changes the step size of a few samples.
    """
    from monai_adv.attacks import apgd
    from tests.reference import torchattacks_apgd_start

    model, x, y = trained_bars
    monkeypatch.setattr(apgd, "boundary_start", torchattacks_apgd_start(0))
    ours = APGD(model, eps=12 / 255, steps=100, loss=loss, early_stop=False).perturb(x, y)
    torch.manual_seed(0)
    loss_ref, x_ref = torchattacks.APGD(model, eps=12 / 255, steps=100, loss=loss).perturb(x, y, best_loss=True)
    robust = ~ours.success
    same_point = (ours.x_adv - x_ref)[robust].flatten(1).abs().amax(dim=1) < 1e-5
    same_loss = (ours.loss.float() - loss_ref)[robust].abs() < 1e-5
    assert robust.sum() > 50
    assert (same_point & same_loss).float().mean() >= share
