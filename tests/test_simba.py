# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""SimBA: orthonormal pixel and DCT bases in 2D and 3D, any channel count, exact query counts."""

import math

import pytest
import torch

from monai_adv.attacks import SimBA
from monai_adv.attacks.simba import dct_matrix
from tests.models import CountingModel, TinyClassifier


@pytest.mark.parametrize("size", [1, 5, 16])
def test_dct_matrix_is_orthonormal(size):
    d = dct_matrix(size, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(size, dtype=torch.float64))


@pytest.mark.parametrize("basis", ["dct", "pixel"])
@pytest.mark.parametrize("shape", [(1, 6, 5), (3, 4, 4), (2, 3, 4, 3)])
def test_directions_form_an_orthonormal_basis(basis, shape):
    attack = SimBA(lambda v: v.flatten(1)[:, :3], eps=0.1, basis=basis)
    count = math.prod(shape)
    q = attack._directions(torch.arange(count), shape, torch.float64).reshape(count, count)
    torch.testing.assert_close(q @ q.T, torch.eye(count, dtype=torch.float64))


def test_dct_order_tries_low_frequencies_first():
    attack = SimBA(lambda v: v.flatten(1)[:, :3], eps=0.1, basis="dct", freq_dims=2, stride=2)
    order = attack._orders((1, 6, 6), [torch.Generator().manual_seed(s) for s in range(3)], "cpu")
    rows, cols = order // 6, order % 6
    band = torch.maximum(rows, cols)
    assert (band[:, :4] < 2).all() and (band[:, 4:16] < 4).all() and (band[:, 16:] >= 4).all()
    assert not torch.equal(order[0], order[1]), "each sample draws its own order"


@pytest.mark.parametrize("basis,queries,early_stop", [("dct", 1, True), ("dct", 40, True), ("pixel", 77, False)])
def test_queries_are_counted_exactly_and_never_exceed_the_budget(basis, queries, early_stop):
    n = 10
    model = CountingModel(n).eval()
    x = torch.rand(n, 2, 16, 16)
    x[:, 1] = torch.arange(n, dtype=torch.float32)[:, None, None]  # sample ids, kept exactly by the mask
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(x)
    mask[:, 0] = 1
    attack = SimBA(model, eps=0.1, queries=queries, basis=basis, value_range=None, early_stop=early_stop)
    result = attack.perturb(x, y, mask=mask)
    assert torch.equal(result.queries, model.counts)
    assert int(result.queries.max()) <= queries
    assert torch.equal(result.x_adv[:, 1], x[:, 1])


@pytest.mark.parametrize("channels,spatial", [(1, (16, 16)), (3, (16, 16)), (1, (8, 8, 8)), (3, (6, 6, 6))])
def test_runs_with_one_or_three_channels_in_2d_and_3d(channels, spatial):
    torch.manual_seed(0)
    model = TinyClassifier(len(spatial), channels, 3).eval()
    x = torch.rand(3, channels, *spatial)
    y = torch.tensor([0, 1, 2])
    for basis in ("dct", "pixel"):
        result = SimBA(model, eps=0.2, queries=60, basis=basis, norm="L2", early_stop=False).perturb(x, y)
        delta = (result.x_adv - x).flatten(1).norm(dim=1)
        assert (delta <= 0.2 + 1e-6).all() and (delta > 0).any()
        with torch.no_grad():
            clean_loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none").double()
        assert (result.loss >= clean_loss - 1e-6).all(), "SimBA only keeps moves that raise the loss"


def test_simba_breaks_a_trained_classifier(trained_bars):
    model, x, y = trained_bars
    for basis in ("dct", "pixel"):
        result = SimBA(model, eps=2.0, norm="L2", queries=500, basis=basis).perturb(x[:64], y[:64])
        print(f"SimBA-{basis} L2 eps 2.0, 500 queries: robust accuracy {1 - result.success.float().mean():.4f}")
        assert result.success.float().mean() > 0.8
