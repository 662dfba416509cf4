# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""RobustnessEvaluator(additional_metrics=...): MONAI and ignite metrics in every cell of the report."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from ignite.metrics import Accuracy
from monai.data import DataLoader
from monai.handlers import ConfusionMatrix
from monai.losses import DiceCELoss
from monai.metrics import ConfusionMatrixMetric, HausdorffDistanceMetric
from monai.networks.nets import UNet

from monai_adv.benchmark.report import markdown_table, validate_report
from monai_adv.data import BrainLesionDataset
from monai_adv.engines import RobustnessEvaluator, build_attack, parse_attack_specs
from monai_adv.metrics import AdditionalMetrics, one_hot_inputs

EPS = [2 / 255, 8 / 255]
SEG_ATTACKS = ["fgsm", {"attack": "pgd", "steps": 3}]


def _stack(dataset):
    return torch.stack([d["image"] for d in dataset]), torch.stack([d["label"] for d in dataset]).long()


@pytest.fixture(scope="module")
def seg_model():
    """A tiny 2D MONAI UNet trained a few steps on the demo segmentation task, with 8 test samples."""
    x, y = _stack(BrainLesionDataset("train", "segmentation", 2, num_samples=32, image_size=32))
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), num_res_units=0)
    opt, loss = torch.optim.Adam(net.parameters(), 1e-2), DiceCELoss(to_onehot_y=True, softmax=True)
    for _ in range(60):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    return net.eval(), BrainLesionDataset("test", "segmentation", 2, num_samples=8, image_size=32)


def _hd95(logits, labels):
    metric = HausdorffDistanceMetric(percentile=95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes
        metric(F.one_hot(logits.argmax(1), 2).movedim(-1, 1).float(), F.one_hot(labels[:, 0], 2).movedim(-1, 1).float())
    return float(metric.aggregate())


@pytest.fixture(scope="module")
def seg_evaluated(seg_model):
    net, test = seg_model
    given = HausdorffDistanceMetric(percentile=95)
    ev = RobustnessEvaluator(
        "cpu", DataLoader(test, batch_size=8), net, SEG_ATTACKS, EPS, additional_metrics={"hd95": given}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev.run()
    return net, test, ev, given


def test_hd95_in_every_cell_of_the_report_and_the_state(seg_evaluated):
    net, test, ev, given = seg_evaluated
    report = ev.report()
    validate_report(report)
    json.dumps(report, allow_nan=False)
    rows = {(r["attack"], r["eps"]): r for r in report["results"]}
    assert set(rows) == {(a, e) for a in ("fgsm", "pgd", "worst-case") for e in EPS}
    assert report["clean"]["hd95"] is not None and ev.state.metrics["clean/hd95"] == report["clean"]["hd95"]
    for (attack, _), row in rows.items():
        label = row["eps_label"]
        assert row["metrics"]["hd95"] is not None, (attack, label)
        assert ev.state.metrics[f"{attack}@{label}/hd95"] == row["metrics"]["hd95"]
    # the values are MONAI's metric on the one-hot hard predictions: the clean pass and FGSM's examples
    x, y = _stack(test)
    with torch.no_grad():
        assert report["clean"]["hd95"] == pytest.approx(_hd95(net(x), y))
        fgsm = parse_attack_specs(["fgsm"])[0]
        x_adv = build_attack(fgsm, net, EPS[1], task="segmentation", early_stop=False).perturb(x, y).x_adv
        assert rows[("fgsm", EPS[1])]["metrics"]["hd95"] == pytest.approx(_hd95(net(x_adv), y))
    # the attacks move the boundary: a larger distance at the larger budget in the worst case
    assert rows[("worst-case", EPS[1])]["metrics"]["hd95"] > report["clean"]["hd95"]
    assert "| fgsm |" in markdown_table(report, metric="hd95")
    assert given.get_buffer() is None, "the given metric is copied, never fed"


def test_a_second_run_starts_from_fresh_metrics(seg_evaluated):
    *_, ev, _ = seg_evaluated
    first = ev.report()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev.run()
    second = ev.report()
    assert second["clean"]["hd95"] == first["clean"]["hd95"]
    assert [r["metrics"]["hd95"] for r in second["results"]] == [r["metrics"]["hd95"] for r in first["results"]]
    assert second["num_samples"] == first["num_samples"] == 8


def test_ignite_and_monai_metrics_on_classification(trained_bars):
    model, x, y = trained_bars
    x, y = x[:48], y[:48]
    loader = DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=16)
    given = Accuracy(is_multilabel=True)
    metrics = {
        "exact": given,  # ignite: exact match of one-hot prediction and label = accuracy
        "cm": ConfusionMatrixMetric(metric_name=["sensitivity", "precision"], reduction="mean"),  # micro averages
        "sens": ConfusionMatrix(metric_name="sensitivity", reduction="mean", save_details=True),  # ignite handler
    }
    ev = RobustnessEvaluator("cpu", loader, model, ["fgsm", "pgd"], [8 / 255, 16 / 255], additional_metrics=metrics)
    ev.run()
    report = ev.report()
    validate_report(report)
    cells = [report["clean"]] + [r["metrics"] for r in report["results"]]
    assert len(cells) == 1 + 3 * 2
    for cell in cells:
        # one label per sample: the micro sensitivity and precision of the one-hot predictions are the accuracy
        for name in ("exact", "cm_sensitivity", "cm_precision", "sens"):
            assert cell[name] == pytest.approx(cell["accuracy"]), name
    assert min(c["accuracy"] for c in cells) < report["clean"]["accuracy"], "the attacks break samples"
    assert ev.state.metrics["pgd@16/255/cm_precision"] == report["results"][-1]["metrics"]["cm_precision"]
    assert given._num_examples == 0, "the given metric is copied, never fed"


def test_one_hot_inputs():
    y_pred, y = one_hot_inputs("segmentation", torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 0], [1, 1]]]), 1)
    assert y_pred.shape == y.shape == (1, 2, 2, 2) and y_pred.dtype == torch.float32
    assert torch.equal(y_pred[0, 1], torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    y_pred, y = one_hot_inputs("classification", torch.tensor([2, 0]), torch.tensor([1, 0]), 3)
    assert torch.equal(y_pred, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])) and y.shape == (2, 3)
    multi = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert all(torch.equal(t, multi) for t in one_hot_inputs("multilabel", multi, multi, 2))


