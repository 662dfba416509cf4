# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""AutoAttack "fast": APGD-T's linearized target ranking (MALT) and the fast chain."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from monai_adv.attacks import APGDT, AutoAttack, make_attack
from monai_adv.attacks.base import AttackState


class Linear(nn.Module):
    """Logits W x + b of a flattened image: the linearized distance of APGD-T is exact for it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def _ranking(attack: APGDT, x: torch.Tensor, y: torch.Tensor, mask=None) -> torch.Tensor:
    """The target order APGD-T tries on ``x``."""
    from monai_adv.attacks.tasks import rank_other_classes

    with torch.enable_grad():
        state: AttackState = attack._prepare(x, y, mask=mask)
        ranked = rank_other_classes(state.clean_logits, state.objective.labels)
        return attack._linearized_ranking(state, ranked)


@settings(max_examples=40)
@given(
    classes=st.integers(3, 8),
    norm=st.sampled_from(["Linf", "L2"]),
    seed=st.integers(0, 10_000),
    use_mask=st.booleans(),
)
def test_linearized_ranking_is_the_exact_distance_order_of_a_linear_model(classes, norm, seed, use_mask):
    g = torch.Generator().manual_seed(seed)
    dims = 12
    weight, bias = torch.randn(classes, dims, generator=g), torch.randn(classes, generator=g)
    model = Linear(weight, bias).eval()
    x = torch.rand(4, 1, 3, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # correctly classified: every gap is positive
    mask = (torch.rand(1, 1, 3, 4, generator=g) > 0.3).float() if use_mask else None
    ranked = _ranking(APGDT(model, norm=norm, target_ranking="linearized", seed=0), x, y, mask)
    with torch.no_grad():
        logits = model(x)
    for i in range(x.shape[0]):
        others = [t for t in range(classes) if t != int(y[i])]
        diff = weight[int(y[i])] - weight[others]
        if mask is not None:
            diff = diff * mask.flatten()
        dual = diff.abs().sum(dim=1) if norm == "Linf" else diff.norm(dim=1)
        distance = (logits[i, y[i]] - logits[i, others]) / dual
        expected = torch.tensor(others)[distance.argsort(stable=True)]
        got = ranked[i, : classes - 1]
        # equal up to ties in distance
        assert torch.allclose(distance[[others.index(int(t)) for t in got]], distance.sort().values, rtol=1e-4)
        assert set(got.tolist()) == set(expected.tolist())
        assert int(ranked[i, -1]) == int(y[i])  # the label's own class comes last


def test_linearized_ranking_finds_the_near_boundary_that_the_logits_rank_second():
    """Class 1 has the second largest logit but is far away (small weights); class 2 has a lower logit but is
    close (large weights). With one target, logit ranking pulls towards class 1 and fails; the linearized
    ranking pulls towards class 2 and succeeds."""
    dims = 16
    half = torch.cat([torch.ones(dims // 2), -torch.ones(dims // 2)])
    weight = torch.stack([torch.zeros(dims), 0.01 * half, -half])  # pulling towards 1 pushes away from 2
    bias = torch.tensor([0.0, -0.1, -0.5])
    model = Linear(weight, bias).eval()
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, dtype=torch.long)
    eps, common = 0.05, {"steps": 20, "target_classes": 1, "loss": "cw", "seed": 0, "value_range": (-1.0, 1.0)}
    logits_first = APGDT(model, eps=eps, **common)
    linearized_first = APGDT(model, eps=eps, target_ranking="linearized", **common)
    gap1, gap2 = 0.1 / (0.01 * dims), 0.5 / dims  # L-inf distances to the boundaries with classes 1 and 2
    assert gap2 < eps < gap1
    assert int(_ranking(linearized_first, x, y)[0, 0]) == 2
    assert not bool(logits_first.perturb(x, y).success.any())
    assert bool(linearized_first.perturb(x, y).success.all())


def test_fast_version_chain_defaults_and_overrides(trained_bars4):
    model, x, y = trained_bars4
    x, y = x[:12], y[:12]
    fast = AutoAttack(model, version="fast", eps=8 / 255, steps=5, check=False)
    assert (fast.target_classes, fast.queries) == (3, 1000)
    assert AutoAttack(model, eps=8 / 255).target_classes == 9 and AutoAttack(model, eps=8 / 255).queries == 5000
    custom = make_attack("autoattack", model, version="fast", eps=8 / 255, target_classes=2, queries=50)
    assert (custom.target_classes, custom.queries) == (2, 50)
    result = AutoAttack(model, version="fast", eps=8 / 255, steps=5, queries=40, check=False).perturb(x, y)
    assert result.details["attacks"] == ["apgd-ce", "apgd-t", "square"]
    assert result.details["version"] == "fast"
    assert (result.x_adv - x).abs().max() <= 8 / 255 + 1e-7
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1) != y, result.success)


@pytest.mark.parametrize("classes", [1, 2])
def test_fast_version_on_binary_models(classes):
    torch.manual_seed(0)
    from tests.models import TinyClassifier

    model = TinyClassifier(2, 1, classes).eval()
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 1, 0, 1])
    result = AutoAttack(model, version="fast", eps=8 / 255, steps=3, queries=20, check=False).perturb(x, y)
    assert result.success.shape == (5,)
    assert result.details["attacks"] == ["apgd-margin", "square"]
    assert "APGD on the CW margin replaces APGD-CE and APGD-T" in " ".join(result.details["notes"])


def test_fast_binary_margin_run_breaks_what_standard_apgd_ce_and_apgd_t_break(trained_bars):
    """With two classes, the margin run of fast covers standard's APGD-CE and APGD-T (same margin, same start)."""
    model3, x, y = trained_bars
    keep = y < 2

    def two(v):  # a binary classifier: the first two logits of the 3-class model
        return model3(v)[:, :2]

    x, y = x[keep][:48], y[keep][:48]
    common = {"eps": 6 / 255, "steps": 20, "check": False, "seed": 4}
    standard = AutoAttack(two, queries=10, **common).perturb(x, y)
    fast = AutoAttack(two, version="fast", queries=10, **common).perturb(x, y)
    gradient_broken = torch.tensor([b in ("apgd-ce", "apgd-t") for b in standard.details["broken_by"]])
    assert bool((fast.success | ~gradient_broken).all())


def test_fast_is_a_named_attack_of_the_evaluator_suites(trained_bars4):
    from monai_adv.engines import build_attack, parse_attack_specs

    (spec,) = parse_attack_specs(["autoattack-fast"])
    attack = build_attack(spec, trained_bars4[0], eps=4 / 255)
    assert isinstance(attack, AutoAttack) and attack.version == "fast"
    mapping = parse_attack_specs([{"attack": "autoattack", "name": "aa-fast", "version": "fast", "queries": 200}])
    assert build_attack(mapping[0], trained_bars4[0], eps=4 / 255).queries == 200
