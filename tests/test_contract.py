# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Property tests of the attack contract (DESIGN.md section 3) for every attack, task, dim, norm, range and mask."""

import pytest
import torch
from hypothesis import given, settings

from monai_adv.attacks import make_attack
from monai_adv.attacks.projections import random_start
from monai_adv.attacks.seeding import sample_generators, sample_keys
from tests.cases import problems, same_snapshot, snapshot
from tests.models import PerSample


def _norms(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    diff = x_adv.double() - x.double()
    if norm == "Linf":
        return diff.abs().flatten(1).amax(dim=1)
    return diff.flatten(1).norm(p=2, dim=1)


@given(problems())
def test_budget_range_mask_and_type(p):
    attack = make_attack(p.attack, p.model, **p.kwargs)
    x_in = p.x.clone()
    result = attack.perturb(p.x, p.y, mask=p.mask)
    x_adv = result.x_adv
    assert torch.equal(p.x, x_in), "the input was modified in place"
    assert type(x_adv) is type(p.x) and x_adv.shape == p.x.shape
    assert x_adv.dtype == p.x.dtype and x_adv.device == p.x.device
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    eps, norm = p.kwargs["eps"], p.kwargs["norm"]
    assert (_norms(x_adv, p.x, norm) <= eps).all(), "left the eps-ball"
    if norm == "Linf":  # the float32 difference stays within the float32 eps as well
        assert ((x_adv - p.x).abs() <= eps).all()
    if p.value_range is not None:
        assert x_adv.min() >= p.value_range[0] and x_adv.max() <= p.value_range[1], "left the value range"
    if p.mask is not None:
        frozen = p.mask.expand_as(p.x) if p.mask.ndim == p.x.ndim else p.mask.unsqueeze(0).expand_as(p.x)
        assert torch.equal(x_adv[frozen == 0], p.x[frozen == 0]), "changed a voxel outside the mask"
    assert result.clean_success.shape == (p.x.shape[0],)
    if result.success is not None:
        assert result.success.shape == (p.x.shape[0],) and result.success.dtype == torch.bool


@given(problems())
def test_model_left_exactly_as_found(p):
    # some existing .grad fields and a frozen parameter, as in the middle of a training step
    params = list(p.model.parameters())
    params[0].grad = torch.randn_like(params[0])
    params[-1].requires_grad_(False)
    before = snapshot(p.model)
    make_attack(p.attack, p.model, **p.kwargs)(p.x, p.y, mask=p.mask)
    assert same_snapshot(before, snapshot(p.model))


@given(problems())
def test_deterministic_for_a_seed(p):
    attack = make_attack(p.attack, p.model, **p.kwargs)
    first = attack(p.x, p.y, mask=p.mask)
    second = make_attack(p.attack, p.model, **p.kwargs)(p.x, p.y, mask=p.mask)
    assert torch.equal(first, second)


@given(problems(dtype=torch.float64, attacks=("pgd", "cw", "apgd", "apgd_t", "fab_t", "square", "simba", "autoattack")))
def test_independent_of_batch_composition(p):
    """Each sample's result is the same alone, in the batch and in the reversed batch.

    The model runs one sample at a time in float64, so that what remains of the batch is the attack's own
    doing (random streams, early stopping, best-iterate bookkeeping), up to the rounding of batched kernels.
    """
    attack = make_attack(p.attack, PerSample(p.model), **p.kwargs)
    mask = p.mask
    if mask is not None and mask.ndim == p.x.ndim:
        mask = mask.expand(p.x.shape[0], *mask.shape[1:])
    batch = attack(p.x, p.y, mask=mask)
    flip = torch.arange(p.x.shape[0] - 1, -1, -1)
    flipped_mask = None if mask is None else (mask if mask.ndim < p.x.ndim else mask[flip])
    reversed_batch = attack(p.x[flip], p.y[flip], mask=flipped_mask)
    torch.testing.assert_close(reversed_batch[flip], batch, rtol=0, atol=1e-6)
    for i in range(p.x.shape[0]):
        m = None if mask is None else (mask if mask.ndim < p.x.ndim else mask[i : i + 1])
        alone = attack(p.x[i : i + 1], p.y[i : i + 1], mask=m)
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_starts_are_drawn_per_sample(norm):
    x = torch.rand(4, 2, 8, 8)
    x[3] = x[1]  # a duplicate sample draws the same start
    keys = sample_keys(x)
    batch = random_start(x, 0.1, norm, None, sample_generators(keys, 7, 0, x.device))
    for i in range(4):
        alone = random_start(x[i : i + 1], 0.1, norm, None, sample_generators(keys[i : i + 1], 7, 0, x.device))
        assert torch.equal(alone[0], batch[i])
    assert torch.equal(batch[1], batch[3]) and not torch.equal(batch[0], batch[1])
    other_seed = random_start(x, 0.1, norm, None, sample_generators(keys, 8, 0, x.device))
    other_stream = random_start(x, 0.1, norm, None, sample_generators(keys, 7, 1, x.device))
    assert not torch.equal(batch, other_seed) and not torch.equal(batch, other_stream)


@pytest.mark.slow
@settings(max_examples=2000)
@given(problems())
def test_budget_range_mask_and_type_thorough(p):
    """The same contract over many more random problems (run with `pytest -m slow`)."""
    test_budget_range_mask_and_type.hypothesis.inner_test(p)
