# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The evaluator's threat models beyond the per-image eps-ball: fitted universal perturbations, patches and natural
corruptions, checked against hand-written loops; resume, report schema, tables and figures."""

import pytest
import torch

from monai_adv.attacks import UniversalPerturbation, apply_perturbation
from monai_adv.benchmark.report import csv_table, threat_tables, validate_report
from monai_adv.engines import RobustnessEvaluator
from monai_adv.transforms.corruptions import corrupt
from tests.models import bars_dataset

EPS = [8 / 255, 24 / 255]


def _batches(x, y, size=16):
    return [{"image": x[i : i + size], "label": y[i : i + size]} for i in range(0, x.shape[0], size)]


@pytest.fixture(scope="module")
def data():
    x_test, y_test = bars_dataset(48, seed=11)
    x_fit, y_fit = bars_dataset(64, seed=12)
    return _batches(x_test, y_test), _batches(x_fit, y_fit), x_test, y_test


def _evaluator(model, loader, fit, **kwargs):
    settings = {"eps": EPS, "fit_data_loader": fit, "check": False}
    settings.update(kwargs)
    return RobustnessEvaluator("cpu", loader, model, **settings)


def test_corruption_cells_equal_a_hand_written_loop(trained_bars, data):
    model = trained_bars[0]
    loader, fit, x, y = data
    evaluator = _evaluator(model, loader, fit, attacks=["fgsm"], corruptions="gaussian_noise,gaussian_blur")
    evaluator.run()
    report = evaluator.report()
    validate_report(report)
    section = report["corruptions"]
    assert section["severities"] == [1, 2, 3, 4, 5] and len(section["results"]) == 10
    accuracies = []
    for row in section["results"]:
        # the same images, corrupted batch by batch exactly as the evaluator does (seed 0, range [0, 1])
        corrupted = torch.cat([corrupt(b["image"], row["corruption"], row["severity"], 0, (0.0, 1.0)) for b in loader])
        with torch.no_grad():
            expected = int((model(corrupted).argmax(1) == y).sum()) / len(y)
        assert row["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-12), row
        accuracies.append(expected)
        assert row["parameters"] and row["samples"] == 48
    assert section["mean"]["accuracy"] == pytest.approx(sum(accuracies) / len(accuracies))
    assert evaluator.state.metrics["corruption/mean_accuracy"] == pytest.approx(section["mean"]["accuracy"])
    assert evaluator.state.metrics["gaussian_blur@s5/accuracy"] == pytest.approx(accuracies[-1])
    # seeded by content: a second evaluation with other batches gives the same numbers
    again = _evaluator(model, _batches(x, y, 5), fit, attacks=["fgsm"], corruptions="gaussian_noise,gaussian_blur")
    again.run()
    assert [r["metrics"] for r in again.report()["corruptions"]["results"]] == [
        r["metrics"] for r in section["results"]
    ]
    table = threat_tables(report)
    assert "natural corruptions" in table and "| gaussian_blur | 1.000 |" in table
    assert "corruption/gaussian_noise,3,s3,accuracy" in csv_table(report)


def test_universal_cells_equal_the_fitted_perturbation_applied_by_hand(trained_bars, data):
    model = trained_bars[0]
    loader, fit, x, y = data
    uap = {"attack": "uap", "epochs": 3}
    evaluator = _evaluator(model, loader, fit, attacks=["pgd-20", uap])
    evaluator.run()
    report = evaluator.report()
    validate_report(report)
    fitted = evaluator.fitted
    assert sorted(fitted) == [("uap", e) for e in EPS]
    for eps in EPS:
        # the evaluator fitted on the fit data, as a stand-alone attack does
        alone = UniversalPerturbation(model, eps=eps, epochs=3).fit(fit)
        assert torch.equal(alone, fitted[("uap", eps)])
        with torch.no_grad():
            clean_pred = model(x).argmax(1)
            pred = model(apply_perturbation(x, alone, None, (0.0, 1.0))).argmax(1)
        row = next(r for r in report["results"] if r["attack"] == "uap" and r["eps"] == eps)
        assert row["threat_model"] == "universal"
        assert row["metrics"]["accuracy"] == pytest.approx(int((pred == y).sum()) / len(y))
        assert row["fooling_rate"] == pytest.approx(int((pred != clean_pred).sum()) / len(y))
        assert row["linf_max"] <= eps + 1e-7
    assert [e["attack"] for e in report["fitted"]] == ["uap", "uap"] and report["fitted"][0]["samples"] == 64
    assert {r["threat_model"] for r in report["results"]} == {"per-image", "universal", "worst-case"}
    worst = [r for r in report["results"] if r["attack"] == "worst-case"]
    for row in worst:  # the worst case covers the universal perturbation too (it lies in the same ball)
        uap_row = next(r for r in report["results"] if r["attack"] == "uap" and r["eps"] == row["eps"])
        assert row["metrics"]["accuracy"] <= uap_row["metrics"]["accuracy"]
    assert "universal perturbations" in threat_tables(report)
    assert not any("fitted on the evaluation data" in n for n in report["notes"])


def test_fitting_on_the_evaluation_data_is_said(trained_bars, data):
    loader, _, _, _ = data
    evaluator = _evaluator(trained_bars[0], loader, None, attacks=[{"attack": "uap", "epochs": 1}], eps=[8 / 255])
    evaluator.run()
    report = evaluator.report()
    assert any("fitted on the evaluation data itself" in note for note in report["notes"])
    assert report["fitted"][0]["data"] == "evaluation data"


def test_a_resumed_run_applies_the_stored_fit(trained_bars, data, tmp_path):
    from monai.data import DataLoader, Dataset

    model = trained_bars[0]
    _, fit, x, y = data
    loader = DataLoader(Dataset([{"image": x[i], "label": y[i]} for i in range(len(y))]), batch_size=16)
    suite = [{"attack": "uap", "epochs": 2}]
    first = _evaluator(model, loader, fit, attacks=suite, progress_dir=tmp_path, corruptions=["contrast"])
    first.run()
    stored = (tmp_path / "fitted.pt").is_file()
    # a second run with the same settings and other fit data: the stored tensors are applied, nothing refitted
    shuffled = [{"image": b["image"].flip(0), "label": b["label"].flip(0)} for b in fit]
    second = _evaluator(model, loader, shuffled, attacks=suite, progress_dir=tmp_path, corruptions=["contrast"])
    second.run()
    assert stored and all(torch.equal(first.fitted[k], second.fitted[k]) for k in first.fitted)
    strip = ("created", "seconds", "fitted", "provenance")

    def comparable(report):
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in report["results"]]
        return {**{k: v for k, v in report.items() if k not in strip + ("results", "corruptions")}, "results": rows}

    assert comparable(first.report()) == comparable(second.report())


def test_bad_threat_model_arguments_are_refused(trained_bars, data):
    loader, fit, _, _ = data
    model = trained_bars[0]
    with pytest.raises(ValueError, match="`corruptions`"):
        _evaluator(model, loader, fit, attacks=["fgsm"], corruptions=["fog"])
    with pytest.raises(ValueError, match="`corruption_severities`"):
        _evaluator(model, loader, fit, attacks=["fgsm"], corruptions="all", corruption_severities=[0, 6])
    with pytest.raises(TypeError, match="`fit_data_loader`"):
        _evaluator(model, loader, 3, attacks=["uap"])


def test_patch_cells_per_size_equal_the_attacks_applied_by_hand(trained_bars, data):
    model = trained_bars[0]
    loader, fit, x, y = data
    suite = ["fgsm", {"attack": "patch", "epochs": 2}, {"attack": "image_patch", "steps": 5}]
    evaluator = _evaluator(model, loader, fit, attacks=suite, patch_sizes=[0.05, 4])
    evaluator.run()
    report = evaluator.report()
    validate_report(report)
    assert [(r["attack"], r["size_label"]) for r in report["patches"]] == [
        ("patch", "5%"),
        ("image_patch", "5%"),
        ("patch", "4 px"),
        ("image_patch", "4 px"),
    ]
    assert sorted(evaluator.fitted) == [("patch", 0.05), ("patch", 4)]
    for row in report["patches"]:
        attack = evaluator.attack(row["attack"], row["size"])
        with torch.no_grad():
            patched = torch.cat([attack(b["image"], b["label"]) for b in loader])
            expected = int((model(patched).argmax(1) == y).sum()) / len(y)
        assert row["metrics"]["accuracy"] == pytest.approx(expected), row
    assert evaluator.state.metrics["patch@5%/accuracy"] == report["patches"][0]["metrics"]["accuracy"]
    assert "under patches" in threat_tables(report)
    assert {r["attack"] for r in report["results"]} == {"fgsm"}  # patches are not eps-ball rows
    assert evaluator.total_attack_runs == len(EPS) + 2 * 2


def test_command_line_writes_every_family_with_its_figures(tmp_path, capsys):
    from pathlib import Path

    from monai_adv.cli import main

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "brain_lesion_robust_classification"
    out = tmp_path / "report"
    args = ["evaluate", "--bundle", str(bundle), "--data", "demo", "--attacks", "pgd-20,uap,patch"]
    args += ["--corruptions", "all", "--eps", "4/255", "--patch-sizes", "0.05", "--samples", "8"]
    args += ["--fit-samples", "8", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    import json

    report = json.loads((out / "brain_lesion_robust_classification.json").read_text())
    validate_report(report)
    assert report["schema_version"] == "1.2" and report["clean"]["accuracy"] > 0.6  # demo images in the bundle's size
    assert {r["threat_model"] for r in report["results"]} == {"per-image", "universal", "worst-case"}
    assert [r["attack"] for r in report["patches"]] == ["patch"] and len(report["corruptions"]["results"]) == 45
    assert {entry["data"] for entry in report["fitted"]} == {"fit_data_loader"}
    for figure in ("universal_perturbations", "patches", "corruptions", "threat_models", "robustness_curves"):
        assert (out / f"{figure}.png").stat().st_size > 1000, figure
    markdown = (out / "robustness.md").read_text()
    for section in ("universal perturbations", "under patches", "natural corruptions"):
        assert section in markdown and section in printed
    bad = ["evaluate", "--bundle", str(bundle), "--data", "demo", "--corruptions", "fog", "--samples", "2"]
    assert main(bad + ["--out", str(tmp_path / "bad"), "--no-progress"]) == 1
    assert "`corruptions` has an unknown name 'fog'" in capsys.readouterr().err


def test_3d_segmentation_reports_dice_for_every_family():
    from tests.models import TinySegmenter

    torch.manual_seed(0)
    segmenter = TinySegmenter(3, 1, 2, width=4)
    x = torch.rand(6, 1, 12, 12, 12)
    labels = (x > 0.5).long()
    batches = [{"image": x[i : i + 3], "label": labels[i : i + 3]} for i in (0, 3)]
    suite = ["fgsm", {"attack": "uap", "epochs": 1}, {"attack": "patch", "epochs": 1}]
    evaluator = RobustnessEvaluator(
        "cpu",
        batches,
        segmenter,
        suite,
        [4 / 255],
        fit_data_loader=batches[:1],
        patch_sizes=[0.1],
        check=False,
        corruptions=["gaussian_blur", "low_resolution"],
        corruption_severities=[1, 5],
        task="segmentation",
    )
    evaluator.run()
    report = evaluator.report()
    validate_report(report)
    assert report["primary_metric"] == "dice" and evaluator.fitted[("uap", 4 / 255)].shape == (1, 12, 12, 12)
    assert evaluator.fitted[("patch", 0.1)].shape == (1, 6, 6, 6)  # round((0.1 * 12**3) ** (1/3)) = round(5.57)
    assert "dice" in report["patches"][0]["metrics"] and "dice" in report["corruptions"]["mean"]
    uap = next(r for r in report["results"] if r["attack"] == "uap")
    assert "fooling_rate" not in uap  # segmentation has no predicted class to change: Dice and success rate
    assert "dice" in threat_tables(report)


def test_each_run_fits_anew_and_unplaced_patches_are_said(trained_bars, data):
    import copy

    loader, fit, _, _ = data
    model = copy.deepcopy(trained_bars[0])
    evaluator = _evaluator(model, loader, fit, attacks=[{"attack": "uap", "epochs": 1}], eps=[8 / 255])
    evaluator.run()
    first = evaluator.fitted[("uap", 8 / 255)].clone()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-1.0)
    evaluator.run()  # the weights changed: the perturbation is fitted again, once
    assert not torch.equal(first, evaluator.fitted[("uap", 8 / 255)]) and len(evaluator.report()["fitted"]) == 1
    # a region of interest hugging the border leaves no admissible window centre for a 6-voxel patch
    roi = torch.zeros(16, 1, 16, 16)
    roi[..., 0, :] = 1
    masked = [{**b, "roi": roi[: len(b["label"])]} for b in loader]
    masked_fit = [{**b, "roi": roi[: len(b["label"])]} for b in fit]
    patched = _evaluator(
        trained_bars[0], masked, masked_fit, attacks=[{"attack": "patch", "epochs": 1}], patch_sizes=[6], mask_key="roi"
    )
    patched.run()
    report = patched.report()
    assert any("had no window whose centre lies inside the region of interest" in n for n in report["notes"])
    assert report["patches"][0]["metrics"]["accuracy"] == report["clean"]["accuracy"]
    with pytest.raises(ValueError, match="1.0 is the whole image"):
        _evaluator(model, loader, fit, attacks=["patch"], patch_sizes=[0.1, 1.0])
    with pytest.raises(ValueError, match="`corruption_severities`"):
        _evaluator(model, loader, fit, attacks=["fgsm"], corruptions="all", corruption_severities=[1.0])
