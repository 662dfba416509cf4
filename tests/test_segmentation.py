# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Segmentation attacks on a small 3D MONAI UNet, directly and through sliding-window inference."""

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from monai_adv.attacks import APGD, CW, PGD, InfererModel
from monai_adv.attacks.tasks import hard_dice


def spheres(n: int, size: int = 32, seed: int = 0):
    """Volumes (n, 1, size^3) in [0, 1] with one brighter sphere each, and its label map (n, 1, size^3)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size).float()] * 3, indexing="ij"))
    x = 0.3 + 0.1 * torch.rand(n, 1, size, size, size, generator=g)
    labels = torch.zeros(n, 1, size, size, size, dtype=torch.long)
    for i in range(n):
        center = torch.randint(8, size - 8, (3,), generator=g).float()
        radius = 4 + 4 * torch.rand(1, generator=g)
        inside = ((grid - center.view(3, 1, 1, 1)) ** 2).sum(0) <= radius**2
        x[i, 0][inside] += 0.3
        labels[i, 0][inside] = 1
    return x.clamp(0, 1), labels


@pytest.fixture(scope="module")
def unet3d():
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    x, labels = spheres(8)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(net(x), labels).backward()
        opt.step()
    return net.eval()


def _dice(net, x, labels):
    with torch.no_grad():
        return hard_dice(net(x).argmax(1), labels[:, 0], 2)


@pytest.mark.parametrize("attack_cls,loss", [(PGD, "ce"), (PGD, "dice"), (APGD, "ce"), (APGD, "dice")])
def test_attack_lowers_dice_of_3d_unet(unet3d, attack_cls, loss):
    x, labels = spheres(2, seed=5)  # (2, 1, 32, 32, 32)
    clean = _dice(unet3d, x, labels)
    assert (clean > 0.8).all(), f"the UNet should segment the spheres, clean Dice {clean}"
    result = attack_cls(unet3d, eps=8 / 255, steps=10, loss=loss).perturb(x, labels)
    adv = _dice(unet3d, result.x_adv, labels)
    print(f"3D UNet {attack_cls.__name__}-10 ({loss}) eps 8/255: Dice {clean.tolist()} -> {adv.tolist()}")
    assert (adv < clean - 0.1).all()
    assert result.task == "segmentation"


def test_one_hot_labels_give_the_same_attack(unet3d):
    x, labels = spheres(2, seed=6)
    one_hot = F.one_hot(labels[:, 0], 2).movedim(-1, 1).float()
    attack = PGD(unet3d, eps=4 / 255, steps=3)
    torch.testing.assert_close(attack(x, labels), attack(x, one_hot), rtol=0, atol=0)


def test_success_criterion_is_a_fraction_of_clean_dice(unet3d):
    x, labels = spheres(2, seed=7)
    clean = _dice(unet3d, x, labels)
    result = PGD(unet3d, eps=32 / 255, steps=10, seg_success_ratio=0.9).perturb(x, labels)
    adv = _dice(unet3d, result.x_adv, labels)
    assert torch.equal(result.success, adv < 0.9 * clean)
    assert result.success.all()


def test_mask_confines_the_perturbation_to_a_region(unet3d):
    x, labels = spheres(1, seed=8)
    roi = torch.zeros_like(x)
    roi[..., 8:24, 8:24, 8:24] = 1
    x_adv = PGD(unet3d, eps=8 / 255, steps=3)(x, labels, mask=roi)
    assert torch.equal(x_adv[roi == 0], x[roi == 0])
    assert (x_adv[roi == 1] != x[roi == 1]).any()


def test_gradients_flow_through_sliding_window_inference(unet3d):
    x, labels = spheres(1, size=48, seed=9)
    model = InfererModel(unet3d, SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.25))
    clean = hard_dice(model(x).argmax(1), labels[:, 0], 2)
    result = PGD(model, eps=8 / 255, steps=5, loss="dice").perturb(x, labels)
    with torch.no_grad():
        adv = hard_dice(model(result.x_adv).argmax(1), labels[:, 0], 2)
    assert (result.x_adv != x).float().mean() > 0.5, "the whole volume, not one patch, should be perturbed"
    assert (adv < clean).all()


def test_a_closure_over_an_inferer_works_as_model(unet3d):
    x, labels = spheres(1, seed=10)
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4)
    x_adv = CW(lambda v: inferer(v, unet3d), eps=4 / 255, steps=2, kappa=5)(x, labels)
    assert (x_adv - x).abs().max() <= 4 / 255 and (x_adv != x).any()


def test_targeted_segmentation_moves_prediction_towards_target(unet3d):
    x, labels = spheres(1, seed=11)
    target = torch.zeros_like(labels)  # erase the lesion
    before = int(_pred(unet3d, x).sum())
    result = PGD(unet3d, eps=16 / 255, steps=10, targeted=True).perturb(x, labels, target=target)
    after = int(_pred(unet3d, result.x_adv).sum())
    print(f"targeted erase: lesion voxels predicted {before} -> {after}")
    assert before > 100 and after < 0.5 * before


def _pred(net, x):
    with torch.no_grad():
        return net(x).argmax(1)
