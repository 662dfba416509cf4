# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The pluggable objective: callable losses, the context they read, Objective subclasses, loss masks and options."""

import pytest
import torch
import torch.nn.functional as F

from monai_adv.attacks import APGD, PGD, Objective, make_attack
from monai_adv.attacks import losses as L
from tests.models import TinyClassifier, TinySegmenter


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return TinyClassifier(2, 1, 3).eval(), torch.rand(6, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.fixture
def segmenter():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 12, 12)
    return TinySegmenter(2, 1, 3).eval(), x, torch.randint(0, 3, (2, 1, 12, 12))


def test_a_callable_loss_runs_and_equals_the_named_loss_it_restates(classifier):
    model, x, y = classifier

    def my_ce(logits, y):
        return F.cross_entropy(logits, y, reduction="none")

    named = PGD(model, eps=8 / 255, steps=5, seed=1).perturb(x, y)
    mine = PGD(model, eps=8 / 255, steps=5, seed=1, loss=my_ce).perturb(x, y)
    assert torch.equal(named.x_adv, mine.x_adv) and torch.equal(named.success, mine.success)
    assert torch.allclose(named.loss, mine.loss)
    # by name from the registry too, e.g. in a config
    assert torch.equal(
        make_attack("apgd", model, eps=8 / 255, steps=5, loss=my_ce)(x, y), APGD(model, eps=8 / 255, steps=5)(x, y)
    )


def test_a_callable_loss_reads_the_context_it_names(classifier):
    model, x, y = classifier
    seen = {}

    def pull_down_the_true_logit(logits, y, clean_logits, kappa, task):
        seen.update(clean=clean_logits.shape, kappa=kappa, task=task)
        return -(logits.gather(1, y[:, None])[:, 0] - clean_logits.gather(1, y[:, None])[:, 0]).clamp_max(kappa)

    x_adv = PGD(model, eps=16 / 255, steps=5, kappa=100.0, loss=pull_down_the_true_logit, early_stop=False)(x, y)
    assert seen == {"clean": (6, 3), "kappa": 100.0, "task": "classification"}
    with torch.no_grad():
        drop = model(x).gather(1, y[:, None]) - model(x_adv).gather(1, y[:, None])
    assert (drop > 0).all()
    # the KL loss of TRADES is such a loss: the named one equals the callable
    kl = PGD(model, eps=8 / 255, steps=3, loss="kl", start_sigma=1e-3, early_stop=False)(x, y)

    def my_kl(logits, y, clean_logits):
        return F.kl_div(F.log_softmax(logits, 1), F.softmax(clean_logits, 1), reduction="none").sum(1)

    torch.testing.assert_close(
        kl, PGD(model, eps=8 / 255, steps=3, loss=my_kl, start_sigma=1e-3, early_stop=False)(x, y), rtol=0, atol=0
    )


def test_bad_callable_losses_are_named(classifier):
    model, x, y = classifier
    with pytest.raises(TypeError, match="must take the logits and the labels"):
        PGD(model, loss=lambda logits: logits.sum(1))
    with pytest.raises(ValueError, match=r"`loss` must return one value per sample, shape \(6,\)"):
        PGD(model, steps=1, loss=lambda logits, y: logits)(x, y)
    with pytest.raises(ValueError, match="`loss` must be one of"):
        PGD(model, loss="hinge")
    with pytest.raises(ValueError, match=r"`loss_kwargs` \['smoth'\] are not options of the loss 'dice'"):
        PGD(model, loss="dice", loss_kwargs={"smoth": 0.0})


