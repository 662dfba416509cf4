# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``monai-adv certify`` on the bundles with tiny draws: the report folder, its schema, and the flags' errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from monai_adv.apps.certify import bundle_demo_data
from monai_adv.benchmark.certification_report import validate_certification_report
from monai_adv.cli import main

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
DOCS = ROOT / "docs" / "certification.md"
CLASSIFICATION = BUNDLES / "brain_lesion_robust_classification"
SEGMENTATION = BUNDLES / "brain_lesion_robust_segmentation"
FILES = ("certification.json", "certification.csv", "certification.md", "certified_curves.png", "report.html")


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size[0] > 0 and im.size[1] > 0


def test_certify_the_classification_bundle(tmp_path, capsys):
    out = tmp_path / "cert"
    args = ["certify", "--bundle", str(CLASSIFICATION), "--sigma", "0.25", "--n0", "10", "--n", "100"]
    assert main(args + ["--samples", "4", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "only the outputs, no temporary files"
    report = json.loads((out / "certification.json").read_text())
    validate_certification_report(report)
    assert report["task"] == "classification" and report["num_samples"] == 4 and report["n"] == 100
    assert report["data"]["name"] == "demo:classification (test split, 32^2)", "the bundle's own image size"
    assert report["radii"] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    accuracy = [p["certified_accuracy"] for p in report["curve"]]
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[0] > 0, accuracy
    # 100 unanimous draws at alpha 0.001: p_lower = 0.001 ** (1 / 100), the largest radius n = 100 can certify
    assert all(s["radius"] <= 0.25 * 1.6 for s in report["samples"]) and accuracy[-1] == 0.0
    rows = list(csv.DictReader((out / "certification.csv").open()))
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["radius"]) for r in rows] == [s["radius"] for s in report["samples"]]
    markdown = (out / "certification.md").read_text()
    assert "| radius | certified accuracy |" in markdown and "With probability at least 1 - alpha" in markdown
    assert markdown in capsys.readouterr().out
    _png(out / "certified_curves.png")
    with pytest.raises(jsonschema.ValidationError):
        validate_certification_report({**report, "schema_version": "2.0"})


def test_certify_from_inside_the_bundle_folder_names_it(tmp_path, monkeypatch):
    """The bundle README's command: ``--bundle .`` from the bundle folder; the report names the folder."""
    monkeypatch.chdir(CLASSIFICATION)
    out = tmp_path / "cert"
    args = ["certify", "--bundle", ".", "--n0", "5", "--n", "20", "--samples", "2", "--out", str(out)]
    assert main(args + ["--no-progress", "--device", "cpu"]) == 0
    report = json.loads((out / "certification.json").read_text())
    assert report["model"]["name"] == CLASSIFICATION.name


