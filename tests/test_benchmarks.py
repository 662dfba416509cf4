# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The benchmark scripts run in their tiny mode (timings are measured there, never asserted here)."""

import json

import pytest


def test_autoattack_reference_benchmark_tiny(tmp_path):
    pytest.importorskip("torchattacks")
    from benchmarks.autoattack_reference import main

    out = tmp_path / "aa.json"
    payload = main(["--tiny", "--out", str(out)])
    saved = json.loads(out.read_text())
    names = {"monai_adv.AutoAttack", "torchattacks.AutoAttack", "monai_adv.AutoAttack fast"}
    assert saved["results"].keys() == payload["results"].keys() == names
    assert 0 <= saved["fast_misses"] <= 16
    for row in saved["results"].values():
        assert 0.0 <= row["robust_accuracy"] <= 1.0 and row["seconds"] > 0


def test_demo_data_difficulty_benchmark_tiny(tmp_path):
    from benchmarks.demo_data_difficulty import main

    out = tmp_path / "difficulty.json"
    results = main(["--tiny", "--tasks", "classification", "segmentation", "--out", str(out)])
    assert json.loads(out.read_text())["results"].keys() == results.keys() == {"classification", "segmentation"}
    for row in results.values():
        assert 0.0 <= row["value"] <= 1.0


@pytest.mark.slow  # trains nine defenses and runs AutoAttack on each: about 90 s on one core
def test_defense_evidence_tiny_and_resume(tmp_path):
    from benchmarks.defense_evidence import METHODS, main

    out = tmp_path / "evidence.json"
    results = main(["--tiny", "--out", str(out)])
    assert set(results) == set(METHODS)
    for row in results.values():
        assert {"clean_accuracy", "pgd20_2", "pgd20_8"} <= set(row)
    # a rerun finds every method done and trains nothing again
    again = main(["--tiny", "--out", str(out)])
    assert again == json.loads(out.read_text())["results"] == results


def test_performance_benchmark_tiny(tmp_path):
    pytest.importorskip("torchattacks")
    from benchmarks.run import main

    out = tmp_path / "run.json"
    payload = main(["--tiny", "--out", str(out), "--doc", str(tmp_path / "performance.md")])
    saved = json.loads(out.read_text())
    assert saved.keys() == payload.keys() >= {"overhead", "torchattacks", "training", "memory_3d", "optimizations"}
    assert all(row["ratio"] > 0 for row in saved["overhead"].values())
    for name, row in saved["torchattacks"].items():
        if not name.startswith("Square"):
            assert row["same_start_only_ours_robust"] == 0, f"{name}: a sample survives ours but not the reference"
    assert saved["memory_3d"]["sliding_window_pgd_step_checkpointed"]["peak_mb"] > 0
    optimizations = saved["optimizations"]
    assert optimizations["checkpointing"]["max_abs_difference"] == 0.0  # checkpointing changes no gradient
    for row in optimizations["early_exit"].values():  # early exit changes no outcome
        assert row["robust_accuracy_on"] == row["robust_accuracy_off"]
    for row in optimizations["forward_passes"].values():  # no forward pass beyond the minimum
        assert row["forward_passes"] == row["minimum"]
    assert not (tmp_path / "performance.md").exists(), "a tiny run does not overwrite the documented table"
    # the tables of a saved run are written again without measuring
    main(["--from-json", str(out), "--doc", str(tmp_path / "performance.md")])
    text = (tmp_path / "performance.md").read_text()
    assert text.startswith("# Performance") and "## Each optimization, with and without it" in text


def test_regenerating_the_performance_page_keeps_the_sections_other_scripts_wrote(tmp_path):
    from benchmarks.run import with_kept_sections

    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Overhead\n\nold table\n\n## Full-size networks\n\ncost table\n")
    text = with_kept_sections(doc, "# Performance\n\n## Overhead\n\nnew table\n")
    assert "new table" in text and "old table" not in text
    assert text.endswith("## Full-size networks\n\ncost table\n")
    assert with_kept_sections(tmp_path / "none.md", "x\n") == "x\n"


@pytest.mark.slow
def test_autoattack_fast_and_parity_benchmarks_tiny(tmp_path):
    from benchmarks import autoattack_fast, autoattack_parity

    fast = autoattack_fast.main(["--tiny", "--out", str(tmp_path / "fast.json")])
    assert len(fast["models"]) == 6
    for row in fast["models"].values():
        assert row["misses"] >= 0 and row["time_ratio"] > 0
    assert "## AutoAttack fast against standard" in autoattack_fast.markdown(fast)
    pytest.importorskip("pyautoattack")
    parity = autoattack_parity.main(["--tiny", "--out", str(tmp_path / "parity.json")])
    for row in parity["models"].values():
        assert set(row["components"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
        assert row["per_sample"]["missed"] >= 0
    assert "| model | L-inf eps |" in autoattack_parity.markdown(parity)


@pytest.mark.slow
def test_min_norm_curve_benchmark_tiny(tmp_path):
    from benchmarks import min_norm_curve

    payload = min_norm_curve.main(["--tiny", "--out", str(tmp_path / "curve.json")])
    for report in payload["models"].values():
        curve = report["curve"]
        assert len(curve["eps"]) == len(curve["robust_accuracy"]) == len(curve["combined_robust_accuracy"])


@pytest.mark.slow
def test_defended_models_and_threat_models_benchmarks_tiny(tmp_path):
    from benchmarks.defended_models import main as defended
    from benchmarks.threat_models import main as threats

    payload = defended(["--tiny", "--out", str(tmp_path / "defended.json")])
    assert {row["purifier"] for row in payload["purification"]} == {"bit depth 3", "median 3x3", "noise 0.05 + median"}
    assert {row["adaptive"] for row in payload["detection"]} == {True, False}
    payload = threats(["--tiny", "--out", str(tmp_path / "threats.json")])
    assert set(payload["models"]) == {"demo lesion, natural", "demo lesion, PGD-AT"}


def test_defense_evidence_overfitting_runs_tiny_and_refuses_other_settings(tmp_path):
    from benchmarks.defense_evidence import main

    out = tmp_path / "evidence.json"
    results = main(["--tiny", "--overfitting", "--optimizer", "sgd", "--out", str(out)])
    assert set(results) == {"fast_at@16", "n_fgsm@16"}
    for run in results.values():
        assert [row["epoch"] for row in run["epochs"]] == [1]
        row = run["epochs"][0]
        keys = ("train_adversarial_accuracy", "clean_accuracy", "fgsm_accuracy", "pgd20_accuracy")
        assert all(0 <= row[k] <= 1 for k in keys)
    with pytest.raises(SystemExit, match="optimizer='sgd', not 'adam'"):
        main(["--tiny", "--overfitting", "--out", str(out)])