def test_an_objective_subclass_changes_the_goal(classifier):
    model, x, y = classifier

    class Confident(Objective):
        """Success only once the true class's probability falls below 0.1 (a stricter goal)."""

        def success(self, logits, idx):
            return torch.softmax(logits.float(), 1).gather(1, self.labels[idx][:, None])[:, 0] < 0.1

    strict = PGD(model, eps=32 / 255, steps=10, objective=Confident).perturb(x, y)
    with torch.no_grad():
        p_true = torch.softmax(model(strict.x_adv), 1).gather(1, y[:, None])[:, 0]
    assert torch.equal(strict.success, p_true < 0.1)

    class AlreadyDone(Objective):
        def success(self, logits, idx):
            return torch.ones(logits.shape[0], dtype=torch.bool)

    done = PGD(model, eps=8 / 255, steps=5, objective=AlreadyDone).perturb(x, y)
    assert done.clean_success.all() and torch.equal(done.x_adv, x)  # early stop: nothing left to attack
    with pytest.raises(TypeError, match="`objective` must be a subclass"):
        PGD(model, objective=object)


def test_the_segmentation_loss_is_restricted_to_the_loss_mask(segmenter):
    model, x, y = segmenter
    seen = []

    def recording_ce(logits, y, mask):
        seen.append(mask)
        return L.segmentation_cross_entropy(logits, y, mask)

    roi = torch.zeros(2, 1, 12, 12)
    roi[:, :, 3:9, 3:9] = 1
    PGD(model, eps=8 / 255, steps=1, loss=recording_ce, loss_in_mask=True, early_stop=False)(x, y, mask=roi)
    assert all(torch.equal(m, roi[:, 0]) for m in seen)  # the perturbation mask, as (N, *spatial)
    seen.clear()
    region = torch.zeros(2, 12, 12)
    region[:, :4] = 1
    PGD(model, eps=8 / 255, steps=1, loss=recording_ce, early_stop=False)(x, y, mask=roi, loss_mask=region)
    assert all(torch.equal(m, region) for m in seen)  # an explicit loss mask wins
    seen.clear()
    PGD(model, eps=8 / 255, steps=1, loss=recording_ce, early_stop=False)(x, y, mask=roi)
    assert all(m is None for m in seen)  # default: every voxel
    # the named losses take it too: the loss outside the region does not move the attack
    inside = PGD(model, eps=16 / 255, steps=5, loss="dice", loss_in_mask=True, seed=0).perturb(x, y, mask=roi)
    outside = PGD(model, eps=16 / 255, steps=5, loss="dice", seed=0).perturb(x, y, mask=roi)
    assert not torch.equal(inside.x_adv, outside.x_adv)
    with pytest.raises(ValueError, match="restrict the voxel loss of segmentation"):
        PGD(TinyClassifier(2, 1, 3), loss_in_mask=True)(x, torch.tensor([0, 1]), mask=roi)
    with pytest.raises(ValueError, match="does not match the label map"):
        PGD(model, steps=1)(x, y, loss_mask=torch.ones(2, 5, 5))


def test_loss_options_reach_the_named_loss(segmenter):
    model, x, y = segmenter
    seen = []
    original = L.soft_dice_loss

    def spy(*args, **kwargs):
        seen.append(args[3:])
        return original(*args, **kwargs)

    L.soft_dice_loss = spy
    try:
        PGD(model, eps=8 / 255, steps=1, loss="dice", loss_kwargs={"include_background": True, "smooth": 0.5})(x, y)
    finally:
        L.soft_dice_loss = original
    assert seen and all(options == (True, 0.5) for options in seen)


def test_settings_and_with_model(classifier):
    model, x, y = classifier
    attack = PGD(model, eps=4 / 255, steps=3, seed=5, loss="cw", kappa=2.0)
    settings = attack.settings()
    assert settings["eps"] == 4 / 255 and settings["seed"] == 5 and settings["loss"] == "cw"
    assert settings["kappa"] == 2.0 and "steps" not in settings and "model" not in settings
    other = TinyClassifier(2, 1, 3).eval()
    moved = attack.with_model(other)
    assert moved.model is other and attack.model is model and moved.steps == 3
    assert torch.equal(moved(x, y), PGD(other, eps=4 / 255, steps=3, seed=5, loss="cw", kappa=2.0)(x, y))
