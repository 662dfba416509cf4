# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The robust-accuracy-vs-eps curve of RobustnessEvaluator: one minimum-norm run combined with the suite."""

import pytest
import torch
from monai.data import DataLoader

from monai_adv.attacks import FMN, PGD
from monai_adv.benchmark.report import curve_table, validate_report, write_reports
from monai_adv.engines import RobustnessEvaluator
from monai_adv.engines.robustness_curve import curve_grid
from monai_adv.visualize import plot_min_norm_curve
from tests.models import TinySegmenter

EPS = [2 / 255, 6 / 255]
FMN_SETTINGS = {"attack": "fmn", "steps": 30}


def _loader(x, y, batch_size=20):
    return DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=batch_size)


@pytest.fixture(scope="module")
def curved(trained_bars):
    model, x, y = trained_bars
    x, y = x[:40], y[:40]
    evaluator = RobustnessEvaluator(
        "cpu", _loader(x, y), model, ["pgd-20"], EPS, seed=1, min_norm_attack=FMN_SETTINGS, curve_points=11
    )
    evaluator.run()
    return model, x, y, evaluator.report(model={"name": "tiny"})


def test_curve_equals_a_hand_written_combination(curved):
    model, x, y, report = curved
    curve = report["curve"]
    validate_report(report)
    assert curve["eps"] == curve_grid(EPS, 11) and curve["fixed_attacks"] == ["pgd-20"]
    norms = FMN(model, eps=max(EPS), steps=30, seed=1).perturb(x, y).details["min_norm"]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    broken_at = torch.full((len(x),), float("inf"), dtype=torch.float64)
    for eps in sorted(EPS, reverse=True):  # the evaluator's PGD-20: the survey's step, random start
        alpha = {2 / 255: 0.5 / 255, 6 / 255: 6 / 255 / 4}[eps]
        x_adv = PGD(model, eps=eps, steps=20, alpha=alpha, random_start=True, seed=1)(x, y)
        with torch.no_grad():
            broken_at[correct & (model(x_adv).argmax(1) != y)] = eps
    for eps, alone, combined in zip(curve["eps"], curve["robust_accuracy"], curve["combined_robust_accuracy"]):
        robust = correct & (norms > eps)
        assert alone == pytest.approx(float(robust.float().mean()))
        assert combined == pytest.approx(float((robust & (broken_at > eps)).float().mean()))
        assert combined <= alone
    # non-increasing in eps, and at the suite's budgets never above the suite's own robust accuracy
    assert all(a >= b for a, b in zip(curve["robust_accuracy"], curve["robust_accuracy"][1:]))
    rows = {r["eps"]: r["metrics"]["accuracy"] for r in report["results"]}
    for eps in EPS:
        assert curve["combined_robust_accuracy"][curve["eps"].index(eps)] <= rows[eps] + 1e-12
    # the largest budget of the grid, twice the largest evaluated, leaves (nearly) nothing
    assert curve["robust_accuracy"][-1] <= curve["robust_accuracy"][0]


def test_curve_in_the_markdown_and_the_figure(curved, tmp_path):
    report = curved[3]
    table = curve_table(report)
    assert "combined with pgd-20" in table and table.count("\n|") >= len(report["curve"]["eps"]) + 1
    paths = write_reports({"tiny": report}, tmp_path)
    assert "combined with pgd-20" in paths["markdown"].read_text()
    assert plot_min_norm_curve(report, tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="has no `curve`"):
        plot_min_norm_curve({"results": []}, tmp_path / "none.png")


def test_bad_min_norm_attack_and_tasks(trained_bars):
    model, x, y = trained_bars
    loader = _loader(x[:4], y[:4])
    with pytest.raises(ValueError, match="min_norm_attack` must be an attack that reports"):
        RobustnessEvaluator("cpu", loader, model, ["fgsm"], EPS, min_norm_attack="pgd")
    with pytest.raises(ValueError, match="curve_points"):
        RobustnessEvaluator("cpu", loader, model, ["fgsm"], EPS, min_norm_attack="fmn", curve_points=1)
    segmenter = TinySegmenter(2, 1, 2).eval()
    seg = _loader(torch.rand(2, 1, 8, 8), torch.randint(0, 2, (2, 1, 8, 8)))
    evaluator = RobustnessEvaluator("cpu", seg, segmenter, ["fgsm"], EPS, min_norm_attack="fmn", check=False)
    with pytest.raises(ValueError, match="draws the curve of classification models"):
        evaluator.run()
