# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Square attack: schedule, windows in 2D and 3D, exact query counts, strength against the reference."""

import pytest
import torch

from monai_adv.attacks import PGD, Square
from monai_adv.attacks.square import square_fraction, window_side
from monai_adv.attacks.square_l2 import eta_pattern, l2_propose
from tests.models import CountingModel, TinyClassifier, accuracy


def test_p_schedule_halves_at_the_paper_iterations():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 10, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 51, 10000) == 0.2
    assert square_fraction(0.8, 4999, 10000) == 0.8 / 128
    assert square_fraction(0.8, 9000, 10000) == 0.8 / 512
    # rescaled to 1000 iterations: iteration 100 plays 1000
    assert square_fraction(0.8, 100, 1000, rescale=True) == square_fraction(0.8, 1000, 10000)


def test_window_is_a_square_in_2d_and_a_cube_in_3d():
    assert window_side(0.8, (64, 64)) == 57  # round(sqrt(0.8 * 64 * 64))
    assert window_side(0.1, (32, 32, 32)) == 15  # round(cbrt(0.1 * 32^3))
    assert window_side(1e-6, (32, 32, 32)) == 1
    assert window_side(1.0, (8, 64)) == 8  # never wider than the smallest side


@pytest.mark.parametrize("queries,early_stop", [(2, True), (50, True), (120, False)])
def test_queries_are_counted_exactly_and_never_exceed_the_budget(queries, early_stop):
    n = 12
    model = CountingModel(n).eval()
    x = torch.rand(n, 2, 16, 16)
    x[:, 1] = torch.arange(n, dtype=torch.float32)[:, None, None]  # sample ids, kept exactly by the mask
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(x)
    mask[:, 0] = 1
    result = Square(model, eps=16 / 255, queries=queries, value_range=None, early_stop=early_stop).perturb(
        x, y, mask=mask
    )
    assert torch.equal(result.queries, model.counts), "reported query counts must be exact"
    assert int(result.queries.max()) <= queries
    if not early_stop:
        assert (result.queries == queries).all()
    else:
        fooled_early = result.queries < queries
        assert (result.success[fooled_early]).all(), "a sample stops early only once it is fooled"


def test_works_on_a_model_without_gradients(trained_bars):
    """A quantized model masks gradients; the score-based search does not need them."""
    model, x, y = trained_bars
    x, y = x[:64], y[:64]

    def quantized(v):
        return model((v * 8).round() / 8)  # zero gradient almost everywhere

    with pytest.raises(RuntimeError, match="not differentiable"):
        PGD(lambda v: model((v * 8).round().detach() / 8), eps=16 / 255)(x, y)
    result = Square(quantized, eps=32 / 255, queries=300).perturb(x, y)
    assert result.success.float().mean() > 0.3


def test_square_on_a_3d_volume():
    torch.manual_seed(0)
    model = TinyClassifier(3, 1, 3).eval()
    x = torch.rand(2, 1, 12, 12, 12)
    result = Square(model, eps=8 / 255, queries=30, early_stop=False).perturb(x, torch.tensor([0, 1]))
    assert (result.x_adv - x).abs().max() <= 8 / 255 and (result.queries == 30).all()
    result = Square(model, eps=0.5, norm="L2", queries=30, early_stop=False).perturb(x, torch.tensor([0, 1]))
    assert ((result.x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all() and (result.queries == 30).all()


@pytest.mark.parametrize("side,dims", [(3, 2), (5, 2), (7, 2), (5, 3)])
def test_l2_patterns_have_unit_norm_and_two_opposite_halves(side, dims):
    for axis in range(dims):
        pattern = eta_pattern(side, dims, axis)
        assert pattern.shape == (side,) * dims
        torch.testing.assert_close(pattern.norm(), torch.tensor(1.0, dtype=torch.float64))
        first, second = pattern.split([side // 2, side - side // 2], dim=axis)
        assert (first > 0).all() and (second < 0).all()


def test_l2_move_keeps_the_norm_at_eps():
    torch.manual_seed(0)
    x0 = torch.rand(3, 2, 16, 16)
    x_best = x0 + 0.01 * torch.randn_like(x0)
    delta = l2_propose(x0, x_best, torch.rand(3, 2 * 2 + 2 + 1), 5, 0.7, None)
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.full((3,), 0.7))


torchattacks = pytest.importorskip("torchattacks")


@pytest.mark.parametrize("norm,eps", [("Linf", 12 / 255), ("Linf", 16 / 255), ("L2", 0.5)])
def test_square_1000_at_most_one_point_above_reference(trained_bars, norm, eps):
    """Robust accuracy averaged over seeds: ours <= reference + 1 percentage point (same rescaled schedule)."""
    model, x, y = trained_bars
    seeds = range(4)
    ours = sum(
        accuracy(model, Square(model, eps=eps, norm=norm, queries=1000, rescale_schedule=True, seed=s)(x, y), y)
        for s in seeds
    ) / len(seeds)
    theirs = sum(
        accuracy(model, torchattacks.Square(model, norm=norm, eps=eps, n_queries=1000, seed=s)(x, y), y) for s in seeds
    )
    theirs /= len(seeds)
    print(f"Square-1000 {norm} eps {eps:.4f}: robust accuracy ours {ours:.4f}, reference {theirs:.4f}")
    assert 0.0 < theirs < 1.0
    assert ours <= theirs + 0.01
