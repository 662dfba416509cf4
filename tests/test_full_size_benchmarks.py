# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""benchmarks.full_size_cost and benchmarks.gpu_check run in their small modes on CPU, so that they cannot rot
where no GPU is (their timings are measured there, never asserted here)."""

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import full_size_cost, gpu_check
from benchmarks.full_size_networks import build_setup, fit_batch_norm, network_names, parse_name

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")


@needs_no_cuda
def test_gpu_check_without_cuda_exits_with_a_message_and_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.slow
@needs_no_cuda
def test_gpu_check_as_a_command_without_cuda_exits_cleanly(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "precisions",
    [
        pytest.param(["float32", "bfloat16"], id="float32-bfloat16"),
        pytest.param(list(gpu_check.PRECISIONS), id="all", marks=pytest.mark.slow),  # float16 is slow on CPU
    ],
)
def test_gpu_check_dry_run_on_cpu(tmp_path, precisions):
    """The whole check (float32 and autocast, scoring, summary, JSON) on small inputs."""
    out = tmp_path / "gpu.json"
    networks, attacks = ["resnet18-1ch", "unet3d"], ["fgsm", "apgd_t", "autoattack"]
    payload = gpu_check.main(
        ["--device", "cpu", "--dry-run", "--networks", *networks, "--attacks", *attacks, "--out", str(out)]
        + ["--precisions", *precisions]
    )
    saved = json.loads(out.read_text())
    assert saved["results"] == payload["results"] and not saved["failures"]
    cells = {(r["network"], r["attack"], r["precision"]): r for r in saved["results"]}
    expected = {
        (n, a, p)
        for n in networks
        for a in attacks
        for p in precisions
        if not (n == "unet3d" and a in gpu_check.NOT_FOR_SEGMENTATION)
    }
    assert set(cells) == expected
    for (_, _, precision), row in cells.items():
        assert row["seconds_per_image"] > 0 and row["peak_mb"] == row["peak_mb"]  # a number, not NaN
        for key in ("clean_accuracy", "robust_accuracy", "robust_accuracy_scored_float32"):
            assert 0.0 <= row[key] <= 1.0
        assert row["max_abs_perturbation"] <= 1 / 255 + 1e-6
        if precision == "float32":
            assert row["clean_accuracy"] == 1.0  # the labels are the float32 predictions
            assert row["robust_accuracy"] == row["robust_accuracy_scored_float32"]
    assert all(s["failed"] == 0 and s["skipped"] == 0 for s in saved["summary"].values())


def test_fitting_batch_norm_statistics_gives_logits_of_order_one():
    """Untrained, MONAI's EfficientNet-B0 gives logits near 1e-14 (float16 flushes them to zero)."""
    setup = build_setup("efficientnet_b0-1ch", size=32, images=2)
    with torch.no_grad():
        assert setup.model(setup.x).abs().max() < 1e-6
        fit_batch_norm(setup.model, setup.x)
        logits = setup.model(setup.x)
    assert not setup.network.training and logits.std() > 0.1


def test_network_names():
    assert len(network_names()) == 8
    assert parse_name("densenet121-3ch") == ("densenet121", 3) and parse_name("unet3d") == ("unet3d", None)
    with pytest.raises(ValueError, match="unknown network"):
        parse_name("mobilenet_v2-1ch")


def test_extrapolation_is_the_line_through_two_runs():
    total, per = full_size_cost._fit((1, 3.0), (5, 7.0), 100)  # 2 s fixed + 1 s per step
    assert per == pytest.approx(1.0) and total == pytest.approx(102.0)
    total, per = full_size_cost._fit((1, 3.0), (2, 2.5), 10)  # noise: the second run charged per step
    assert per == pytest.approx(1.25) and total == pytest.approx(12.5)


def test_cost_table_parts():
    """AutoAttack standard is its chain, each attack on every image for its whole budget."""
    chain = full_size_cost.parts("AutoAttack standard", segmentation=False)
    assert [(p.label, p.budget, p.full) for p in chain] == [
        ("apgd-ce", "steps", 100),
        ("apgd-t", "steps", 100),
        ("fab-t", "steps", 100),
        ("square", "queries", 5000),
    ]
    assert chain[1].kwargs["target_classes"] == chain[2].kwargs["target_classes"] == 9
    assert [p.label for p in full_size_cost.parts("AutoAttack standard", True)] == ["apgd-ce", "apgd-dice", "square"]
    for attack in full_size_cost.ATTACKS:
        for part in full_size_cost.parts(attack, False):
            assert part.kwargs.get("early_stop", False) is False


