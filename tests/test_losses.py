# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Attack losses against their textbook formulas and MONAI's own Dice loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from monai_adv.attacks import losses as L
from monai_adv.attacks.tasks import hard_dice


@pytest.fixture
def logits():
    return torch.tensor([[2.0, 1.0, -1.0, 0.5], [0.0, 3.0, 2.5, -2.0], [1.0, 1.0, 4.0, 0.0]])


def test_cross_entropy_multiclass_and_binary(logits):
    y = torch.tensor([0, 2, 2])
    torch.testing.assert_close(L.cross_entropy(logits, y), F.cross_entropy(logits, y, reduction="none"))
    z = torch.tensor([[1.5], [-0.5]])
    expected = F.binary_cross_entropy_with_logits(z[:, 0], torch.tensor([1.0, 1.0]), reduction="none")
    torch.testing.assert_close(L.cross_entropy(z, torch.tensor([1, 1])), expected)


def test_cw_margin_untargeted_targeted_and_cap(logits):
    y = torch.tensor([0, 2, 2])
    # max other - true: [1 - 2, 3 - 2.5, 1 - 4]
    torch.testing.assert_close(L.cw_margin(logits, y, kappa=10), torch.tensor([-1.0, 0.5, -3.0]))
    torch.testing.assert_close(L.cw_margin(logits, y, kappa=0.2), torch.tensor([-1.0, 0.2, -3.0]))
    torch.testing.assert_close(L.cw_margin(logits, y), torch.tensor([-1.0, 0.0, -3.0]))  # default kappa 0
    t = torch.tensor([1, 1, 3])
    # target - max other: [1 - 2, 3 - 2.5, 0 - 4]
    torch.testing.assert_close(L.cw_margin(logits, t, kappa=10, targeted=True), torch.tensor([-1.0, 0.5, -4.0]))
    # a single logit z is the two-class [0, z]: fooled (positive) when the sign disagrees with the label
    z = torch.tensor([[2.0], [-3.0]])
    torch.testing.assert_close(L.cw_margin(z, torch.tensor([1, 1]), kappa=10), torch.tensor([-2.0, 3.0]))


def test_dlr_formulas(logits):
    y = torch.tensor([0, 2, 2])
    zs = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None])[:, 0]
    other = torch.stack([torch.cat([row[:i], row[i + 1 :]]).max() for row, i in zip(logits, y.tolist())])
    torch.testing.assert_close(L.dlr(logits, y), -(true - other) / (zs[:, 0] - zs[:, 2] + 1e-12))
    t = torch.tensor([3, 0, 1])
    tgt = logits.gather(1, t[:, None])[:, 0]
    expected = -(true - tgt) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)
    torch.testing.assert_close(L.targeted_dlr(logits, y, t), expected)
    # shift and scale invariance
    torch.testing.assert_close(L.dlr(3 * logits + 7, y), L.dlr(logits, y))


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        L.dlr(torch.randn(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        L.targeted_dlr(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([1, 2]))


def test_multilabel_losses():
    z = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 2.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(dim=1)
    torch.testing.assert_close(L.multilabel_bce(z, y), expected)
    # per-label "wrongness" (1 - 2y) z: [[-2, -1, -0.5], [-3, -1, 2]] -> max
    torch.testing.assert_close(L.multilabel_margin(z, y, kappa=10), torch.tensor([-0.5, 2.0]))
    # targeted: every label must match; min over labels of (2t - 1) z
    torch.testing.assert_close(L.multilabel_margin(z, y, kappa=10, targeted=True), torch.tensor([0.5, -2.0]))


def test_segmentation_cross_entropy_mean_and_mask():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, 5)
    y = torch.randint(0, 3, (2, 4, 5))
    voxel = F.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(L.segmentation_cross_entropy(z, y), voxel.flatten(1).mean(1))
    mask = torch.zeros(2, 1, 4, 5)
    mask[0, 0, :2] = 1
    mask[1, 0, 3, 4] = 1
    expected = torch.stack([voxel[0, :2].mean(), voxel[1, 3, 4]])
    torch.testing.assert_close(L.segmentation_cross_entropy(z, y, mask=mask), expected)


@pytest.mark.parametrize("spatial", [(6,), (5, 6), (3, 4, 5)])
def test_soft_dice_loss_matches_monai(spatial):
    torch.manual_seed(0)
    z = torch.randn(2, 3, *spatial)
    y = torch.randint(0, 3, (2, *spatial))
    monai_loss = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, reduction="none")
    expected = monai_loss(z, y[:, None]).flatten(1).mean(1)
    torch.testing.assert_close(L.soft_dice_loss(z, y), expected)
    monai_sigmoid = DiceLoss(sigmoid=True, reduction="none")
    yb = (y > 0).long()
    torch.testing.assert_close(L.soft_dice_loss(z[:, :1], yb), monai_sigmoid(z[:, :1], yb[:, None].float()).flatten())


