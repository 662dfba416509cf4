# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Smoke tests of the monai-adv subcommands with tiny settings, and their one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_adv.apps.demo import demo_network
from monai_adv.benchmark.report import validate_report
from monai_adv.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_NETWORK = '{"_target_": "monai_adv.apps.demo.demo_network"}'


def _valid_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        assert im.size[0] > 0 and im.size[1] > 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    args = ["demo", "--out", str(out), "--epochs", "1", "--train-samples", "64", "--test-samples", "16"]
    args += ["--attacks", "fgsm,pgd-20", "--eps", "2/255,8/255", "--no-progress"]
    assert main(args) == 0
    return out


def test_demo(demo_run, capsys):
    out = demo_run
    for name in ("nat.json", "pgd-at.json"):
        report = json.loads((out / name).read_text())
        validate_report(report)
        assert report["eps_labels"] == ["2/255", "8/255"]
        assert [r["attack"] for r in report["results"]][:3] == ["fgsm", "pgd-20", "worst-case"]
    assert "| PGD-AT | pgd-20 |" in (out / "robustness.md").read_text()
    assert (out / "robustness.csv").read_text().startswith("method,attack,eps")
    for png in (
        "robustness_curves.png",
        "adversarial_examples_nat.png",
        "adversarial_examples_pgd-at.png",
        "gradcam.png",
    ):
        _valid_png(out / png)
    page = (out / "report.html").read_text()  # both models, every figure embedded
    assert page.count('<img src="data:image/png;base64,') == 4 and "PGD-AT" in page and "NAT" in page
    assert (out / "models" / "nat.pt").is_file()
    state = torch.load(out / "models" / "pgd_at.pt", weights_only=True)
    demo_network().load_state_dict(state)


def test_evaluate_checkpoint_and_bundle(demo_run, tmp_path, capsys):
    ckpt = demo_run / "models" / "pgd_at.pt"
    out = tmp_path / "report"
    args = ["evaluate", "--checkpoint", str(ckpt), "--network", "demo", "--data", "demo", "--samples", "12"]
    assert main(args + ["--attacks", "fgsm", "--eps", "4/255", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "pgd_at.json").read_text())
    validate_report(report)
    assert report["num_samples"] == 12
    _valid_png(out / "robustness_curves.png")
    _valid_png(out / "adversarial_examples.png")
    page = (out / "report.html").read_text()
    assert "pgd_at" in page and page.count('<img src="data:image/png;base64,') == 2
    # the same model as a bundle
    bundle = tmp_path / "my_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": json.loads(DEMO_NETWORK)}))
    (bundle / "models" / "model.pt").write_bytes(ckpt.read_bytes())
    out2 = tmp_path / "report2"
    args = ["evaluate", "--bundle", str(bundle), "--data", "demo", "--samples", "12", "--attacks", "fgsm"]
    assert main(args + ["--eps", "4/255", "--out", str(out2), "--no-progress"]) == 0
    report2 = json.loads((out2 / "my_bundle.json").read_text())
    assert report2["results"][0]["metrics"] == report["results"][0]["metrics"]


def test_evaluate_nifti_segmentation(tmp_path):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        nib.save(
            nib.Nifti1Image(rng.random((16, 16)).astype(np.float32), np.eye(4)), tmp_path / f"data/images/c{i}.nii.gz"
        )
        lab = np.zeros((16, 16), np.uint8)
        lab[4:10, 5:12] = 1
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / f"data/labels/c{i}.nii.gz")
    network = json.dumps(
        {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 0,
        }
    )
    out = tmp_path / "out"
    args = ["evaluate", "--checkpoint", str(tmp_path / "unet.pt"), "--network", network]
    args += ["--data", f"nifti:{tmp_path / 'data'}", "--attacks", "fgsm,pgd", "--eps", "8/255", "--out", str(out)]
    assert main(args + ["--no-progress", "--task", "segmentation"]) == 0
    report = json.loads((out / "unet.json").read_text())
    assert report["task"] == "segmentation" and "dice" in report["results"][0]["metrics"]
    _valid_png(out / "adversarial_examples.png")


