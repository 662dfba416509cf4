# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The segmentation attack ensemble: budget, determinism, worst case over its losses, the radius schedule, and its
strength against the AutoAttack segmentation chain on a small trained segmenter."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer

import monai_adv.attacks.sea as sea_module
from monai_adv.attacks import AutoAttack, InfererModel, SegmentationEnsemble, make_attack
from monai_adv.attacks.projections import clip_to_range, project
from monai_adv.attacks.sea import DEFAULT_LOSSES, schedule_steps
from monai_adv.attacks.tasks import hard_dice
from tests.models import CallCounter, PerSample, TinyClassifier, TinySegmenter


def blobs(n: int, size: int = 16, dims: int = 2, seed: int = 0):
    """Images (n, 1, size^dims) in [0, 1] with one brighter disc (ball) each, and its label map (n, 1, ...)."""
    g = torch.Generator().manual_seed(seed)
    spatial = (size,) * dims
    grid = torch.stack(torch.meshgrid(*[torch.arange(size).float()] * dims, indexing="ij"))
    x = 0.3 + 0.15 * torch.rand(n, 1, *spatial, generator=g)
    labels = torch.zeros(n, 1, *spatial, dtype=torch.long)
    for i in range(n):
        center = 3 + (size - 6) * torch.rand(dims, generator=g)
        radius = 2 + 2.5 * float(torch.rand(1, generator=g))
        inside = ((grid - center.view(dims, *([1] * dims))) ** 2).sum(0) <= radius**2
        x[i, 0][inside] += 0.3
        labels[i, 0][inside] = 1
    return x.clamp(0, 1), labels


def trained_segmenter(dims: int = 2, classes: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = TinySegmenter(dims, 1, classes, width=8)
    x, labels = blobs(64, size=16 if dims == 2 else 10, dims=dims, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        logits = net(x)
        if classes == 1:
            loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            loss = F.cross_entropy(logits, labels[:, 0])
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def segmenter():
    return trained_segmenter()


@pytest.fixture(scope="module")
def single_logit_segmenter():
    return trained_segmenter(classes=1)


def _dice(model, x, labels, classes: int = 2):
    with torch.no_grad():
        logits = model(x)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)
    return hard_dice(pred, labels[:, 0], classes)


def test_trained_segmenter_segments(segmenter):
    x, labels = blobs(16, seed=1)
    assert _dice(segmenter, x, labels).mean() > 0.8


@pytest.mark.parametrize("dims,norm,value_range", [(2, "Linf", (0.0, 1.0)), (3, "L2", (-1.0, 1.0)), (2, "L2", None)])
def test_budget_range_and_mask_kept_exactly(dims, norm, value_range):
    torch.manual_seed(dims)
    model = TinySegmenter(dims, 2, 3).eval()
    spatial = (8,) * dims if dims == 2 else (5,) * dims
    lo, hi = value_range or (-50.0, 50.0)
    x = lo + (hi - lo) * torch.rand(3, 2, *spatial)
    y = torch.randint(0, 3, (3, 1, *spatial))
    mask = (torch.rand(3, 1, *spatial) > 0.5).float()
    eps = 8 / 255 if norm == "Linf" else 0.5
    x_in = x.clone()
    result = SegmentationEnsemble(model, eps=eps, norm=norm, steps=4, value_range=value_range).perturb(x, y, mask=mask)
    assert torch.equal(x, x_in)
    delta = (result.x_adv - x).double().flatten(1)
    norms = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    assert (norms <= eps).all() and (norms > 0).any()
    if value_range is not None:
        assert result.x_adv.min() >= lo and result.x_adv.max() <= hi
    frozen = mask.expand_as(x) == 0
    assert torch.equal(result.x_adv[frozen], x[frozen])
    assert result.success.shape == (3,) and result.success.dtype == torch.bool and result.task == "segmentation"


def test_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = PerSample(TinySegmenter(2, 1, 3)).double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.double)
    y = torch.randint(0, 3, (3, 1, 8, 8))
    attack = SegmentationEnsemble(model, eps=16 / 255, steps=5, seed=3)
    batch = attack.perturb(x, y)
    again = make_attack("sea", model, eps=16 / 255, steps=5, seed=3).perturb(x, y)
    assert torch.equal(batch.x_adv, again.x_adv) and batch.details["broken_by"] == again.details["broken_by"]
    flip = torch.arange(2, -1, -1)
    reversed_batch = attack(x[flip], y[flip])
    torch.testing.assert_close(reversed_batch[flip], batch.x_adv, rtol=0, atol=1e-6)
    for i in range(3):
        alone = attack.perturb(x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-6)
        assert alone.details["lowest_by"][0] == batch.details["lowest_by"][i]
    # attacked in chunks: the same examples, details joined per sample
    chunked = SegmentationEnsemble(model, eps=16 / 255, steps=5, seed=3, max_batch=2).perturb(x, y)
    torch.testing.assert_close(chunked.x_adv, batch.x_adv, rtol=0, atol=1e-6)
    assert chunked.details["lowest_by"] == batch.details["lowest_by"] and len(chunked.details["broken_by"]) == 3
    torch.testing.assert_close(chunked.details["dice"], batch.details["dice"])