def test_hard_dice():
    pred = torch.tensor([[0, 1, 1, 2, 0, 0]])
    label = torch.tensor([[0, 1, 0, 2, 2, 0]])
    # class 1: 2*1/(2+1); class 2: 2*1/(1+2)
    torch.testing.assert_close(hard_dice(pred, label, 3), torch.tensor([2 / 3], dtype=torch.float64))
    empty = torch.zeros(1, 6, dtype=torch.long)
    torch.testing.assert_close(hard_dice(empty, empty, 3), torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(hard_dice(pred, empty, 3), torch.tensor([0.0], dtype=torch.float64))
    # binary (one foreground logit) maps
    torch.testing.assert_close(
        hard_dice(torch.tensor([[1, 1, 0]]), torch.tensor([[1, 0, 0]]), 1), torch.tensor([2 / 3], dtype=torch.float64)
    )


# ---- the segmentation attack ensemble's losses -------------------------------------------------------------------

SEA_LOSSES = {
    "masked_ce": L.masked_cross_entropy,
    "balanced_ce": L.balanced_cross_entropy,
    "js": L.jensen_shannon,
    "masked_spherical": L.masked_spherical,
}


def _seg_problem(k: int, spatial, seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(n, k, *spatial, generator=g)
    y = torch.randint(0, max(k, 2), (n, *spatial), generator=g)
    return z, y


def _reference_pred(z):
    return (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(dim=1)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_masked_cross_entropy_counts_only_correct_voxels(k, spatial):
    z, y = _seg_problem(k, spatial)
    two = z if k > 1 else torch.cat([torch.zeros_like(z), z], dim=1)
    voxel = F.cross_entropy(two, y, reduction="none")
    correct = (_reference_pred(z) == y).float()
    torch.testing.assert_close(L.masked_cross_entropy(z, y), (correct * voxel).flatten(1).mean(1))
    # targeted: the voxels not yet at their target count
    torch.testing.assert_close(L.masked_cross_entropy(z, y, targeted=True), ((1 - correct) * voxel).flatten(1).mean(1))
    if k == 1:  # the single logit is binary cross-entropy on the correct voxels
        bce = F.binary_cross_entropy_with_logits(z[:, 0], y.float(), reduction="none")
        torch.testing.assert_close(L.masked_cross_entropy(z, y), (correct * bce).flatten(1).mean(1))
    mask = (torch.rand(y.shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    expected = (mask * correct * voxel).flatten(1).sum(1) / mask.flatten(1).sum(1)
    torch.testing.assert_close(L.masked_cross_entropy(z, y, mask), expected)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_balanced_cross_entropy_weighs_each_class_present_equally(k, spatial):
    z, y = _seg_problem(k, spatial, seed=2)
    y[0] = 0
    y[0, 0] = 1  # one voxel of class 1: it weighs as much as all the background
    two = z if k > 1 else torch.cat([torch.zeros_like(z), z], dim=1)
    voxel = F.cross_entropy(two, y, reduction="none")
    correct = (_reference_pred(z) == y).float()
    for masked, values in ((False, voxel), (True, correct * voxel)):
        expected = []
        for i in range(y.shape[0]):
            means = [values[i][y[i] == c].mean() for c in range(max(k, 2)) if (y[i] == c).any()]
            expected.append(torch.stack(means).mean())
        torch.testing.assert_close(L.balanced_cross_entropy(z, y, masked=masked), torch.stack(expected))
    # the weights are 1 / (classes present * voxels of the class): they sum to 1 over the voxels
    uniform = torch.zeros_like(z)  # equal logits: the same cross-entropy log(K) at every voxel
    torch.testing.assert_close(
        L.balanced_cross_entropy(uniform, y, masked=False), torch.full((y.shape[0],), math.log(max(k, 2)))
    )


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
def test_jensen_shannon_matches_its_definition(k, spatial):
    z, y = _seg_problem(k, spatial, seed=3)
    two = z if k > 1 else torch.cat([torch.zeros_like(z), z], dim=1)
    p = F.softmax(two.double(), dim=1)
    onehot = F.one_hot(y, two.shape[1]).movedim(-1, 1).double()
    m = (p + onehot) / 2

    def kl(a, b):
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.log()), torch.zeros_like(a)).sum(dim=1)

    expected = (0.5 * (kl(p, m) + kl(onehot, m))).flatten(1).mean(1)
    torch.testing.assert_close(L.jensen_shannon(z, y).double(), expected, rtol=1e-5, atol=1e-6)
    # bounded: 0 for a confident correct prediction, ln 2 for a confident wrong one
    confident = 50.0 * (2 * F.one_hot(y, two.shape[1]).movedim(-1, 1).float() - 1)
    torch.testing.assert_close(L.jensen_shannon(confident, y), torch.zeros(y.shape[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(L.jensen_shannon(-confident, y), torch.full((y.shape[0],), math.log(2)))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_masked_spherical_is_the_normalized_logit_of_the_label(k, spatial):
    z, y = _seg_problem(k, spatial, seed=4)
    two = z if k > 1 else torch.cat([torch.zeros_like(z), z], dim=1)
    correct = (_reference_pred(z) == y).float()
    for floor in (0.0, 1.0):
        norm = (two.square().sum(dim=1) + floor**2).sqrt()
        coordinate = two.gather(1, y[:, None])[:, 0] / norm
        expected = (-correct * coordinate).flatten(1).mean(1)
        torch.testing.assert_close(L.masked_spherical(z, y, floor=floor), expected)
    # invariant to the logits' scale (up to the floor), unlike cross-entropy
    torch.testing.assert_close(L.masked_spherical(10 * z, y, floor=0.0), L.masked_spherical(z, y, floor=0.0))
    with pytest.raises(ValueError, match="floor"):
        L.masked_spherical(z, y, floor=-1.0)


def test_masked_spherical_gives_a_single_logit_a_gradient():
    z = torch.tensor([[[2.0, -1.0, 0.5, -3.0]]], requires_grad=True)  # (1, 1, 4)
    y = torch.tensor([[1, 0, 1, 0]])
    (grad,) = torch.autograd.grad(L.masked_spherical(z, y).sum(), z)
    assert grad[0, 0, 0] < 0 and grad[0, 0, 2] < 0, "ascending lowers the foreground logit of correct voxels"
    (flat,) = torch.autograd.grad(L.masked_spherical(z, y, floor=0.0).sum(), z)
    assert torch.equal(flat, torch.zeros_like(flat)), "without a floor the normalized logits [0, z] are piecewise flat"


@pytest.mark.parametrize("name", sorted(SEA_LOSSES))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_sea_losses_per_sample_and_finite_gradients(name, k, spatial):
    loss = SEA_LOSSES[name]
    z, y = _seg_problem(k, spatial, seed=5, n=4)
    z = z.double()
    z[1] = 0.0  # every logit equal
    z[2] = 1e4 * z[2].sign()  # saturated softmax
    z.requires_grad_(True)
    values = loss(z, y)
    assert values.shape == (4,) and torch.isfinite(values).all()
    (grad,) = torch.autograd.grad(values.sum(), z)
    assert torch.isfinite(grad).all()
    # one value per sample: the same alone as in the batch (float64 accumulation), and each sample's gradient is its own
    for i in range(4):
        torch.testing.assert_close(loss(z[i : i + 1], y[i : i + 1])[0], values[i], rtol=0, atol=1e-12)
    (grad_0,) = torch.autograd.grad(loss(z, y)[0], z)
    assert torch.equal(grad_0[1:], torch.zeros_like(grad_0[1:]))
    # the loss mask: voxels outside it neither count nor get a gradient
    mask = torch.zeros(y.shape, dtype=torch.double)
    mask[:, :2] = 1.0
    (masked_grad,) = torch.autograd.grad(loss(z, y, mask).sum(), z)
    assert torch.equal(masked_grad[:, :, 2:], torch.zeros_like(masked_grad[:, :, 2:]))
    if name != "balanced_ce":  # a voxel mean over the mask
        assert torch.allclose(loss(z, y, mask), loss(z[:, :, :2], y[:, :2]))


def test_sea_losses_are_named_segmentation_losses():
    from monai_adv.attacks.objective import NAMED_LOSSES, TASK_LOSSES, Objective

    z, y = _seg_problem(3, (4, 5), seed=6)
    for name, function in SEA_LOSSES.items():
        assert set(NAMED_LOSSES[name]) == {"segmentation"} and name in TASK_LOSSES["segmentation"]
        objective = Objective("segmentation", y, None, z, loss=name)
        torch.testing.assert_close(objective.loss(z, slice(None)), function(z, y))
        targeted = Objective("segmentation", y, (y + 1) % 3, z, loss=name)
        kwargs = {} if name == "js" else {"targeted": True}
        expected = -function(z, (y + 1) % 3, **kwargs)
        torch.testing.assert_close(targeted.loss(z, slice(None)), expected)
        with pytest.raises(ValueError, match="does not apply to classification"):
            Objective("classification", torch.tensor([0]), None, torch.randn(1, 3), loss=name)
    options = Objective("segmentation", y, None, z, loss="balanced_ce", loss_kwargs={"masked": False})
    torch.testing.assert_close(options.loss(z, slice(None)), L.balanced_cross_entropy(z, y, masked=False))
    floor = Objective("segmentation", y, None, z, loss="masked_spherical", loss_kwargs={"floor": 0.0})
    torch.testing.assert_close(floor.loss(z, slice(None)), L.masked_spherical(z, y, floor=0.0))
