# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Attack losses against their textbook formulas and MONAI's own Dice loss."""

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
