# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

import math

import pytest
import torch

from monai_adv.metrics import (
    ClassificationMetrics,
    SampleOutcome,
    SegmentationMetrics,
    perturbation_norms,
    sample_outcome,
    worst_case_index,
)


def _logits_for(pred, classes):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), classes).float() * 4


def test_macro_metrics_by_hand():
    # class 0: tp 1 fn 1 fp 0; class 1: tp 1 fn 1 fp 1; class 2: tp 2 fn 0 fp 1
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    p = torch.tensor([0, 2, 2, 2, 1, 1])
    m = ClassificationMetrics("classification", 3)
    m.update(_logits_for(p[:4], 3), y[:4], p[:4])
    m.update(_logits_for(p[4:], 3), y[4:], p[4:])
    out = m.compute()
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["recall"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert out["precision"] == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    assert out["f1"] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)


def test_never_predicted_class_has_zero_precision():
    y = torch.tensor([0, 1, 1, 0])
    p = torch.tensor([0, 0, 0, 0])
    m = ClassificationMetrics("classification", 2)
    m.update(_logits_for(p, 2), y, p)
    out = m.compute()
    assert out["precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["recall"] == pytest.approx((1.0 + 0.0) / 2)


def test_binary_auc_by_hand():
    # scores of the positive class: positives 0.9, 0.4; negatives 0.5, 0.1 -> 3 of 4 pairs ordered: AUC 0.75
    p1 = torch.tensor([0.9, 0.4, 0.5, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))], dim=1)
    y = torch.tensor([1, 1, 0, 0])
    m = ClassificationMetrics("classification", 2)
    m.update(logits, y, logits.argmax(1))
    assert m.compute()["auc"] == pytest.approx(0.75)
    single = ClassificationMetrics("classification", 1)
    single.update(logits[:, 1:], y, (logits[:, 1] > 0).long())
    assert single.compute()["auc"] == pytest.approx(0.75)


def test_multilabel_mean_auroc_and_exact_match():
    y = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]]).float()
    logits = torch.tensor([[2.0, -1.0], [-1.0, 0.5], [1.0, -0.2], [-2.0, 0.1]])
    m = ClassificationMetrics("multilabel", 2)
    m.update(logits, y, (logits > 0).float())
    out = m.compute()
    assert out["accuracy"] == pytest.approx(2 / 4)  # rows 0 and 1 fully right
    # label 0 separates perfectly (1.0); label 1: positives 0.5, -0.2 vs negatives -1.0, 0.1 -> 3/4
    assert out["auc"] == pytest.approx((1.0 + 0.75) / 2)


def test_auc_undefined_with_one_class_is_nan():
    m = ClassificationMetrics("classification", 2)
    y = torch.zeros(3, dtype=torch.long)
    m.update(_logits_for(y, 2), y, y)
    assert math.isnan(m.compute()["auc"])


def test_segmentation_dice_iou_by_hand():
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[0, :2, :2] = 1  # 4 voxels
    p = torch.zeros_like(y)
    p[0, :2, :3] = 1  # 6 voxels, 4 overlap
    m = SegmentationMetrics(2)
    m.update(None, y, p)
    out = m.compute()
    assert out["dice"] == pytest.approx(2 * 4 / (4 + 6))
    assert out["iou"] == pytest.approx(4 / 6)


def test_sample_outcome_and_worst_case():
    logits_a = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    logits_b = torch.tensor([[2.0, 1.5, 0.0], [0.0, 0.5, 1.0]])
    y = torch.tensor([0, 1])
    a, b = sample_outcome("classification", logits_a, y), sample_outcome("classification", logits_b, y)
    assert a.quality.tolist() == pytest.approx([2.0, 1.0])
    assert b.correct.tolist() == [True, False]
    # sample 0: both right, b has the lower margin; sample 1: only b is wrong
    assert worst_case_index([a, b]).tolist() == [1, 1]
    wrong_but_high = SampleOutcome(torch.tensor([1]), torch.tensor([False]), torch.tensor([5.0], dtype=torch.float64))
    right_but_low = SampleOutcome(torch.tensor([0]), torch.tensor([True]), torch.tensor([0.1], dtype=torch.float64))
    assert worst_case_index([right_but_low, wrong_but_high]).tolist() == [1]
    with pytest.raises(ValueError, match="outcomes"):
        worst_case_index([])


def test_perturbation_norms():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0], x_adv[0, 0, 1, 1] = 0.3, -0.4
    norms = perturbation_norms(x, x_adv)
    assert norms[0].tolist() == pytest.approx([0.4, 0.5])
    assert norms[1].tolist() == [0.0, 0.0]


def test_per_class_rows_of_classification_and_segmentation():
    from monai_adv.metrics import make_task_metrics

    metrics = make_task_metrics("classification", 3)
    labels, predictions = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0, 0])
    logits = torch.nn.functional.one_hot(predictions, 3).float()
    per_class = metrics.per_class_rows(metrics.rows(logits, labels, predictions))
    assert per_class == {"metric": "recall", "classes": [0, 1, 2], "values": [0.5, 2 / 3, 0.0], "support": [2, 3, 1]}
    seg = make_task_metrics("segmentation", 3)
    label = torch.zeros(2, 4, 4, dtype=torch.long)
    label[:, :2] = 1  # class 1 in both samples, class 2 in none
    pred = label.clone()
    pred[1] = 0  # sample 1 misses class 1 entirely
    per_class = seg.per_class_rows(seg.rows(None, label, pred))
    assert per_class["metric"] == "dice" and per_class["classes"] == [1, 2]
    assert per_class["values"] == [0.5, None] and per_class["support"] == [2, 0]