def test_worst_case_over_its_losses(segmenter):
    """Per image, the ensemble's Dice is the lowest of the single-loss runs it contains (same settings), also where
    no loss meets the goal; ties go to the earlier loss."""
    x, labels = blobs(6, seed=2)
    model = PerSample(
        copy.deepcopy(segmenter)
    ).double()  # batch-independent arithmetic: a loss's run is the same in any batch
    x = x.double()
    settings = {"eps": 6 / 255, "steps": 6, "seed": 1, "seg_success_ratio": 0.05}  # a goal no loss reaches
    full = SegmentationEnsemble(model, **settings).perturb(x, labels)
    dice = full.details["dice"]
    singles = {
        name: SegmentationEnsemble(model, losses=[name], **settings).perturb(x, labels) for name in DEFAULT_LOSSES
    }
    single_dice = torch.stack([singles[name].details["dice"] for name in DEFAULT_LOSSES])
    assert (dice <= single_dice).all()
    torch.testing.assert_close(dice, single_dice.min(dim=0).values, rtol=0, atol=0)
    torch.testing.assert_close(dice, _dice(model, full.x_adv, labels))
    first = [DEFAULT_LOSSES[int(k)] for k in (single_dice == dice).float().argmax(dim=0)]
    assert full.details["lowest_by"] == first
    clean = full.details["clean_dice"]
    assert (dice <= clean).all() and (dice < clean).sum() >= 4, f"Dice {clean.tolist()} -> {dice.tolist()}"
    assert not full.success.any() and full.details["broken_by"] == [None] * 6
    assert sum(full.details["broken_counts"].values()) == 0
    for name in DEFAULT_LOSSES:
        torch.testing.assert_close(full.details["dice_by_loss"][name], singles[name].details["dice"])


def test_details_and_pass_count(single_logit_segmenter):
    net = CallCounter(single_logit_segmenter)
    x, labels = blobs(3, size=12, seed=4)
    steps, stages = 7, schedule_steps(7, sea_module.DEFAULT_SCHEDULE)
    assert [count for _, count in stages] == [2, 2, 3]
    result = SegmentationEnsemble(net, eps=1e-4, steps=steps).perturb(x, labels)  # too small to reach Dice 0
    d = result.details
    assert d["attacks"] == list(DEFAULT_LOSSES)
    assert d["passes"] == dict.fromkeys(DEFAULT_LOSSES, 3 * (steps + 3))
    assert net.calls == 1 + len(DEFAULT_LOSSES) * (steps + 3) + 1  # clean pass, batched iterations, final check
    assert [radius for radius, _ in d["schedule"]] == pytest.approx([2e-4, 1.5e-4, 1e-4])
    assert set(d["seconds"]) == set(d["broken_counts"]) == set(d["dice_by_loss"]) == set(DEFAULT_LOSSES)
    assert d["dice"].dtype == torch.float64 and (d["dice"] <= d["clean_dice"]).all()
    assert result.success.tolist() == [b is not None for b in d["broken_by"]]


def test_each_stage_starts_from_the_previous_stage_lowest_dice_point(segmenter, monkeypatch):
    evaluated = []  # (stage radius, first evaluation of the run?, idx, point, dice, loss)
    original = sea_module._StageAPGD._evaluate

    seen = set()

    def spy(self, objective, x_adv, idx):
        first = id(self) not in seen  # the run's first evaluation: its start point
        seen.add(id(self))
        loss, success, grad = original(self, objective, x_adv, idx)
        evaluated.append((self.eps, first, idx.clone(), x_adv.detach().clone(), objective.last_dice.clone(), loss))
        return loss, success, grad

    monkeypatch.setattr(sea_module._StageAPGD, "_evaluate", spy)
    x, labels = blobs(2, seed=5)
    eps = 4 / 255
    SegmentationEnsemble(segmenter, losses=["js"], eps=eps, steps=10, schedule=[(3.0, 0.5), (1.0, 0.5)])(x, labels)
    first_stage = [e for e in evaluated if e[0] == pytest.approx(3 * eps)]
    second_stage = [e for e in evaluated if e[0] == pytest.approx(eps)]
    assert len(first_stage) == 6 and len(second_stage) == 6 and second_stage[0][1]
    for i in range(2):
        rows = [
            (e[3][(e[2] == i).nonzero()[0, 0]], e[4][(e[2] == i).nonzero()[0, 0]], e[5][(e[2] == i).nonzero()[0, 0]])
            for e in first_stage
            if (e[2] == i).any()
        ]
        best = rows[0]
        for row in rows[1:]:
            if row[1] < best[1] or (row[1] == best[1] and row[2] > best[2]):
                best = row
        expected = clip_to_range(x[i] + project((best[0] - x[i])[None], eps, "Linf")[0], (0.0, 1.0))
        start = second_stage[0][3][(second_stage[0][2] == i).nonzero()[0, 0]]
        torch.testing.assert_close(start, expected, rtol=0, atol=1e-7)