def test_several_values_are_reduced_by_their_mean_over_finite_values():
    metrics = AdditionalMetrics({"hd": HausdorffDistanceMetric(reduction="none")}, "segmentation", 2)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:4, 2:4] = 1
    pred = labels.clone()
    pred[0, 2:6, 2:4] = 1  # sample 0: 2 voxels off; sample 1: an empty prediction (NaN distance)
    pred[1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics.update(pred, labels)
        assert metrics.compute() == {"hd": pytest.approx(2.0)}


@pytest.mark.parametrize(
    "metrics, error, match",
    [
        ([HausdorffDistanceMetric()], TypeError, "mapping of names to metrics"),
        ({"dice": HausdorffDistanceMetric()}, ValueError, "taken by a built-in entry"),
        ({"success_rate": HausdorffDistanceMetric()}, ValueError, "taken by a built-in entry"),
        ({"a/b": HausdorffDistanceMetric()}, ValueError, "without '/'"),
        ({"": HausdorffDistanceMetric()}, ValueError, "non-empty"),
        ({"hd": lambda y_pred, y: 0.0}, TypeError, "CumulativeIterationMetric"),
        ({"hd": HausdorffDistanceMetric(get_not_nans=True)}, ValueError, "get_not_nans=False"),
    ],
)
def test_bad_additional_metrics(trained_bars, metrics, error, match):
    model, x, y = trained_bars
    loader = DataLoader([{"image": a, "label": b} for a, b in zip(x[:4], y[:4])], batch_size=4)
    with pytest.raises(error, match=match):
        RobustnessEvaluator("cpu", loader, model, ["fgsm"], [0.01], additional_metrics=metrics)
