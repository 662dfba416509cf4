# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial example detection: the Mahalanobis and feature-squeezing detectors, their metrics, the
detector-aware attacks and the "classify or reject" evaluation.

Measured on the small CNN trained on the bar images (``trained_bars``; detectors fitted on 512 other clean bar images,
threshold for 5% FPR on 256 more), 128 test images, L-inf eps 16/255, 20 steps:

- PGD (CE) on the classifier alone: robust accuracy 0.12; detection AUROC 1.000 (Mahalanobis), 0.992 (squeezing);
  TPR at 5% FPR 1.00 and 0.95; "classify or reject" accuracy 1.00 and 0.98.
- The adaptive attack (detector-aware APGD, CW margin, penalty weights 0.1, 1, 10): "classify or reject" accuracy
  0.69 (Mahalanobis) and 0.66 (squeezing): the detectors flag almost none of its examples (2% and 23%), although
  their scores still rank above most clean ones (AUROC 0.93 and 0.96).
"""

import pytest
import torch
from monai.networks.nets import DenseNet
from scipy.ndimage import median_filter

from monai_adv.attacks import PGD
from monai_adv.defenses.detection_attack import (
    DetectorAwareAPGD,
    DetectorAwarePGD,
    ScoredClassifier,
    evaluate_detection,
)
from monai_adv.defenses.detection_metrics import detection_metrics, threshold_at_fpr
from monai_adv.defenses.detectors import FeatureSqueezingDetector, MahalanobisDetector
from monai_adv.defenses.purifiers import BitDepthReduction
from monai_adv.defenses.squeezers import MedianSqueezer, make_squeezer
from tests.cases import same_snapshot, snapshot
from tests.models import TinyClassifier, bars_dataset

DETECTORS = {
    "mahalanobis": lambda net: MahalanobisDetector(net),
    "squeezing": lambda net: FeatureSqueezingDetector(net, squeezers=("bit_depth_5", "median_2x2")),
}


def _hooks(model: torch.nn.Module):
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._forward_hooks_with_kwargs))
        for m in model.modules()
    ]


@pytest.fixture(scope="module")
def bars(trained_bars):
    """The trained bar classifier, 128 test images, and both detectors fitted on other clean bar images."""
    model, x, y = trained_bars
    x_fit, y_fit = bars_dataset(512, seed=2)
    x_cal, y_cal = bars_dataset(256, seed=3)
    fit = [{"image": x_fit[i : i + 128], "label": y_fit[i : i + 128]} for i in range(0, 512, 128)]
    detectors = {name: make(model).fit(fit, calibration=[(x_cal, y_cal)]) for name, make in DETECTORS.items()}
    return model, x[:128], y[:128], detectors


# ---- fit and score on 2D and 3D, the model left as found -------------------------------------------------------------
@pytest.mark.parametrize("dims,shape", [(2, (16, 16)), (3, (8, 8, 8))])
@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_detectors_fit_score_and_leave_the_model_as_found(dims, shape, kind):
    torch.manual_seed(0)
    model = TinyClassifier(dims, 1, 3).train()  # in training mode, with a .grad field and a frozen parameter
    params = list(model.parameters())
    params[0].grad = torch.randn_like(params[0])
    params[-1].requires_grad_(False)
    before, hooks = snapshot(model), _hooks(model)
    x, y = torch.rand(40, 1, *shape), torch.arange(40) % 3
    detector = DETECTORS[kind](model).fit([(x[:20], y[:20]), (x[20:], y[20:])])
    assert (detector.detect(x).double().mean() <= 0.05).item()  # the threshold's FPR on its own fit data
    if kind == "mahalanobis":
        assert detector.layers == ("features.0", "features.3")  # the last two convolutions
        assert len(detector.means) == 2 and detector.means[0].shape == (3, 8) and detector.means[1].shape == (3, 16)
    x_new = torch.rand(5, 1, *shape, requires_grad=True)
    score = detector.score(x_new)
    assert score.shape == (5,) and score.dtype == torch.float64 and torch.isfinite(score).all()
    (grad,) = torch.autograd.grad(score.sum(), x_new)  # differentiable (squeezing: through the un-squeezed branch)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    flagged = detector.detect(x_new.detach())
    assert flagged.dtype == torch.bool and flagged.shape == (5,)
    assert torch.equal(flagged, score.detach() > detector.threshold)
    assert same_snapshot(before, snapshot(model)) and _hooks(model) == hooks


def test_mahalanobis_on_a_monai_network_with_named_layers():
    torch.manual_seed(0)
    net = DenseNet(3, 1, 3, init_features=4, growth_rate=4, block_config=(2, 2), bn_size=2).eval()
    before, hooks = snapshot(net), _hooks(net)
    x, y = torch.rand(12, 1, 8, 8, 8), torch.arange(12) % 3
    default = MahalanobisDetector(net).fit([(x, y)])
    assert all(isinstance(dict(net.named_modules())[n], torch.nn.Conv3d) for n in default.layers)
    named = MahalanobisDetector(net, layers=["features.transition1", "features.denseblock2"]).fit([(x, y)])
    assert [m.shape[1] for m in named.means] == [6, 14]  # the blocks' channels: 4 + 2 * 4, halved; 6 + 2 * 4
    assert named.score(x[:3]).shape == (3,) and default.score(x[:3]).shape == (3,)
    assert same_snapshot(before, snapshot(net)) and _hooks(net) == hooks


# ---- the detectors on the trained classifier ------------------------------------------------------------------------
def test_detectors_flag_pgd_examples(bars):
    model, x, y, detectors = bars
    x_adv = PGD(model, eps=16 / 255, steps=20, seed=0)(x, y)
    with torch.no_grad():
        robust = (model(x_adv).argmax(dim=1) == y).double().mean().item()
    assert robust < 0.3  # PGD succeeds at this eps
    for name, detector in detectors.items():
        with torch.no_grad():
            metrics = detection_metrics(detector.score(x), detector.score(x_adv))
        print(f"{name}: PGD robust accuracy {robust:.3f}, AUROC {metrics['auroc']:.3f}, TPR@5%FPR", metrics)
        assert metrics["auroc"] > 0.9 and metrics["tpr_at_5_fpr"] > 0.5


def test_adaptive_attack_contract_and_joint_success(bars):
    model, x, y, detectors = bars
    x, y = x[:32], y[:32]
    mask = torch.ones_like(x)
    mask[..., :, :4] = 0  # the four left columns never change
    before, hooks = snapshot(model), _hooks(model)
    for detector in detectors.values():
        for cls in (DetectorAwarePGD, DetectorAwareAPGD):
            attack = cls(model, detector, eps=16 / 255, steps=10, seed=3)
            result = attack.perturb(x, y, mask=mask)
            x_adv = result.x_adv
            assert ((x_adv - x).abs() <= 16 / 255).all() and x_adv.min() >= 0 and x_adv.max() <= 1
            assert torch.equal(x_adv[mask == 0], x[mask == 0])
            assert torch.equal(attack.perturb(x, y, mask=mask).x_adv, x_adv)  # deterministic for a seed
            with torch.no_grad():
                evaded = (model(x_adv).argmax(dim=1) != y) & ~detector.detect(x_adv)
            # success is the joint goal: misclassified and not detected (one near-threshold rounding allowed)
            assert int((evaded != result.success).sum()) <= 1
    assert same_snapshot(before, snapshot(model)) and _hooks(model) == hooks


def test_adaptive_attack_lowers_classify_or_reject_accuracy(bars):
    model, x, y, detectors = bars
    for name, detector in detectors.items():
        report = evaluate_detection(model, detector, x, y, eps=16 / 255, steps=20)
        pgd, adaptive = report["attacks"]["pgd"], report["attacks"]["adaptive"]
        print(
            f"{name}: clean false rejection {report['clean']['false_rejection_rate']:.3f}; "
            f"PGD: AUROC {pgd['auroc']:.3f}, TPR@5%FPR {pgd['tpr_at_5_fpr']:.3f}, robust {pgd['robust_accuracy']:.3f}, "
            f"classify-or-reject {pgd['classify_or_reject_accuracy']:.3f}; adaptive: AUROC {adaptive['auroc']:.3f}, "
            f"TPR@5%FPR {adaptive['tpr_at_5_fpr']:.3f}, robust {adaptive['robust_accuracy']:.3f}, "
            f"classify-or-reject {adaptive['classify_or_reject_accuracy']:.3f}"
        )
        assert report["quote"] == "worst_case" and adaptive["adaptive"] and not pgd["adaptive"]
        assert pgd["robust_accuracy"] < 0.3 and pgd["classify_or_reject_accuracy"] >= 0.9
        assert adaptive["classify_or_reject_accuracy"] < pgd["classify_or_reject_accuracy"] - 0.1
        assert adaptive["evasion_rate"] == pytest.approx(1 - adaptive["classify_or_reject_accuracy"])
        assert report["worst_case"]["classify_or_reject_accuracy"] <= adaptive["classify_or_reject_accuracy"]
        assert report["clean"]["accuracy"] >= 0.95 and report["clean"]["false_rejection_rate"] <= 0.15


def test_scored_classifier_appends_the_detector_margin(bars):
    model, x, _, detectors = bars
    detector = detectors["squeezing"]
    with torch.no_grad():
        out = ScoredClassifier(model, detector)(x[:8])
        assert torch.allclose(out[:, :-1], model(x[:8]).double(), atol=1e-6)
        assert torch.equal(out[:, -1] > 0, detector.detect(x[:8]))


# ---- metrics and squeezers ------------------------------------------------------------------------------------------
def test_detection_metrics_equal_a_hand_computation():
    clean, adv = [0.1, 0.4, 0.35, 0.8], [0.9, 0.4, 0.8, 0.2]
    # pairs (adv > clean, a tie counts 1/2): 0.9 -> 4, 0.4 -> 2.5, 0.8 -> 3.5, 0.2 -> 1: 11 of 16
    metrics = detection_metrics(clean, adv)
    assert metrics == {"auroc": 11 / 16, "tpr_at_5_fpr": 0.25}  # threshold 0.8: no clean score may exceed it
    assert detection_metrics(clean, adv, fpr=0.25)["tpr_at_25_fpr"] == 0.5  # one may: threshold 0.4
    assert detection_metrics([1.0, 1.0], [1.0, 1.0, 1.0])["auroc"] == 0.5
    assert detection_metrics([0, 1], [2, 3]) == {"auroc": 1.0, "tpr_at_5_fpr": 1.0}
    assert detection_metrics(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))["auroc"] == 0.0
    g = torch.Generator().manual_seed(0)
    c, a = torch.randint(0, 5, (50,), generator=g).float(), torch.randint(1, 6, (40,), generator=g).float()
    pairs = ((a[:, None] > c[None]).double() + 0.5 * (a[:, None] == c[None]).double()).mean().item()
    assert detection_metrics(c, a)["auroc"] == pytest.approx(pairs, abs=1e-12)
    assert threshold_at_fpr(torch.arange(100.0), 0.05) == 94.0  # 95..99 exceed it: 5 of 100


@pytest.mark.parametrize("shape,size", [((2, 3, 7, 6), 2), ((2, 3, 7, 6), 3), ((1, 2, 5, 6, 4), 2), ((2, 1, 9), 2)])
def test_median_squeezer_matches_scipy(shape, size):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = median_filter(x.numpy(), size=(1, 1) + (size,) * (len(shape) - 2), mode="nearest")
    assert torch.equal(MedianSqueezer(size)(x), torch.from_numpy(reference))


def test_squeezer_names_and_bit_depth():
    assert isinstance(make_squeezer("median_2x2x2"), MedianSqueezer)
    assert make_squeezer("median_2x3").size == (2, 3)
    squeeze = make_squeezer("bit_depth_1")
    assert isinstance(squeeze, BitDepthReduction) and squeeze.bits == 1
    x = torch.tensor([0.0, 0.49, 0.51, 1.0]).view(1, 1, 4)
    assert torch.equal(squeeze(x), torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 4))
    levels = make_squeezer("bit_depth_3", value_range=(-1.0, 1.0))(torch.linspace(-1, 1, 101).view(1, 1, 101))
    assert levels.unique().numel() == 8 and levels.min() == -1 and levels.max() == 1
    with pytest.raises(ValueError, match="`value_range`"):
        make_squeezer("bit_depth_5", value_range=None)


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_max_batch_does_not_change_the_evaluation(bars):
    model, x, y, detectors = bars
    for detector in detectors.values():
        _same_with_max_batch(model, detector, x[:20], y[:20])


def _same_with_max_batch(model, detector, x, y):
    whole = evaluate_detection(model, detector, x, y, eps=16 / 255, steps=5)
    assert evaluate_detection(model, detector, x, y, eps=16 / 255, steps=5, max_batch=7) == whole
    with pytest.raises(ValueError, match="`max_batch`"):
        evaluate_detection(model, detector, x, y, max_batch=0)


def test_bad_input_raises_naming_the_argument():
    net = TinyClassifier(2, 1, 3)
    x, y = torch.rand(4, 1, 16, 16), torch.arange(4) % 3
    for make in DETECTORS.values():
        with pytest.raises(ValueError, match="`data`"):
            make(net).fit([])
        with pytest.raises(ValueError, match="`data`"):
            make(net).fit([(x[:0], y[:0])])
        with pytest.raises(RuntimeError, match="not fitted"):
            make(net).detect(x)
    with pytest.raises(ValueError, match="`layers`"):
        MahalanobisDetector(net, layers=["features.99"])
    for fpr in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="`fpr`"):
            MahalanobisDetector(net, fpr=fpr)
        with pytest.raises(ValueError, match="`fpr`"):
            FeatureSqueezingDetector(net, fpr=fpr)
        with pytest.raises(ValueError, match="`fpr`"):
            detection_metrics([0.0], [1.0], fpr=fpr)
    with pytest.raises(ValueError, match="`squeezers`"):
        FeatureSqueezingDetector(net, squeezers=("jpeg_75",))
    with pytest.raises(ValueError, match="`scores_clean`"):
        detection_metrics([], [1.0])
    detector = FeatureSqueezingDetector(net).fit([(x, y)])
    with pytest.raises(ValueError, match="`lam`"):
        DetectorAwarePGD(net, detector, lam=0.0)
    with pytest.raises(ValueError, match="`targeted`"):
        DetectorAwareAPGD(net, detector, targeted="random")
    with pytest.raises(TypeError, match="objective"):
        DetectorAwarePGD(net, detector, objective=None)
    with pytest.raises(ValueError, match="`attacks`"):
        evaluate_detection(net, detector, x, y, attacks={"x": "fgsm"})