def test_attack_nifti_and_png(demo_run, tmp_path, capsys):
    ckpt = str(demo_run / "models" / "nat.pt")
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 7.0]
    image = (np.random.default_rng(0).random((32, 32)) * 1000).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    args = ["attack", "--checkpoint", ckpt, "--network", "demo", "--image", str(tmp_path / "scan.nii.gz")]
    assert main(args + ["--eps", "8/255", "--out", str(out)]) == 0
    adv = nib.load(out / "scan_adversarial.nii.gz")
    delta = nib.load(out / "scan_perturbation.nii.gz")
    np.testing.assert_allclose(adv.affine, affine, atol=1e-5)
    np.testing.assert_allclose(delta.affine, affine, atol=1e-5)
    d = np.asarray(delta.dataobj)
    assert d.shape == image.shape and np.abs(d).max() > 0
    assert np.abs(d).max() <= 8 / 255 * (image.max() - image.min()) * (1 + 1e-4)
    np.testing.assert_allclose(np.asarray(adv.dataobj), image + d, rtol=1e-5, atol=1e-2)
    _valid_png(out / "scan_preview.png")
    assert "prediction" in capsys.readouterr().out
    Image.fromarray((np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "slice.png")
    args = ["attack", "--checkpoint", ckpt, "--network", "demo", "--image", str(tmp_path / "slice.png")]
    assert main(args + ["--attack", "fgsm", "--label", "1", "--out", str(out)]) == 0
    assert (out / "slice_adversarial.nii.gz").is_file()
    _valid_png(out / "slice_preview.png")


def test_attack_dicom_series(demo_run, tmp_path):
    itk = pytest.importorskip("itk")
    series = tmp_path / "series"
    series.mkdir()
    pixels = (np.random.default_rng(1).random((32, 32)) * 1000).astype(np.int16)
    itk.imwrite(itk.image_from_array(pixels), str(series / "slice0.dcm"))
    args = ["attack", "--checkpoint", str(demo_run / "models" / "nat.pt"), "--network", "demo"]
    assert main(args + ["--image", str(series), "--attack", "fgsm", "--out", str(tmp_path / "out")]) == 0
    adv = nib.load(tmp_path / "out" / "series_adversarial.nii.gz")
    assert adv.shape[:2] == (32, 32)
    _valid_png(tmp_path / "out" / "series_preview.png")


def _kill_and_resume_args(out):
    return [
        sys.executable,
        "-m",
        "monai_adv",
        "benchmark",
        "--out",
        str(out),
        "--tasks",
        "classification,segmentation",
        "--methods",
        "nat,pgd_at",
        "--eps",
        "4/255,8/255",
        "--attacks",
        "fgsm,pgd-20",
        "--epochs",
        "1",
        "--train-samples",
        "48",
        "--test-samples",
        "12",
        "--no-progress",
    ]


def test_benchmark_killed_run_resumes_to_the_same_table(tmp_path):
    full = subprocess.run(_kill_and_resume_args(tmp_path / "full"), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    cells = tmp_path / "killed" / "cells"
    proc = subprocess.Popen(
        _kill_and_resume_args(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        import time

        deadline = time.time() + 300
        while time.time() < deadline and len(list(cells.rglob("*.json"))) < 3:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    finished = len(list(cells.rglob("*.json")))
    assert 3 <= finished < 8, "the run was not killed mid-way"
    resumed = subprocess.run(_kill_and_resume_args(tmp_path / "killed"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("cell ") == 8 - finished  # finished cells are skipped
    for task in ("classification", "segmentation"):
        a = (tmp_path / "full" / f"benchmark_{task}.md").read_text()
        b = (tmp_path / "killed" / f"benchmark_{task}.md").read_text()
        assert a == b
        assert "| pgd_at | 8/255 |" in a


@pytest.mark.parametrize(
    "args, message",
    [
        (["attack", "--checkpoint", "missing.pt", "--network", "demo", "--image", "x.nii.gz"], "checkpoint not found"),
        (["evaluate", "--bundle", "no_such_bundle"], "bundle folder not found"),
        (["evaluate", "--bundle", "."], "not a MONAI bundle"),
        (["evaluate", "--checkpoint", "CKPT", "--network", "demo", "--attacks", "nope"], "Unknown attack 'nope'"),
        (["evaluate", "--checkpoint", "CKPT", "--network", "{bad json"], "--network"),
        (["evaluate", "--checkpoint", "CKPT", "--network", "demo", "--eps", "a/b"], "--eps"),
        (["evaluate", "--checkpoint", "CKPT", "--network", "demo", "--data", "csv:none.csv"], "manifest not found"),
        (["evaluate", "--checkpoint", "CKPT", "--network", "demo", "--data", "mnist"], "--data"),
        (["attack", "--checkpoint", "CKPT", "--network", "demo", "--image", "RGB"], "channel mismatch"),
        (["attack", "--checkpoint", "CKPT", "--network", "demo", "--image", "missing.png"], "image not found"),
        (
            ["attack", "--checkpoint", "CKPT", "--network", "demo", "--image", "RGB", "--attack", "zap"],
            "Unknown attack",
        ),
        (["evaluate", "--checkpoint", "UNET", "--network", "demo"], "do not fit the network"),
    ],
)
def test_bad_input_one_line(demo_run, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb)
    torch.save({"w": torch.zeros(1)}, tmp_path / "unet.pt")
    subst = {"CKPT": str(demo_run / "models" / "nat.pt"), "RGB": str(rgb), "UNET": str(tmp_path / "unet.pt")}
    args = [subst.get(a, a) for a in args]
    assert main(args + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("monai-adv: error:") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "monai_adv", "--debug", "evaluate", "--bundle", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "bundle folder not found" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "monai_adv", "evaluate", "--bundle", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


EARLY_ERRORS = [
    (["evaluate", "--samples", "0"], "--samples: expected a number >= 1, got 0"),
    (["evaluate", "--batch-size", "0"], "--batch-size"),
    (["benchmark", "--test-samples", "0"], "--test-samples: expected a number >= 1"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["evaluate", "--eps", "1/255,0.0039215687"], "two budgets shown as '1/255'"),
    (["benchmark", "--eps", "0.1,0.1"], "two budgets shown as '0.1'"),
    (["evaluate", "--eps", "1e308"], "larger than the whole intensity range"),
    (["evaluate", "--eps", "1e999"], "finite numbers >= 0"),
    (["evaluate", "--eps", "nan"], "finite numbers >= 0"),
    (["evaluate", "--value-range", "1,0"], "--value-range"),
    (["evaluate", "--patch-sizes", "0.05,0"], "--patch-sizes: 0 is neither"),
    (["evaluate", "--patch-sizes", "1.5"], "--patch-sizes: 1.5 is neither"),
    (["evaluate", "--patch-sizes", "big"], "--patch-sizes: expected"),
    (["evaluate", "--fit-samples", "0"], "--fit-samples"),
    (["evaluate", "--purifier", "median:5"], "--purifier: expected key=value settings"),
    (["evaluate", "--detector", "9x"], "--detector: expected NAME"),
    (["evaluate", "--out", "FILE"], "is an existing file, not a folder"),
]


@pytest.mark.parametrize("args, message", EARLY_ERRORS, ids=[" ".join(a) for a, _ in EARLY_ERRORS])
def test_argument_errors_come_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    args = ["file" if a == "FILE" else a for a in args]
    assert main(args + ["--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("monai-adv: error:") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing may be written before the check"


def test_argument_errors_do_not_import_torch():
    code = (
        "import sys\nfrom monai_adv.cli import main\n"
        "assert main(['evaluate', '--samples', '0']) == 1\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_benchmark_rejects_an_unknown_attack_before_training(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["benchmark", "--out", str(out), "--attacks", "nope", "--no-progress"]) == 1
    assert "Unknown attack 'nope'" in capsys.readouterr().err
    assert not (out / "models").exists()


def test_listing_into_a_closed_pipe_is_quiet():
    proc = subprocess.run(
        f"{sys.executable} -m monai_adv attacks | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("monai_adv") and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_nan_weights_are_a_one_line_error_not_a_score(demo_run, tmp_path, capsys):
    state = torch.load(demo_run / "models" / "nat.pt", weights_only=True)
    state = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "nan.pt")
    args = ["evaluate", "--checkpoint", str(tmp_path / "nan.pt"), "--network", "demo", "--attacks", "fgsm"]
    assert main(args + ["--eps", "8/255", "--samples", "4", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "NaN or Inf logits" in err and err.count("\n") == 1, err  # ignite's own error lines stay out
    assert not (tmp_path / "r" / "nat.json").exists()


def test_evaluate_refuses_data_of_another_dimension(demo_run, tmp_path, capsys):
    args = ["evaluate", "--checkpoint", str(demo_run / "models" / "nat.pt"), "--network", "demo"]
    assert main(args + ["--data", "demo3d", "--samples", "2", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "dimension mismatch" in err and "network takes 2D images" in err, err


def _tiny_grid(out, **changes):
    from monai_adv.benchmark.grid import GridConfig

    settings = {
        "out": out,
        "tasks": ["classification"],
        "methods": ["nat"],
        "eps": [8 / 255],
        "attacks": ["fgsm"],
        "epochs": 1,
        "train_samples": 16,
        "test_samples": 4,
        "progress": False,
        **changes,
    }
    return GridConfig(**settings)


def test_benchmark_resume_refuses_results_made_with_other_settings(tmp_path):
    from monai_adv.benchmark.grid import run_grid

    out = tmp_path / "grid"
    run_grid(_tiny_grid(out), log=lambda _: None)
    table = (out / "benchmark_classification.md").read_text()
    assert 'id="results"' in (out / "report.html").read_text()
    with pytest.raises(ValueError, match=r"other settings \(.*attacks: stored \['fgsm'\].*seed: stored 0, now 7"):
        run_grid(_tiny_grid(out, attacks=["pgd-20"], test_samples=8, seed=7), log=lambda _: None)
    assert (out / "benchmark_classification.md").read_text() == table
    # more budgets or methods with the same settings resume into the same folder
    logged = []
    run_grid(_tiny_grid(out, eps=[4 / 255, 8 / 255]), log=logged.append)
    assert sum(line.startswith("cell ") for line in logged) == 1


def test_benchmark_names_a_corrupt_resume_file_and_removes_stale_temporaries(tmp_path):
    from monai_adv.benchmark.grid import run_grid

    out = tmp_path / "grid"
    run_grid(_tiny_grid(out), log=lambda _: None)
    (cell,) = (out / "cells").rglob("*.json")
    stale = cell.parent / ".nat@8.json.abc.tmp"
    stale.write_text("{")
    cell.write_text(cell.read_text()[:40])  # truncated
    with pytest.raises(ValueError, match=f"{cell.name} is corrupt"):
        run_grid(_tiny_grid(out), log=lambda _: None)
    assert not stale.exists()
    cell.unlink()
    (model,) = (out / "models").rglob("*.pt")
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{model.name} is not a readable model"):
        run_grid(_tiny_grid(out), log=lambda _: None)


def test_attack_on_a_full_disk_keeps_the_earlier_outputs(demo_run, tmp_path, capsys, monkeypatch):
    import errno

    import monai_adv.apps.attack_image as attack_image

    ckpt = str(demo_run / "models" / "nat.pt")
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((32, 32)).astype(np.float32), np.eye(4)), tmp_path / "s.nii"
    )
    out = tmp_path / "out"
    args = ["attack", "--checkpoint", ckpt, "--network", "demo", "--image", str(tmp_path / "s.nii"), "--out", str(out)]
    assert main(args + ["--attack", "fgsm"]) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    real = attack_image.SaveImage

    class FullDisk(real):  # writes the first volume, then the disk fills up mid-way through the second
        calls = 0

        def __call__(self, img, meta_data=None, **kwargs):
            FullDisk.calls += 1
            if FullDisk.calls == 2:
                (Path(self.folder_layout.output_dir) / "s_perturbation.nii.gz").write_bytes(b"\x1f\x8b")
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().__call__(img, meta_data=meta_data, **kwargs)

    monkeypatch.setattr(attack_image, "SaveImage", FullDisk)
    assert main(args + ["--attack", "pgd-20", "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and str(out) in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good  # nothing replaced, no temporary left


def test_attack_refuses_a_one_pixel_image_before_attacking(demo_run, tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.zeros((1, 1), np.float32), np.eye(4)), tmp_path / "dot.nii")
    args = ["attack", "--checkpoint", str(demo_run / "models" / "nat.pt"), "--network", "demo"]
    assert main(args + ["--image", str(tmp_path / "dot.nii"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "too small" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


MODEL_AND_DATA_ERRORS = [
    (["evaluate"], "give --bundle DIR, or --checkpoint FILE with --network SPEC"),
    (["evaluate", "--bundle", "nowhere"], "bundle folder not found: nowhere"),
    (["evaluate", "--checkpoint", "nowhere.pt", "--network", "demo"], "checkpoint not found: nowhere.pt"),
    (["evaluate", "--checkpoint", "FILE", "--network", "net.json"], "--network: file not found: net.json"),
    (["evaluate", "--checkpoint", "FILE", "--network", "demo", "--surrogate-network", "demo"], "needs both"),
    (["evaluate", "--checkpoint", "FILE", "--network", "demo", "--data", "scans"], "--data: expected one of"),
    (["evaluate", "--checkpoint", "FILE", "--network", "demo", "--data", "csv:m.csv"], "CSV manifest not found"),
    (["evaluate", "--checkpoint", "FILE", "--network", "demo", "--data", "nifti:cases"], "no folder cases/images"),
    (["evaluate", "--checkpoint", "FILE", "--network", "demo", "--attacks", ","], "give at least one attack"),
    (["benchmark", "--data", "csv:m.csv"], "--data: expected one of demo:, medmnist:"),
    (["benchmark", "--tasks", "detection"], "--tasks: expected classification and/or segmentation"),
    (["attack", "--image", "FILE"], "give --bundle DIR, or --checkpoint FILE"),
]


@pytest.mark.parametrize("args, message", MODEL_AND_DATA_ERRORS, ids=[" ".join(a) for a, _ in MODEL_AND_DATA_ERRORS])
def test_model_and_data_errors_come_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    test_argument_errors_come_before_any_work(tmp_path, capsys, monkeypatch, args, message)


def test_model_errors_do_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom monai_adv.cli import main\n"
        f"assert main(['evaluate', '--checkpoint', {str(tmp_path / 'no.pt')!r}, '--network', 'demo']) == 1\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "checkpoint not found" in proc.stderr, proc.stderr


def test_a_full_disk_is_one_line_naming_the_file(monkeypatch, capsys):
    import errno

    import monai_adv.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/report.json")

    monkeypatch.setattr(cli, "_attacks", full)  # the parser takes the handler at build time
    assert main(["attacks"]) == 1
    err = capsys.readouterr().err
    assert err == "monai-adv: error: No space left on device: out/report.json\n", err


def test_attack_on_a_header_with_huge_dimensions_is_a_clear_error(demo_run, tmp_path, capsys):
    import struct

    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), tmp_path / "huge.nii")
    header = bytearray((tmp_path / "huge.nii").read_bytes())
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dims of a 27-billion-voxel volume
    (tmp_path / "huge.nii").write_bytes(bytes(header[:400]))
    args = ["attack", "--checkpoint", str(demo_run / "models" / "nat.pt"), "--network", "demo"]
    assert main(args + ["--image", str(tmp_path / "huge.nii"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "huge.nii" in err and err.count("\n") == 1 and "IndexError" not in err, err


def test_attack_shares_the_dimension_check(demo_run, tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "vol.nii")
    args = ["attack", "--checkpoint", str(demo_run / "models" / "nat.pt"), "--network", "demo"]
    assert main(args + ["--image", str(tmp_path / "vol.nii"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "dimension mismatch: --image" in err and "network takes 2D images" in err, err


def test_run_evaluate_refuses_zero_samples_before_loading(tmp_path):
    from monai_adv.apps.evaluate import run_evaluate
    from monai_adv.apps.sources import CommandError

    with pytest.raises(CommandError, match="--samples: expected a number >= 1, got 0"):
        run_evaluate("demo", ["fgsm"], [8 / 255], tmp_path / "r", network="demo", checkpoint=tmp_path, samples=0)


def test_benchmark_settings_record_the_batch_size(tmp_path):
    from monai_adv.benchmark.grid import run_grid

    out = tmp_path / "grid"
    run_grid(_tiny_grid(out), log=lambda _: None)
    with pytest.raises(ValueError, match="batch_size: stored 100, now 2"):
        run_grid(_tiny_grid(out, batch_size=2), log=lambda _: None)


def test_randomized_purifier_results_do_not_depend_on_the_batches(tmp_path):
    """A seeded randomized purifier draws each sample's noise from its own history within its batch: the same
    report with other batch sizes (and so in a resumed run or on other ranks)."""

    def comparable(value):  # without when and how fast it ran
        if isinstance(value, dict):
            return {k: comparable(v) for k, v in value.items() if k not in ("created", "provenance", "seconds")}
        return [comparable(v) for v in value] if isinstance(value, list) else value

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "brain_lesion_robust_classification"
    common = ["evaluate", "--bundle", str(bundle), "--data", "demo", "--attacks", "fgsm", "--eps", "8/255"]
    common += ["--samples", "8", "--no-progress", "--device", "cpu", "--purifier", "noise:sigma=0.05"]
    reports = []
    for batch in (8, 3, 3):  # the last: a rerun that finds the non-adaptive run done and redoes the adaptive one
        out = tmp_path / str(batch)
        if out.exists():
            shutil.rmtree(out / "progress")
        assert main(common + ["--batch-size", str(batch), "--out", str(out)]) == 0
        reports.append(comparable(json.loads((out / "brain_lesion_robust_classification.json").read_text())))
    assert reports[0] == reports[1] == reports[2]


def test_evaluate_a_purified_model_and_a_detector(tmp_path, capsys):
    """The defended model is scored by the non-adaptive and the adaptive attack (the rows to quote), the detector
    by 'classify or reject' under both; the sections validate against the schema."""
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "brain_lesion_robust_classification"
    common = ["evaluate", "--bundle", str(bundle), "--data", "demo", "--attacks", "pgd-20", "--eps", "8/255"]
    common += ["--samples", "12", "--no-progress", "--device", "cpu"]
    assert main(common + ["--purifier", "bit_depth:bits=3", "--out", str(tmp_path / "pur")]) == 0
    report = json.loads((tmp_path / "pur" / "brain_lesion_robust_classification.json").read_text())
    validate_report(report)
    assert report["defense"]["kind"] == "purification" and report["defense"]["quote"] == "worst_case"
    worst = report["defense"]["worst_case"][0]["accuracy"]
    adaptive = next(r for r in report["results"] if r["attack"] == "pgd-20")["metrics"]["accuracy"]
    baseline = report["defense"]["non_adaptive"]["results"][0]["metrics"]["accuracy"]
    assert worst <= min(adaptive, baseline)  # right under both attacks
    assert report["defense"]["kwargs"] == {"bits": 3} and report["defense"]["non_adaptive"]["results"]
    assert "worst case of both (quote this)" in capsys.readouterr().out
    assert (
        main(common + ["--detector", "feature_squeezing", "--fit-samples", "24", "--out", str(tmp_path / "det")]) == 0
    )
    report = json.loads((tmp_path / "det" / "brain_lesion_robust_classification.json").read_text())
    validate_report(report)
    budget = report["detection"]["budgets"][0]
    assert set(budget["attacks"]) == {"pgd", "adaptive"} and budget["attacks"]["adaptive"]["adaptive"] is True
    assert 0 <= budget["attacks"]["adaptive"]["classify_or_reject_accuracy"] <= 1
    assert report["detection"]["quote"] == "worst_case" and "worst_case" in budget
    assert "worst case of all (quote this)" in (tmp_path / "det" / "robustness.md").read_text()
    l2 = common + ["--detector", "mahalanobis", "--norm", "L2", "--out", str(tmp_path / "l2")]
    assert main(l2) == 1 and "--detector: the detection attacks are L-inf" in capsys.readouterr().err
    bad = common + ["--purifier", "bit_depth:bits=0", "--out", str(tmp_path / "bad")]
    assert main(bad) == 1 and "--purifier bit_depth" in capsys.readouterr().err
