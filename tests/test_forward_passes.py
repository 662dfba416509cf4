# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Attacks make no forward pass beyond those their algorithm needs, and skipping one changes nothing."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_adv.attacks import APGD, FGSM, PGD
from tests.models import CallCounter, TinyClassifier, TinySegmenter


def _calls(model: CallCounter, fn) -> tuple:
    model.calls = 0
    out = fn()
    return out, model.calls


def _classifier():
    torch.manual_seed(0)
    return CallCounter(TinyClassifier(2, 1, 3).eval())


@settings(max_examples=15, deadline=None)
@given(
    steps=st.integers(1, 4),
    eps=st.sampled_from([2 / 255, 8 / 255]),
    norm=st.sampled_from(["Linf", "L2"]),
    seed=st.integers(0, 2**31 - 1),
    masked=st.booleans(),
)
def test_adversarial_training_config_skips_the_clean_pass_and_nothing_else(steps, eps, norm, seed, masked):
    model = _classifier()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(6, 1, 12, 12, generator=g), torch.randint(0, 3, (6,), generator=g)
    mask = (torch.rand(6, 1, 12, 12, generator=g) > 0.5).float() if masked else None
    attack = PGD(model, eps=eps, steps=steps, norm=norm, best_iterate=False, early_stop=False, seed=seed)
    x_call, calls = _calls(model, lambda: attack(x, y, mask=mask))
    result, calls_perturb = _calls(model, lambda: attack.perturb(x, y, mask=mask))
    assert torch.equal(x_call, result.x_adv)
    assert calls == steps and calls_perturb == steps + 1
    if masked:
        assert torch.equal(x_call[mask == 0], x[mask == 0])


def test_fast_at_fgsm_is_one_forward_backward_pass():
    model = _classifier()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    attack = FGSM(model, eps=8 / 255, alpha=10 / 255, random_start=True)
    x_call, calls = _calls(model, lambda: attack(x, y))
    assert calls == 1 and torch.equal(x_call, attack.perturb(x, y).x_adv)


def test_segmentation_training_config_skips_the_clean_pass():
    torch.manual_seed(0)
    model = CallCounter(TinySegmenter(3, 1, 2).eval())
    x, y = torch.rand(2, 1, 10, 10, 10), torch.randint(0, 2, (2, 1, 10, 10, 10))
    attack = PGD(model, eps=4 / 255, steps=3, loss="dice", best_iterate=False, early_stop=False)
    x_call, calls = _calls(model, lambda: attack(x, y))
    assert calls == 3 and torch.equal(x_call, attack.perturb(x, y).x_adv)


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda m: PGD(m, eps=8 / 255, steps=3, early_stop=False), 3 + 2),  # clean + steps + last iterate's score
        (lambda m: PGD(m, eps=8 / 255, steps=3, random_start=False, early_stop=False), 3 + 1),  # clean = first
        (lambda m: PGD(m, eps=8 / 255, steps=3, best_iterate=False, early_stop=True), 3 + 1),  # reads clean
        (lambda m: PGD(m, eps=8 / 255, steps=3, best_iterate=False, early_stop=False, targeted="least_likely"), 4),
        (lambda m: APGD(m, eps=8 / 255, steps=3, early_stop=False), 3 + 2),  # clean + start + steps
    ],
)
def test_attacks_that_read_the_clean_prediction_make_exactly_their_passes(make, expected):
    model = _classifier()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    _, calls = _calls(model, lambda: make(model)(x, y))
    assert calls == expected
