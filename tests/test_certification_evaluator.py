# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""CertificationEvaluator: the rows of a MONAI workflow equal RandomizedSmoothing.certify on the same samples."""

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import SlidingWindowInferer

from monai_adv.benchmark.certification_report import (
    certification_csv,
    certification_markdown,
    validate_certification_report,
)
from monai_adv.certify import ABSTAIN, RandomizedSmoothing
from monai_adv.engines import CertificationEvaluator
from monai_adv.visualize import plot_certified_curves
from tests.models import TinyClassifier, TinySegmenter, bars_dataset, train_classifier

SIGMA = 0.25


@pytest.fixture(scope="module")
def classifier():
    x, y = bars_dataset(48, seed=2)
    torch.manual_seed(0)
    noisy = (x + SIGMA * torch.randn_like(x)).clamp(-1, 2)  # a little noise in training: some certified samples
    return train_classifier(TinyClassifier(2, 1, 3), torch.cat([x, noisy]), torch.cat([y, y]), epochs=10), x, y


def _loader(x, y, batch_size):
    return DataLoader(Dataset([{"image": a, "label": b} for a, b in zip(x, y)]), batch_size=batch_size)


def test_rows_equal_a_direct_certify_loop_and_do_not_depend_on_the_batches(classifier, tmp_path):
    net, x, y = classifier
    x, y = x[:7], y[:7]
    settings = {"sigma": SIGMA, "n0": 20, "n": 200, "alpha": 0.01, "batch_size": 64, "seed": 5}
    direct = RandomizedSmoothing(net, SIGMA, batch_size=64, seed=5).certify(x, n0=20, n=200, alpha=0.01)
    reports = []
    for batch_size in (3, 7):
        evaluator = CertificationEvaluator("cpu", _loader(x, y, batch_size), net, radii=[0, 0.1, 0.2], **settings)
        evaluator.run()
        reports.append(evaluator.report(model={"name": "tiny"}))
    report = reports[0]
    validate_certification_report(report)
    samples = report["samples"]
    assert [s["index"] for s in samples] == list(range(7))
    assert [s["prediction"] for s in samples] == direct.prediction.tolist()
    assert [s["radius"] for s in samples] == direct.radius.tolist()
    assert [s["p_lower"] for s in samples] == direct.p_lower.tolist()
    assert [s["count"] for s in samples] == direct.counts.tolist()
    assert [s["correct"] for s in samples] == direct.correct(y).tolist()
    assert [p["certified_accuracy"] for p in report["curve"]] == direct.certified_accuracy(y, [0, 0.1, 0.2])
    assert any(s["prediction"] != ABSTAIN for s in samples)
    strip = ("created", "seconds", "provenance")
    assert {k: reports[1][k] for k in reports[1] if k not in strip} == {k: report[k] for k in report if k not in strip}
    metrics = evaluator.state.metrics
    assert metrics["certified_accuracy@0.1"] == report["curve"][1]["certified_accuracy"]
    assert metrics["abstain_rate"] == pytest.approx(float((direct.prediction == ABSTAIN).double().mean()))
    acr = float((direct.radius * direct.correct(y).double()).mean())
    assert report["summary"]["average_certified_radius"] == pytest.approx(acr)
    assert certification_csv(report).splitlines()[0] == "index,label,prediction,correct,abstained,radius,p_lower,count"
    assert "| 0.1 |" in certification_markdown(report)
    plot_certified_curves({"a": report, "b": reports[1]}, tmp_path / "two.png")
    assert (tmp_path / "two.png").is_file()


def test_multilabel_rows():
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3).eval()
    x = torch.rand(4, 1, 8, 8)
    y = (torch.rand(4, 3) > 0.5).long()
    evaluator = CertificationEvaluator("cpu", _loader(x, y, 2), net, SIGMA, n0=10, n=50, task="multilabel")
    evaluator.run()
    report = evaluator.report()
    validate_certification_report(report)
    direct = RandomizedSmoothing(net, SIGMA, task="multilabel", seed=0).certify(x, n0=10, n=50)
    assert [s["prediction"] for s in report["samples"]] == direct.prediction.tolist()
    assert [s["radius_min"] for s in report["samples"]] == direct.sample_radius.tolist()
    assert certification_csv(report).splitlines()[0].endswith(",radius_min")


def test_segmentation_rows_through_a_sliding_window_inferer():
    torch.manual_seed(0)
    net = TinySegmenter(3, 1, 2).eval()
    x = torch.rand(2, 1, 12, 12, 12)
    y = (x > 0.5).long()
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=4, overlap=0.25)
    radii = [0.0, 0.05]
    evaluator = CertificationEvaluator(
        "cpu", _loader(x, y, 2), net, 0.1, n0=5, n=30, radii=radii, batch_size=16, inferer=inferer
    )
    evaluator.run()
    report = evaluator.report()
    validate_certification_report(report)
    model = lambda v: inferer(v, net)  # noqa: E731
    direct = RandomizedSmoothing(model, 0.1, batch_size=16, seed=0).certify(x, n0=5, n=30)
    samples = report["samples"]
    assert [s["certified_fraction"] for s in samples] == direct.certified_fraction(radii).tolist()
    assert [s["certified_dice"] for s in samples] == direct.certified_dice(y, radii).tolist()
    assert [s["voxels"] for s in samples] == [12**3] * 2
    expected = [(direct.label_map(r) == y[:, 0]).flatten(1).double().mean(1) for r in radii]
    assert [s["certified_accuracy"] for s in samples] == torch.stack(expected, 1).tolist()
    assert report["curve"][0]["certified_dice"] == pytest.approx(direct.certified_dice(y, radii)[:, 0].mean().item())


def test_bad_settings_are_clear_errors():
    net = TinyClassifier(2, 1, 2)
    loader = _loader(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="sigma"):
        CertificationEvaluator("cpu", loader, net, sigma=0.0)
    with pytest.raises(ValueError, match="`n0` \\(50\\) must not exceed `n` \\(10\\)"):
        CertificationEvaluator("cpu", loader, net, SIGMA, n0=50, n=10)
    with pytest.raises(ValueError, match="`radii` must hold finite numbers >= 0"):
        CertificationEvaluator("cpu", loader, net, SIGMA, radii=[0.1, -1])
    with pytest.raises(RuntimeError, match="call run\\(\\) first"):
        CertificationEvaluator("cpu", loader, net, SIGMA).report()
