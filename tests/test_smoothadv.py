# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""SmoothAdv: adversarial training of the smoothed soft classifier (Salman et al. 2019)."""

import pytest
import torch
import torch.nn.functional as F

from monai_adv.defenses import SmoothAdv, SmoothedSoftClassifier, make_defense
from tests.cases import same_snapshot, snapshot
from tests.models import TinyClassifier, TinySegmenter, bars_dataset


@pytest.fixture
def problem():
    x, y = bars_dataset(12, seed=4)
    torch.manual_seed(0)
    return TinyClassifier(2, 1, 3).double(), 0.3 + 0.4 * x.double(), y  # in [0.3, 0.7]: room for the attack


def _soft_loss(net, x, noise, y):
    """SmoothAdv's objective by hand: -log of the mean softmax over the noise copies."""
    probs = torch.stack([F.softmax(net(x + n), dim=1) for n in noise]).mean(0)
    return -torch.log(probs.gather(1, y[:, None])[:, 0])


def test_one_step_is_the_normalised_gradient_of_the_smoothed_soft_loss(problem):
    net, x, y = problem
    net.eval()
    defense = SmoothAdv(sigma=0.25, eps=0.05, steps=1, m=3)
    noise = defense.noise_copies(x, seed=1)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_soft_loss(net, leaf, noise, y).sum(), leaf)
    direction = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    # a step of 2 eps (the paper's step for one step), projected back onto the eps-ball: eps along the gradient
    expected = x + 0.05 * direction
    x_adv = defense.inner_attack(net, seed=1, noise=noise)(x, y)
    torch.testing.assert_close(x_adv, expected)
    assert _soft_loss(net, x_adv, noise, y).mean() > _soft_loss(net, x, noise, y).mean()


def test_the_training_loss_is_the_cross_entropy_of_every_noisy_copy_of_x_adv(problem):
    net, x, y = problem
    net.eval()  # no batch statistics: the hand computation sees the same network
    defense = SmoothAdv(sigma=0.25, eps=0.3, steps=3, m=2)
    loss, outputs = defense(net, x, y, seed=7)
    noise = defense.noise_copies(x, seed=7)
    x_adv = defense.inner_attack(net, seed=7, noise=noise)(x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.3 + 1e-9) and x_adv.min() >= 0 and x_adv.max() <= 1
    expected = torch.stack([F.cross_entropy(net(x_adv + n), y) for n in noise]).mean()
    torch.testing.assert_close(loss, expected)
    soft = torch.stack([F.softmax(net(x_adv + n), dim=1) for n in noise]).mean(0)
    torch.testing.assert_close(outputs["adversarial"], torch.log(soft).float(), rtol=1e-5, atol=1e-6)
    assert outputs["clean"] is None


def test_noise_copies_are_per_sample_seeded_and_distinct(problem):
    _, x, _ = problem
    defense = SmoothAdv(sigma=0.5, m=3)
    noise = defense.noise_copies(x, seed=2)
    assert noise.shape == (3, *x.shape)
    assert torch.equal(noise, defense.noise_copies(x, seed=2))
    assert torch.equal(defense.noise_copies(x[[5, 2]], seed=2), noise[:, [5, 2]])
    assert not torch.equal(noise[0], noise[1])
    assert noise.std().item() == pytest.approx(0.5, rel=0.05)


def test_the_attack_leaves_the_network_as_it_found_it(problem):
    net, x, y = problem
    net.train()
    before = snapshot(net)
    defense = SmoothAdv(eps=0.5, steps=2, m=2)
    defense.inner_attack(net, seed=0, noise=defense.noise_copies(x, 0))(x, y)
    assert same_snapshot(before, snapshot(net)) and net.training


def test_trains_a_classifier():
    x, y = bars_dataset(24, seed=3)
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    defense = make_defense("smoothadv", sigma=0.12, eps=0.1, steps=1, m=2)
    losses = []
    for step in range(15):
        net.train()
        opt.zero_grad()
        loss, _ = defense(net, x, y, seed=step)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) < sum(losses[:5]), losses


def test_bad_arguments_and_inputs_are_clear_errors(problem):
    net, x, y = problem
    with pytest.raises(ValueError, match="`norm` must be 'L2'"):
        make_defense("smoothadv", norm="Linf")
    with pytest.raises(ValueError, match="`m` must be an integer >= 1"):
        make_defense("smoothadv", m=0)
    with pytest.raises(ValueError, match="`sigma`"):
        make_defense("smoothadv", sigma=-1.0)
    with pytest.raises(ValueError, match="pass noise="):
        SmoothAdv().inner_attack(net)
    with pytest.raises(ValueError, match="defined for classification"):
        SmoothAdv(steps=1)(TinySegmenter(2, 1, 2), torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="defined for classification"):
        SmoothAdv(steps=1)(net, x, (torch.rand(12, 3) > 0.5).double())
    with pytest.raises(ValueError, match=r"holds noise for inputs \(12, 1, 16, 16\)"):
        SmoothedSoftClassifier(net, torch.zeros(2, *x.shape, dtype=x.dtype))(x[:3])
