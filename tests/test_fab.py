# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""FAB-T: the exact box-constrained hyperplane projection, and strength against the reference."""

import pytest
import torch

from monai_adv.attacks import FAB
from monai_adv.attacks.fab import hyperplane_projection


def _norm(d, norm):
    return d.abs().amax(dim=-1) if norm == "Linf" else d.norm(dim=-1)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_is_feasible_and_no_sampled_point_is_closer(norm):
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        w = torch.randn(1, 6, dtype=torch.float64, generator=g)
        if trial % 4 == 0:
            w[0, 2] = 0.0
        x = torch.rand(1, 6, dtype=torch.float64, generator=g)
        lower, upper = -x, 1 - x
        c = torch.randn(1, dtype=torch.float64, generator=g)
        d = hyperplane_projection(w, c, lower, upper, norm)
        assert ((d >= lower) & (d <= upper)).all()
        farthest = torch.where(torch.sign(c) * w > 0, upper, torch.where(torch.sign(c) * w < 0, lower, 0 * lower))
        if ((w * farthest).sum() * torch.sign(c)).item() < c.abs().item():
            torch.testing.assert_close(d, farthest)  # out of reach: go as far as the box allows
            continue
        torch.testing.assert_close((w * d).sum(), c[0])
        # random feasible points on the hyperplane are never closer
        z = lower + (upper - lower) * torch.rand(4000, 6, dtype=torch.float64, generator=g)
        i = torch.randint(0, 6, (4000,), generator=g)
        wi = w[0, i]
        keep = wi.abs() > 1e-6
        z[torch.arange(4000), i] += torch.where(keep, (c[0] - (z * w).sum(1)) / wi.where(keep, torch.ones_like(wi)), 0)
        ok = keep & ((z >= lower) & (z <= upper)).all(1)
        assert (_norm(z[ok], norm) >= _norm(d, norm) - 1e-9).all()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_without_box_has_the_closed_form(norm):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 7, dtype=torch.float64, generator=g)
    c = torch.randn(5, dtype=torch.float64, generator=g)
    unbounded = torch.full_like(w, float("inf"))
    d = hyperplane_projection(w, c, -unbounded, unbounded, norm)
    torch.testing.assert_close((w * d).sum(1), c)
    dual = w.abs().sum(1) if norm == "Linf" else w.norm(dim=1)  # the dual norm of w
    torch.testing.assert_close(_norm(d, norm), c.abs() / dual)


torchattacks = pytest.importorskip("torchattacks")


@pytest.mark.parametrize("norm,eps", [("Linf", 12 / 255), ("L2", 0.5)])
def test_fab_t_at_most_one_point_above_reference(trained_bars4, norm, eps):
    model, x, y = trained_bars4
    result = FAB(model, eps=eps, norm=norm, steps=100, target_classes=3).perturb(x, y)
    ours = 1 - result.success.float().mean().item()
    theirs_adv = torchattacks.FAB(
        model, norm=norm, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=4, seed=0
    )(x, y)
    delta = (theirs_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    with torch.no_grad():
        fooled = (model(theirs_adv).argmax(1) != y) & (size <= eps + 1e-6)
    theirs = 1 - fooled.float().mean().item()
    print(f"FAB-T-100 {norm} eps {eps:.4f}: robust accuracy ours {ours:.4f}, reference {theirs:.4f}")
    assert 0.0 < theirs < 1.0
    assert ours <= theirs + 0.01
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