def test_through_a_sliding_window_inferer_in_3d():
    torch.manual_seed(0)
    net = TinySegmenter(3, 1, 2).eval()
    x = torch.rand(2, 1, 12, 12, 12)
    model = InfererModel(net, SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.25))
    with torch.no_grad():
        labels = model(x).argmax(dim=1, keepdim=True)  # the clean prediction: clean Dice 1
    result = SegmentationEnsemble(model, eps=8 / 255, steps=6, losses=["masked_ce", "js"]).perturb(x, labels)
    adv = _dice(model, result.x_adv, labels)
    torch.testing.assert_close(adv, result.details["dice"])
    assert (adv < 1).all() and (result.x_adv - x).abs().max() <= 8 / 255
    assert (result.x_adv != x).float().mean() > 0.5, "the whole volume, not one window, is perturbed"


def test_single_logit_segmenter(single_logit_segmenter):
    net = single_logit_segmenter
    x, labels = blobs(4, seed=7)
    clean = _dice(net, x, labels, classes=1)
    result = SegmentationEnsemble(net, eps=8 / 255, steps=6).perturb(x, labels)
    assert (result.details["dice"] < clean).all()
    for name in DEFAULT_LOSSES:  # every loss moves a single-logit model too
        assert (result.details["dice_by_loss"][name] < clean).any(), name


def test_stronger_than_the_autoattack_chain_at_comparable_cost(segmenter):
    """Mean Dice under the ensemble <= under AutoAttack's segmentation chain, both at a tenth of their default
    budgets: 5 x (20 + 3) = 115 forward+backward passes per image against 2 x 11 forward+backward and 500 forward."""
    x, labels = blobs(12, seed=8)
    eps = 16 / 255
    chain = AutoAttack(segmenter, eps=eps, steps=10, queries=500, check=False, seed=0).perturb(x, labels)
    ensemble = SegmentationEnsemble(segmenter, eps=eps, steps=20, seed=0).perturb(x, labels)
    chain_dice, ensemble_dice = _dice(segmenter, chain.x_adv, labels), ensemble.details["dice"]
    clean = _dice(segmenter, x, labels)
    print(f"mean Dice clean {clean.mean():.3f}, chain {chain_dice.mean():.3f}, ensemble {ensemble_dice.mean():.3f}")
    assert ensemble_dice.mean() <= chain_dice.mean()
    assert ensemble_dice.mean() < clean.mean() - 0.1
    assert ensemble.success.sum() >= chain.success.sum()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"losses": ["dlr"]}, ValueError, "does not apply to segmentation"),
        ({"losses": ["nope"]}, ValueError, "`loss` must be one of"),
        ({"losses": ["js", "js"]}, ValueError, "twice"),
        ({"losses": []}, ValueError, "at least one loss"),
        ({"loss_options": {"dice": {"smooth": 0.0}}, "losses": ["js"]}, ValueError, "not in `losses`"),
        ({"loss_options": {"js": {"floor": 1.0}}}, ValueError, "not options of the loss"),
        ({"schedule": [(2.0, 0.5), (1.5, 0.5)]}, ValueError, "factor 1.0"),
        ({"schedule": [(2.0, 0.5), (1.0, 0.4)]}, ValueError, "sum to 1"),
        ({"schedule": [(-2.0, 0.5), (1.0, 0.5)]}, ValueError, "radius factor"),
        ({"schedule": 3}, TypeError, "pairs"),
        ({"loss": "ce"}, TypeError, "sets"),
        ({"targeted": True}, TypeError, "sets"),
        ({"task": "classification"}, TypeError, "sets"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        attack = SegmentationEnsemble(TinySegmenter(2, 1, 2), **kwargs)
        attack(torch.rand(1, 1, 6, 6), torch.zeros(1, 1, 6, 6, dtype=torch.long))


def test_options_zero_budget_and_classifier():
    net = TinySegmenter(2, 1, 3).eval()
    x, y = torch.rand(2, 1, 6, 6), torch.randint(0, 3, (2, 1, 6, 6))
    assert torch.equal(SegmentationEnsemble(net, eps=0.0, steps=2)(x, y), x)
    attack = make_attack(
        "sea", net, eps=0.1, steps=2, losses=["dice"], loss_options={"dice": {"include_background": True}}
    )
    assert attack.losses == [("dice", "dice", {"include_background": True})]
    assert repr(attack) == "SegmentationEnsemble(eps=0.1, norm='Linf', steps=2, losses=['dice'])"
    with pytest.raises(ValueError, match="segmentation"):  # a classifier's logits have no voxels
        SegmentationEnsemble(TinyClassifier(2, 1, 3), steps=2)(x, torch.tensor([0, 1]))