def test_certify_the_segmentation_bundle(tmp_path):
    out = tmp_path / "cert"
    args = ["certify", "--bundle", str(SEGMENTATION), "--n0", "5", "--n", "30", "--samples", "1"]
    assert main(args + ["--radii", "0,0.1", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((out / "certification.json").read_text())
    validate_certification_report(report)
    assert report["task"] == "segmentation" and report["correction"] == "holm" and report["num_samples"] == 1
    assert report["samples"][0]["voxels"] == 32**3
    zero = report["curve"][0]
    # 30 unanimous draws pass Holm's test over 32^3 voxels at radius 0 (0.5^30 < 0.001 / 32768)
    assert zero["radius"] == 0.0 and zero["certified_fraction"] > 0.5
    assert report["curve"][1]["certified_fraction"] <= zero["certified_fraction"]
    header = (out / "certification.csv").read_text().splitlines()[0]
    assert header.startswith("index,voxels,smoothed_dice,certified_fraction@0,certified_fraction@0.1,")
    assert "| radius | certified Dice | certified voxels |" in (out / "certification.md").read_text()
    _png(out / "certified_curves.png")


EARLY_ERRORS = [
    (["--sigma", "0"], "--sigma: expected the noise standard deviation, a finite number > 0, got 0"),
    (["--sigma", "-0.5"], "--sigma"),
    (["--sigma", "nan"], "--sigma"),
    (["--n0", "0"], "--n0: expected a number of noise draws >= 1, got 0"),
    (["--n", "0"], "--n: expected a number of noise draws >= 1"),
    (["--n0", "200", "--n", "100"], "--n0: the selection draws (200) must not exceed the estimation draws --n (100)"),
    (["--alpha", "0"], "--alpha: expected an error level in (0, 1)"),
    (["--alpha", "1.5"], "--alpha"),
    (["--radii", "0,x"], "--radii: expected L2 radii (input units) such as '0,0.25,0.5'"),
    (["--radii", "0,-1"], "--radii: radii must be finite numbers >= 0, got -1"),
    (["--radii", "inf"], "--radii: radii must be finite numbers >= 0"),
    (["--radii", ","], "--radii: give at least one radius"),
    (["--samples", "0"], "--samples: expected a number >= 1, got 0"),
    (["--num-samples", "0"], "--samples: expected a number >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: expected a number >= 1"),
    (["--out", "FILE"], "is an existing file, not a folder"),
    (["--data", "scans"], "--data: expected one of"),
    (["--data", "csv:m.csv"], "CSV manifest not found"),
    (["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("args, message", EARLY_ERRORS, ids=[" ".join(a) for a, _ in EARLY_ERRORS])
def test_flag_errors_come_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    args = ["file" if a == "FILE" else a for a in args]
    assert main(["certify", "--bundle", str(CLASSIFICATION)] + args + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("monai-adv: error:") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing may be written before the check"


MODEL_ERRORS = [
    ([], "give --bundle DIR, or --checkpoint FILE with --network SPEC"),
    (["--bundle", "nowhere"], "bundle folder not found: nowhere"),
    (["--checkpoint", "nowhere.pt", "--network", "demo"], "checkpoint not found: nowhere.pt"),
]


@pytest.mark.parametrize("args, message", MODEL_ERRORS, ids=[" ".join(a) or "none" for a, _ in MODEL_ERRORS])
def test_model_errors_come_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["certify"] + args + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("monai-adv: error:") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_flag_errors_do_not_import_torch():
    code = (
        "import sys\nfrom monai_adv.cli import main\n"
        "assert main(['certify', '--checkpoint', 'x.pt', '--network', 'demo', '--sigma', '0']) == 1\n"
        "assert main(['certify', '--checkpoint', 'nowhere.pt', '--network', 'demo']) == 1\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--sigma" in proc.stderr and "checkpoint not found" in proc.stderr


def test_a_3d_network_on_2d_data_is_a_one_line_error(tmp_path, capsys):
    """Without --data and without bundle metadata, the default demo data is 2D: refused before certifying."""
    import torch
    from monai.networks.nets import UNet

    torch.save(UNet(3, 1, 2, channels=(4, 8), strides=(2,)).state_dict(), tmp_path / "unet.pt")
    network = '{"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, '
    network += '"channels": [4, 8], "strides": [2]}'
    args = ["certify", "--checkpoint", str(tmp_path / "unet.pt"), "--network", network, "--samples", "1"]
    assert main(args + ["--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "dimension mismatch" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_bundle_is_certified_on_its_own_test_split_by_default(tmp_path):
    data, name = bundle_demo_data(CLASSIFICATION, None)
    assert len(data) == 100 and name == "demo:classification (test split, 32^2)"  # eval_metrics#test_samples
    assert tuple(data[0]["image"].shape) == (1, 32, 32)
    assert len(bundle_demo_data(CLASSIFICATION, 3)[0]) == 3
    data, name = bundle_demo_data(SEGMENTATION, 2)
    assert name == "demo3d:segmentation (test split, 32^3)" and tuple(data[0]["label"].shape) == (1, 32, 32, 32)
    (tmp_path / "configs").mkdir()
    assert bundle_demo_data(tmp_path, None) is None  # no metadata: the command falls back to --data demo


def test_the_documented_bundle_config_certifies(tmp_path):
    """The override file of docs/certification.md ("In a MONAI workflow") runs with the bundle's train.json."""
    from monai.bundle import run

    section = DOCS.read_text().split("## In a MONAI workflow", 1)[1].split("\n## ", 1)[0]
    config = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    (tmp_path / "certify.json").write_text(json.dumps(config))
    files = [str(CLASSIFICATION / "configs" / "train.json"), str(tmp_path / "certify.json")]
    overrides = {"certification#n0": 10, "certification#n": 50, "num_val": 3}
    run(
        config_file=files,
        bundle_root=str(CLASSIFICATION),
        dataset_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"),
        **overrides,
    )
    report = json.loads((tmp_path / "out" / "certification.json").read_text())
    validate_certification_report(report)
    assert report["num_samples"] == 3 and report["n"] == 50 and report["sigma"] == 0.25


@pytest.mark.slow
def test_two_gloo_processes_write_the_single_process_report(tmp_path):
    # --num-draws: torchrun would take --n for an abbreviation of its own --nnodes, --nproc-per-node, ...
    args = ["certify", "--bundle", str(CLASSIFICATION), "--n0", "10", "--num-draws", "100", "--samples", "6"]
    args += ["--no-progress", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "single")]) == 0
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai_adv"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = launcher + args + ["--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / d / "certification.json").read_text()) for d in ("single", "ddp"))
    assert ddp["num_samples"] == 6 and [s["index"] for s in ddp["samples"]] == list(range(6))
    for key in ("created", "seconds", "provenance"):
        single.pop(key), ddp.pop(key)
    assert ddp == single