@pytest.mark.parametrize("network,attacks", [("resnet18-1ch", ["FGSM", "PGD-20"]), ("unet3d", ["AutoAttack standard"])])
def test_cost_table_tiny_in_process(tmp_path, network, attacks):
    out, doc = tmp_path / "cost.json", tmp_path / "performance.md"
    payload = full_size_cost.main(
        ["--tiny", "--in-process", "--networks", network, "--attacks", *attacks, "--out", str(out), "--doc", str(doc)]
    )
    saved = json.loads(out.read_text())
    assert saved["results"] == payload["results"] and len(saved["results"]) == len(attacks)
    for row in saved["results"]:
        assert row["seconds_per_image"] > 0 and row["images"] == 1
        assert row["extrapolated"] == (row["attack"] != "FGSM")  # --tiny: the shortest runs, extrapolated
        expected = [p.label for p in full_size_cost.parts(row["attack"], network == "unet3d")]
        assert [p["part"] for p in row["parts"]] == expected
        for part in row["parts"]:
            assert all(run["network_calls"] > 0 for run in part["runs"])
    assert not doc.exists(), "a tiny run writes no doc"


def test_cost_table_resume_measures_only_the_missing_cells(tmp_path):
    out = tmp_path / "cost.json"
    common = ["--tiny", "--in-process", "--networks", "efficientnet_b0-1ch", "--out", str(out)]
    first = full_size_cost.main(common + ["--attacks", "FGSM"])
    second = full_size_cost.main(common + ["--attacks", "FGSM", "PGD-20", "--resume"])
    assert [r["attack"] for r in second["results"]] == ["FGSM", "PGD-20"]
    assert second["results"][0] == first["results"][0]  # kept, not measured again
    assert second["command"].count("python -m benchmarks.full_size_cost") == 2
    with pytest.raises(SystemExit):  # other settings than the saved cells'
        full_size_cost.main(common + ["--attacks", "FGSM", "--resume", "--volumes", "2"])


def test_cost_table_doc_section_is_written_once_and_replaced(tmp_path):
    out, doc = tmp_path / "cost.json", tmp_path / "performance.md"
    row = {"network": "unet3d", "attack": "FGSM", "input": "1 x 1 x 96^3", "seconds": 1.5, "seconds_per_image": 1.5}
    row.update(extrapolated=False, peak_mb=100.0, memory_method="VmHWM (reset) - VmRSS at start")
    payload = {"command": "python -m benchmarks.full_size_cost", "machine": "test", "device": "cpu", "torch": "x"}
    payload.update(threads=1, load_average=[1.0, 1.0], cell_seconds=4.0, memory_method="m", results=[row])
    out.write_text(json.dumps(payload))
    doc.write_text("# Performance\n\nkept\n")
    full_size_cost.main(["--from-json", str(out), "--doc", str(doc)])  # appended
    text = doc.read_text()
    assert text.startswith("# Performance\n\nkept\n\n" + full_size_cost.SECTION + "\n")
    assert "| unet3d | 1 x 1 x 96^3 | 1.50 |" in text and "| unet3d | 100 |" in text
    doc.write_text(text.replace("| 1.50 |", "| old |") + "\n## Another section\n\nalso kept\n")
    full_size_cost.main(["--from-json", str(out), "--doc", str(doc)])  # replaced in place
    again = doc.read_text()
    assert again.count(full_size_cost.SECTION) == 1 and "| old |" not in again
    assert again == text + "\n## Another section\n\nalso kept\n"


@pytest.mark.slow
def test_cost_cell_in_a_fresh_process_measures_peak_memory(tmp_path):
    out = tmp_path / "cost.json"
    payload = full_size_cost.main(["--tiny", "--networks", "resnet18-1ch", "--attacks", "FGSM", "--out", str(out)])
    (row,) = payload["results"]
    assert "error" not in row, row
    assert row["peak_mb"] > 0 and row["memory_method"].startswith("VmHWM")
