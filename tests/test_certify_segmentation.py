# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Certified segmentation: per-voxel soundness and the family-wise error on a voxel-wise threshold model, Holm
against Bonferroni, the radius semantics, certified Dice by hand, 3D through a sliding-window inferer."""

from __future__ import annotations

import json

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from scipy import stats
from torch import nn

from monai_adv.attacks import InfererModel
from monai_adv.attacks.tasks import hard_dice
from monai_adv.certify import ABSTAIN, RandomizedSmoothing, SegmentationCertificate, certified_dice
from monai_adv.certify.statistics import one_sided_pvalues
from tests.cases import same_snapshot, snapshot
from tests.models import TinySegmenter


class Threshold(nn.Module):
    """Voxel v is foreground when x_v > t: one logit z = x_v - t, or two (-z/2, z/2). Under N(0, sigma^2 I) noise,
    voxel v votes for its class with probability Phi(|x_v - t| / sigma): its exact radius is |x_v - t|."""

    def __init__(self, t: float = 0.5, logits: int = 1) -> None:
        super().__init__()
        self.t, self.logits = t, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, :1] - self.t
        return torch.cat([-z / 2, z / 2], dim=1) if self.logits == 2 else z


def _images(margins: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Images (N, 1, *spatial) with x_v - t = margins (N, *spatial)."""
    return (t + margins)[:, None].float()


