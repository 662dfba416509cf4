# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Cross-checks against the torchattacks reference implementation (a test-only dependency)."""

from contextlib import contextmanager

import pytest
import torch

from monai_adv.attacks import FGSM, PGD
from monai_adv.attacks.projections import random_start
from monai_adv.attacks.seeding import sample_generators, sample_keys
from tests.models import TinyClassifier

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3).eval()
    # a batch of 8 (a power of two): the mean-reduced reference loss then scales gradients exactly
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return model, x, y


@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.1])
def test_fgsm_matches_reference(untrained, eps):
    model, x, y = untrained
    ours = FGSM(model, eps=eps)(x, y)
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    assert (ours - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("eps,alpha,steps", [(2 / 255, 0.5 / 255, 10), (8 / 255, 2 / 255, 20)])
def test_pgd_linf_same_iterate_from_same_start(untrained, eps, alpha, steps):
    model, x, y = untrained
    # the textbook PGD: start at x, keep the last iterate, attack every sample
    ours = PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False, best_iterate=False, early_stop=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    assert (ours(x, y) - theirs(x, y)).abs().max() <= 1e-6


def test_pgd_l2_same_iterate_from_same_start(untrained):
    model, x, y = untrained
    ours = PGD(model, eps=0.5, alpha=0.1, steps=10, norm="L2", random_start=False, best_iterate=False, early_stop=False)
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=10, random_start=False)
    assert (ours(x, y) - theirs(x, y)).abs().max() <= 1e-6


class _StartFeeder:
    """Stands in for ``torch.empty_like(x)`` in the reference PGD so that ``.uniform_(-eps, eps)`` yields our start."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta = delta

    def uniform_(self, low: float, high: float) -> torch.Tensor:
        assert (self.delta >= low).all() and (self.delta <= high).all()
        return self.delta.clone()


@contextmanager
def reference_random_start(delta: torch.Tensor):
    """Make the reference PGD start from ``x + delta``: its first ``torch.empty_like`` call feeds ``delta``."""
    original = torch.empty_like
    calls = []

    def feed(*args, **kwargs):
        if calls:
            return original(*args, **kwargs)
        calls.append(1)
        return _StartFeeder(delta)

    torch.empty_like = feed
    try:
        yield
    finally:
        torch.empty_like = original
    assert calls, "the reference did not draw a random start"


def our_random_start(x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """The random start PGD(seed=seed) draws for each sample of ``x`` on its first restart."""
    generators = sample_generators(sample_keys(x), seed, 0, x.device)
    return random_start(x, eps, "Linf", None, generators)


@pytest.mark.parametrize("eps", [12 / 255, 16 / 255])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pgd20_at_least_as_strong_on_trained_model(trained_bars, eps, seed):
    """From the same random start, our PGD-20 fools every sample the reference fools: robust accuracy <=."""
    model, x, y = trained_bars
    alpha = eps / 4
    ours = PGD(model, eps=eps, alpha=alpha, steps=20, seed=seed)(x, y)
    with reference_random_start(our_random_start(x, eps, seed)):
        theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        ours_fooled, theirs_fooled = model(ours).argmax(1) != y, model(theirs).argmax(1) != y
    ours_acc, theirs_acc = 1 - ours_fooled.float().mean().item(), 1 - theirs_fooled.float().mean().item()
    print(
        f"PGD-20 eps={eps * 255:.0f}/255 seed {seed}: robust accuracy ours {ours_acc:.4f}, reference {theirs_acc:.4f}"
    )
    assert 0.0 < theirs_acc < 1.0, "the budget should leave a non-trivial robust accuracy to compare"
    assert bool((ours_fooled | ~theirs_fooled).all()), "a sample the reference fools survived our attack"
    assert ours_acc <= theirs_acc


def test_pgd20_fools_every_sample_the_reference_fools_from_the_same_start(trained_bars):
    """Same start, same steps: keeping the best iterate can only add fooled samples, never lose one."""
    model, x, y = trained_bars
    eps = 12 / 255
    ours = PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=False)(x, y)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=False)(x, y)
    with torch.no_grad():
        ours_fooled = model(ours).argmax(1) != y
        theirs_fooled = model(theirs).argmax(1) != y
    assert bool((ours_fooled | ~theirs_fooled).all())
    assert int(ours_fooled.sum()) >= int(theirs_fooled.sum()) > 0


def test_pgd_l2_fools_every_sample_the_reference_fools_from_the_same_start(trained_bars):
    model, x, y = trained_bars
    ours = PGD(model, eps=0.5, alpha=0.1, steps=20, norm="L2", random_start=False)(x, y)
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=20, random_start=False)(x, y)
    with torch.no_grad():
        ours_fooled, theirs_fooled = model(ours).argmax(1) != y, model(theirs).argmax(1) != y
    print(
        f"PGD-L2-20 eps=0.5: robust accuracy ours {1 - ours_fooled.float().mean():.4f}, "
        f"torchattacks {1 - theirs_fooled.float().mean():.4f}"
    )
    assert 0 < int(theirs_fooled.sum()) < y.numel()
    assert bool((ours_fooled | ~theirs_fooled).all())
