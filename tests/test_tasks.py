# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Tasks and goals: binary, multi-class, multi-label; untargeted and targeted; early stop and best iterate."""

import pytest
import torch

from monai_adv.attacks import APGD, CW, FGSM, PGD, Objective
from tests.models import TinyClassifier


def test_trained_classifier_is_broken_and_success_is_reported(trained_bars):
    model, x, y = trained_bars
    result = PGD(model, eps=16 / 255, steps=20).perturb(x, y)
    with torch.no_grad():
        fooled = model(result.x_adv).argmax(1) != y
        clean_wrong = model(x).argmax(1) != y
    assert torch.equal(result.success, fooled)
    assert torch.equal(result.clean_success, clean_wrong)
    assert fooled.float().mean() > 0.5


@pytest.mark.parametrize("mode", ["least_likely", "random"])
def test_targeted_modes_reach_their_targets(trained_bars, mode):
    model, x, y = trained_bars
    x, y = x[:64], y[:64]
    attack = PGD(model, eps=32 / 255, steps=30, alpha=4 / 255, targeted=mode)
    result = attack.perturb(x, y)
    with torch.no_grad():
        clean_logits = model(x)
        pred = model(result.x_adv).argmax(1)
    if mode == "least_likely":
        target = clean_logits.argmin(1)
        assert torch.equal(result.success, pred == target)
    else:
        target = pred[result.success]
        assert (target != y[result.success]).all()
    assert result.success.float().mean() > 0.8


def test_random_targets_are_other_classes_and_seeded(trained_bars):
    model, x, y = trained_bars
    x, y = x[:64], y[:64]

    def targets_of(seed, images, labels):
        seen = []

        class Recording(Objective):  # the objective the attack builds for the batch: read its targets
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                seen.append(self.targets)

        PGD(model, eps=32 / 255, steps=1, targeted="random", seed=seed, objective=Recording)(images, labels)
        return seen[0]

    targets = targets_of(3, x, y)
    assert (targets != y).all() and targets.min() >= 0 and targets.max() <= 2
    assert torch.equal(targets, targets_of(3, x, y))
    assert not torch.equal(targets, targets_of(4, x, y))
    # a sample's target does not depend on its batch
    assert targets_of(3, x[5:6], y[5:6]).item() == targets[5].item()


def test_explicit_targets(trained_bars):
    model, x, y = trained_bars
    x, y = x[:32], y[:32]
    target = (y + 1) % 3
    result = PGD(model, eps=32 / 255, steps=30, alpha=4 / 255, targeted=True).perturb(x, y, target=target)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == target) and result.success.float().mean() > 0.8


def test_binary_single_logit_classifier():
    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()  # top half brighter than bottom
    model = TinyClassifier(2, 1, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y.float()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        clean = ((model(x)[:, 0] > 0).long() == y).float().mean()
    assert clean > 0.85
    for attack in (PGD(model, eps=16 / 255, steps=10), CW(model, eps=16 / 255, steps=10)):
        result = attack.perturb(x, y)
        with torch.no_grad():
            adv = ((model(result.x_adv)[:, 0] > 0).long() == y).float().mean()
        assert adv < clean - 0.2
        assert torch.equal(result.success, (model(result.x_adv)[:, 0] > 0).long() != y)


def test_multilabel_attack_flips_labels():
    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8)
    # label k: quadrant k brighter than the image mean
    quads = torch.stack([x[:, 0, :4, :4], x[:, 0, :4, 4:], x[:, 0, 4:, :4], x[:, 0, 4:, 4:]], 1).mean((2, 3))
    y = (quads > x.mean((1, 2, 3))[:, None]).float()
    model = TinyClassifier(2, 1, 4)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        exact = ((model(x) > 0).float() == y).all(1).float().mean()
    for attack in (
        PGD(model, eps=8 / 255, steps=10),
        CW(model, eps=8 / 255, steps=10),
        APGD(model, eps=8 / 255, steps=10),
    ):
        result = attack.perturb(x, y)
        assert result.task == "multilabel"
        with torch.no_grad():
            adv_exact = ((model(result.x_adv) > 0).float() == y).all(1)
        assert torch.equal(result.success, ~adv_exact)
        assert adv_exact.float().mean() < exact - 0.2


def test_early_stop_leaves_clean_failures_untouched_and_keeps_first_success(trained_bars):
    model, x, y = trained_bars
    wrong = y.clone()
    wrong[:8] = (y[:8] + 1) % 3  # the model is right, so these labels make the clean input "fooled"
    out = PGD(model, eps=8 / 255, steps=5)(x[:16], wrong[:16])
    assert torch.equal(out[:8], x[:8])
    out_all = PGD(model, eps=8 / 255, steps=5, early_stop=False)(x[:16], wrong[:16])
    assert not torch.equal(out_all[:8], x[:8])


def test_best_iterate_never_worse_than_last_iterate(trained_bars):
    model, x, y = trained_bars
    kwargs = {"eps": 12 / 255, "steps": 20, "random_start": False}
    best = PGD(model, best_iterate=True, **kwargs)(x, y)
    last = PGD(model, best_iterate=False, early_stop=False, **kwargs)(x, y)
    with torch.no_grad():
        best_fooled = model(best).argmax(1) != y
        last_fooled = model(last).argmax(1) != y
    assert bool((best_fooled | ~last_fooled).all())


def test_restarts_are_at_least_as_strong_as_one_run(trained_bars):
    model, x, y = trained_bars
    one = PGD(model, eps=12 / 255, steps=10, restarts=1, seed=0).perturb(x, y)
    three = PGD(model, eps=12 / 255, steps=10, restarts=3, seed=0).perturb(x, y)
    assert bool((three.success | ~one.success).all()), "restart 0 is shared, later restarts can only add"
    assert three.success.sum() >= one.success.sum()


def test_fgsm_random_start_variant_stays_in_ball(trained_bars):
    model, x, y = trained_bars
    out = FGSM(model, eps=8 / 255, alpha=10 / 255, random_start=True)(x, y)
    assert (out - x).abs().max() <= 8 / 255
    assert not torch.equal(out, FGSM(model, eps=8 / 255)(x, y))


def test_random_targets_in_the_training_configuration_match_perturb():
    # random start, no early exit, last iterate: the call skips the clean pass, the targets stay the same
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 4).eval()
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    attack = PGD(model, eps=8 / 255, steps=2, targeted="random", best_iterate=False, early_stop=False, seed=2)
    assert torch.equal(attack(x, y), attack.perturb(x, y).x_adv)