def _near_and_far(samples: int, near: float, far: float, size: int = 6, seed: int = 0) -> torch.Tensor:
    """Margins (samples, size, size): half the voxels at +-near, half at +-far, random signs; distinct images."""
    g = torch.Generator().manual_seed(seed)
    magnitude = torch.full((samples, size, size), far)
    magnitude[:, : size // 2] = near
    signs = torch.where(torch.rand(samples, size, size, generator=g) > 0.5, 1.0, -1.0)
    margins = magnitude * signs
    margins[:, -1, -1] += torch.arange(samples) * 1e-4  # every image distinct
    return margins


def test_family_wise_error_of_certified_voxels_is_below_alpha():
    # half the voxels have an exact radius just below r: certifying any of them at r is an error, and without a
    # correction most images would have one
    sigma, r, n, alpha, samples = 0.5, 0.25, 200, 0.1, 500
    margins = _near_and_far(samples, near=0.97 * r, far=3 * sigma)
    rs = RandomizedSmoothing(Threshold(), sigma, task="segmentation", batch_size=10_000, seed=5)
    cert = rs.certify(_images(margins), n0=10, n=n, alpha=alpha)
    labels = (margins > 0).long()
    high = stats.binom.ppf(1 - 1e-4, samples, alpha)
    for correction in ("holm", "bonferroni"):
        label_map = cert.label_map(r, correction)
        certified = label_map != ABSTAIN
        wrong = certified & ((label_map != labels) | (margins.abs() < r))
        false_images = int(wrong.flatten(1).any(dim=1).sum())
        assert 0 < false_images <= high, correction
        assert bool(certified[:, 3:].all())  # every far voxel is certified: the correction costs power near r only
    # the setting is a hard one: tests at level alpha for each voxel, uncorrected, err on most images
    uncorrected = torch.from_numpy(one_sided_pvalues(cert.counts.numpy(), n, cert.tau(r)) <= alpha)
    assert int((uncorrected & (margins.abs() < r)).flatten(1).any(dim=1).sum()) > samples / 2


def test_holm_certifies_at_least_what_bonferroni_does_and_usually_more():
    sigma, n, alpha = 0.5, 200, 0.05
    margins = _near_and_far(40, near=0.25, far=3 * sigma)
    cert = RandomizedSmoothing(Threshold(), sigma, seed=1).certify(_images(margins), n0=10, n=n, alpha=alpha)
    more = 0
    for r in (0.0, 0.1, 0.15, 0.2):
        holm = cert.certified_mask(r, "holm")
        bonferroni = cert.certified_mask(r, "bonferroni")
        assert bool((holm >= bonferroni).all())
        more += int(holm.sum() - bonferroni.sum())
    assert more > 0
    assert cert.correction == "holm"
    assert torch.equal(cert.certified_fraction([0.15]), cert.certified_fraction([0.15], "holm"))


def test_radius_semantics():
    sigma, n = 0.5, 500
    margins = torch.tensor([[[0.0, 0.0, 0.4, -0.4], [1.5, -1.5, 0.8, -0.8]]])
    rs = RandomizedSmoothing(Threshold(logits=2), sigma, seed=2)
    cert = rs.certify(_images(margins), n0=20, n=n, alpha=0.01)
    assert cert.tau(0.0) == 0.5 and cert.tau(sigma) == pytest.approx(stats.norm.cdf(1.0))
    at_zero = cert.label_map(0.0)
    # on the boundary a voxel's two classes are equally likely: never certified, even at radius 0
    assert at_zero[0, 0, :2].tolist() == [ABSTAIN, ABSTAIN]
    assert at_zero[0, 0, 2:].tolist() == [1, 0] and at_zero[0, 1].tolist() == [1, 0, 1, 0]
    radii = [0.0, 0.2, 0.4, 0.8, 1.5, 5.0]
    fraction = cert.certified_fraction(radii)[0]
    assert fraction.tolist() == sorted(fraction.tolist(), reverse=True)  # fewer voxels at larger radii
    assert fraction[0] == 6 / 8 and fraction[-1] == 0
    for r in radii:  # no voxel certified beyond its exact radius
        assert bool((margins.abs()[cert.certified_mask(r)] >= r).all())
    # the largest radius any voxel can reach with n draws: all votes for it must pass at level alpha / voxels
    tau_max = (0.01 / 8) ** (1 / n)
    assert not bool(cert.certified_mask(sigma * stats.norm.ppf(tau_max) + 1e-6).any())


def test_predict_abstains_on_the_boundary():
    margins = torch.tensor([[[0.0, 1.0, -1.0, 0.0]]])
    pred = RandomizedSmoothing(Threshold(), 0.5).predict(_images(margins), n=2_000, alpha=0.01)
    assert pred.tolist() == [[[ABSTAIN, 1, 0, ABSTAIN]]]


def test_certified_dice_by_hand():
    n = 100
    prediction = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    counts = torch.tensor([[[n, n, 0], [n, 0, n]]])  # all votes (certified at radius 0) or none (abstain)
    cert = SegmentationCertificate(prediction, counts, 0.5, 10, n, 0.01, "holm", 3)
    assert cert.label_map(0.0).tolist() == [[[0, 1, ABSTAIN], [2, ABSTAIN, 0]]]
    y = torch.tensor([[[0, 1, 1], [2, 0, 0]]])
    # abstained (0,2) (true 1) and (1,1) (true 0) count against every class: a miss of their own, a false positive
    # of each other. Class 1: P = {(0,1), (1,1)}, G = {(0,1), (0,2)} -> 2/4; class 2: P = {(1,0), (0,2), (1,1)},
    # G = {(1,0)} -> 2/4; background: P = {(0,0), (1,2), (0,2)}, G = {(0,0), (1,1), (1,2)} -> 4/6
    assert cert.certified_dice(y, [0.0])[0, 0].item() == pytest.approx(0.5)
    both = cert.certified_dice(y, [0.0], include_background=True)[0, 0].item()
    assert both == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    # a lower bound: no way of filling the abstained voxels gives a smaller Dice (with several foreground classes
    # the mean of each class's worst case may lie below the worst mean: 0.5 here against 7/12)
    completions = [torch.tensor([[[0, 1, a], [2, b, 0]]]) for a in range(3) for b in range(3)]
    worst = min(certified_dice(full, y, 3).item() for full in completions)
    assert worst == pytest.approx(7 / 12) and worst >= cert.certified_dice(y, [0.0])[0, 0].item()
    # one foreground class (the bundles' case): the bound is the worst completion exactly
    binary, truth = torch.tensor([[[1, ABSTAIN], [ABSTAIN, 0]]]), torch.tensor([[[1, 1], [0, 0]]])
    fills = [torch.tensor([[[1, a], [b, 0]]]) for a in range(2) for b in range(2)]
    assert certified_dice(binary, truth, 2).item() == pytest.approx(
        min(certified_dice(f, truth, 2).item() for f in fills)
    )
    # an image without lesion scores 0 once a voxel abstains, 1 when everything is certified background
    empty = torch.zeros(1, 2, 2, dtype=torch.long)
    assert certified_dice(torch.tensor([[[0, ABSTAIN], [0, 0]]]), empty, 2).item() == 0.0
    assert certified_dice(empty, empty, 2).item() == 1.0
    assert cert.certified_accuracy(y, [0.0])[0, 0].item() == pytest.approx(4 / 6)
    assert cert.certified_fraction([0.0])[0, 0].item() == pytest.approx(4 / 6)
    # the label as (N, 1, *spatial) and as one-hot give the same
    one_hot = torch.nn.functional.one_hot(y, 3).movedim(-1, 1)
    assert torch.equal(cert.certified_dice(y[:, None], [0.0]), cert.certified_dice(one_hot, [0.0]))
    # without abstained voxels it is the project's hard Dice
    full = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    assert certified_dice(full, y, 3).item() == pytest.approx(hard_dice(full, y, 3).item())
    rows = cert.to_rows(y, radii=[0.0, 0.5])
    assert rows[0]["radii"] == [0.0, 0.5] and rows[0]["voxels"] == 6
    json.dumps(rows)
    with pytest.raises(ValueError, match="`y`"):
        cert.certified_dice(torch.zeros(1, 3, 2), [0.0])


def test_batch_independence_and_network_unchanged():
    torch.manual_seed(0)
    net = TinySegmenter(2, 1, 3).train()
    before = snapshot(net)
    x = torch.randn(3, 1, 8, 8)
    rs = RandomizedSmoothing(net, 0.5, batch_size=25, seed=4)
    batch = rs.certify(x, n0=10, n=60)
    alone = rs.certify(x[2:], n0=10, n=60)
    assert torch.equal(batch.prediction[2:], alone.prediction) and torch.equal(batch.counts[2:], alone.counts)
    assert torch.equal(rs.predict(x, n=40)[2:], rs.predict(x[2:], n=40))
    assert same_snapshot(before, snapshot(net))


def test_3d_through_a_sliding_window_inferer_matches_the_direct_network():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8, 8)
    inferer = SlidingWindowInferer(roi_size=(6, 6, 6), sw_batch_size=64, overlap=0.5)  # 8 overlapping windows
    direct = RandomizedSmoothing(Threshold(logits=2), 0.5, batch_size=8, seed=9)
    windowed = RandomizedSmoothing(InfererModel(Threshold(logits=2), inferer), 0.5, batch_size=8, seed=9)
    a, b = direct.certify(x, n0=2, n=6, alpha=0.05), windowed.certify(x, n0=2, n=6, alpha=0.05)
    assert a.prediction.shape == (2, 8, 8, 8)
    assert torch.equal(a.prediction, b.prediction) and torch.equal(a.counts, b.counts)
    net = TinySegmenter(3, 1, 2).train()
    before = snapshot(net)
    cert = RandomizedSmoothing(InfererModel(net, inferer), 0.5, batch_size=8).certify(x, n0=1, n=2, alpha=0.05)
    assert cert.label_map(0.0).shape == (2, 8, 8, 8) and cert.num_classes == 2
    assert same_snapshot(before, snapshot(net))


def test_segmentation_bad_input():
    rs = RandomizedSmoothing(TinySegmenter(2, 1, 2), 0.5)
    x = torch.randn(1, 1, 6, 6)
    with pytest.raises(ValueError, match="correction"):
        rs.certify(x, n0=2, n=4, correction="fdr")
    cert = rs.certify(x, n0=2, n=4)
    with pytest.raises(ValueError, match="correction"):
        cert.label_map(0.0, correction="none")
    with pytest.raises(ValueError, match="radii"):
        cert.certified_fraction([-0.1])
    with pytest.raises(ValueError, match="probabilities"):
        RandomizedSmoothing(lambda v: TinySegmenter(2, 1, 3)(v).softmax(1), 0.5).certify(x, n0=2, n=4)
