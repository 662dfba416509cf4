# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The MONAI bundles, tested as the Model Zoo does: ConfigWorkflow with overrides, metadata, export."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out

from monai_adv.benchmark.report import validate_report
from monai_adv.data.export import export_demo
from tests.cases import comparable_report

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
SCHEMA = ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
CLS, SEG, TEMPLATE = (
    "brain_lesion_robust_classification",
    "brain_lesion_robust_segmentation",
    "robust_classification_template",
)
TRAINED = (CLS, SEG)
ALL = TRAINED + (TEMPLATE,)
TINY_TRAIN = {
    CLS: {"max_epochs": 1, "num_train": 48, "num_val": 16, "val_interval": 1},
    SEG: {"max_epochs": 1, "num_train": 4, "num_val": 2, "val_interval": 1},
    TEMPLATE: {"max_epochs": 1, "val_interval": 1},
}


def _copy(name, tmp_path):
    """A copy of the bundle to run in (its outputs stay out of the repository)."""
    dst = tmp_path / name
    shutil.copytree(BUNDLES / name, dst, ignore=shutil.ignore_patterns("eval", "demo_images", "data", "train"))
    return dst


def _workflow(bundle, configs, workflow_type="train", **override):
    files = [str(bundle / "configs" / c) for c in configs]
    wf = ConfigWorkflow(
        config_file=files,
        workflow_type=workflow_type,
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        **override,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def _tiny_medmnist(folder, channels=1, size=16):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 32), ("val", 12), ("test", 12)):
        labels = rng.integers(0, 2, (n, 1))
        images = rng.integers(0, 80, (n, size, size) if channels == 1 else (n, size, size, 3)).astype(np.uint8)
        images[labels[:, 0] == 1, 4:12, 4:12] = 250  # a bright square: learnable
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(folder / "tiny.npz", **arrays)


def _check_declared_versions(meta):
    """The versions a bundle declares (the Model Zoo installs exactly these) meet the package's own minimums and
    install on the Python versions the Zoo's CI uses (3.9, 3.10): MONAI <= 1.5.x, PyTorch <= 2.8, NumPy < 2.1."""
    from packaging.version import Version

    requires = {}
    for line in (ROOT / "setup.py").read_text().splitlines():
        for name in ("torch", "numpy", "monai"):
            if line.strip().startswith(f'"{name}') and ">=" in line:
                requires[name] = Version(line.split(">=")[1].split('"')[0])
    declared = {"torch": meta["pytorch_version"], "numpy": meta["numpy_version"], "monai": meta["monai_version"]}
    for name, version in declared.items():
        assert Version(version) >= requires[name], f"{name} {version} is older than setup.py's {requires[name]}"
    assert Version(meta["monai_version"]) < Version("1.6"), "MONAI 1.6 needs Python 3.10"
    assert Version(meta["pytorch_version"]) < Version("2.9"), "PyTorch 2.9 has no Python 3.9 wheels"
    assert Version(meta["numpy_version"]) < Version("2.1"), "NumPy 2.1 needs Python 3.10"


@pytest.mark.parametrize("name", ALL)
def test_metadata_is_valid_offline(name):
    if not SCHEMA.is_file():
        pytest.skip(f"the bundle metadata schema is not beside the checkout ({SCHEMA.name})")
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    assert "monai-adv" in meta["required_packages_version"]
    _check_declared_versions(meta)
    if name in TRAINED:
        assert meta["eval_metrics"], "eval_metrics must hold the measured figures"


def _bundle_json_files():
    """Every JSON file a bundle ships (not what its runs write: eval/, data/, models/train/)."""
    return sorted(
        p
        for name in ALL
        for p in (BUNDLES / name).rglob("*.json")
        if not {"eval", "data", "train", "demo_images"} & set(p.relative_to(BUNDLES / name).parts[:-1])
    )


@pytest.mark.parametrize("path", _bundle_json_files(), ids=lambda p: str(p.relative_to(BUNDLES)))
def test_bundle_json_files_have_the_model_zoo_format(path):
    """The Model Zoo's pre-commit rule: ``pretty-format-json --no-sort-keys --indent=4`` (json.dumps with 4 spaces,
    ASCII escapes, keys in their order) and a final newline."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n", "reformat with json.dumps(obj, indent=4) + newline"


@pytest.mark.parametrize("name", ALL)
def test_bundle_layout(name):
    bundle = BUNDLES / name
    for f in (
        "train.json",
        "train_robust.json",
        "evaluate.json",
        "evaluate_robustness.json",
        "inference.json",
        "multi_gpu_train.json",
        "multi_gpu_evaluate_robustness.json",
        "logging.conf",
        "metadata.json",
    ):
        assert (bundle / "configs" / f).is_file(), f
    for f in ("LICENSE", "docs/README.md", "models/model.pt", "docs/data_license.txt"):  # the Zoo's files and ours
        assert (bundle / f).is_file(), f
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert "monai_adv" not in json.dumps(inference["preprocessing"]), "no attacks in inference preprocessing"
    assert all(p.stat().st_size < 2**20 for p in bundle.rglob("*") if p.is_file()), "the Zoo's 1 MB file limit"


@pytest.mark.parametrize("name", ALL)
def test_weights_load_safely_and_fit_the_network(name):
    bundle = BUNDLES / name
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)


@pytest.mark.parametrize("name", ALL)
def test_net_in_out(name):
    bundle = BUNDLES / name
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        n=1,
        any=16,
    )


@pytest.mark.parametrize("name", ALL)
def test_torchscript_export_gives_the_same_outputs(name, tmp_path):
    bundle = BUNDLES / name
    ts = tmp_path / "model.ts"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        str(bundle / "models" / "model.pt"),
        "--meta_file",
        str(bundle / "configs" / "metadata.json"),
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--bundle_root",
        str(bundle),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    exported = torch.jit.load(str(ts))
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    x = {CLS: torch.rand(2, 1, 32, 32), SEG: torch.rand(1, 1, 32, 32, 32), TEMPLATE: torch.rand(2, 1, 28, 28)}[name]
    with torch.no_grad():
        torch.testing.assert_close(exported(x), network(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,size", [(CLS, 32), (TEMPLATE, 28)])
def test_classification_inference_writes_predictions(name, size, tmp_path):
    bundle = _copy(name, tmp_path)
    data = export_demo(tmp_path / "images", task="classification", num_samples=12, image_size=size)
    _workflow(
        bundle, ["inference.json"], "infer", dataset_dir=str(tmp_path / "images"), output_dir=str(tmp_path / "out")
    )
    rows = (tmp_path / "out" / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 12
    predicted = [int(float(r.split(",")[1])) for r in rows]
    truth = [d["label"] for d in data]
    assert np.mean(np.array(predicted) == np.array(truth)) >= 0.75  # the bundled model works on exported images


def test_segmentation_inference_writes_label_maps(tmp_path):
    import nibabel as nib

    bundle = _copy(SEG, tmp_path)
    export_demo(tmp_path / "images", task="segmentation", spatial_dims=3, num_samples=2)
    _workflow(
        bundle, ["inference.json"], "infer", dataset_dir=str(tmp_path / "images"), output_dir=str(tmp_path / "out")
    )
    for case in ("case_000", "case_001"):
        seg = nib.load(tmp_path / "out" / f"{case}_seg.nii.gz")
        ref = nib.load(tmp_path / "images" / "images" / f"{case}.nii.gz")
        assert seg.shape[:3] == ref.shape[:3]
        np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}


@pytest.mark.parametrize("name", TRAINED)
def test_one_epoch_natural_and_robust_training(name, tmp_path):
    bundle = _copy(name, tmp_path)
    for configs in (["train.json"], ["train.json", "train_robust.json"]):
        ckpt = tmp_path / "ckpt" / str(len(configs))
        wf = _workflow(bundle, configs, ckpt_dir=str(ckpt), **TINY_TRAIN[name])
        assert (ckpt / "model.pt").is_file()
        if len(configs) == 2:
            assert type(wf.parser.get_parsed_content("train#trainer")).__name__ == "RobustTrainer"


@pytest.mark.parametrize("name", TRAINED)
def test_short_training_saves_its_own_checkpoint_and_keeps_the_shipped_weights(name, tmp_path):
    """One epoch with the default validation interval (2): no validation ran, the final model is still saved, in
    the training folder; the published ``models/model.pt`` is byte-identical afterwards."""
    bundle = _copy(name, tmp_path)
    shipped = bundle / "models" / "model.pt"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    sizes = {k: v for k, v in TINY_TRAIN[name].items() if k.startswith("num_")}
    for configs in (["train.json"], ["train.json", "train_robust.json"]):
        _workflow(bundle, configs, max_epochs=1, **sizes)
        assert (bundle / "models" / "train" / "model_final.pt").is_file()
        assert not (bundle / "models" / "train" / "model.pt").exists(), "no validation ran, so no best model"
        assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
        (bundle / "models" / "train" / "model_final.pt").unlink()


@pytest.mark.parametrize("name", TRAINED)
def test_datasets_are_built_from_datalists(name, tmp_path):
    """``train#dataset#data`` and ``validate#dataset#data`` are lists of dicts of files (as the Model Zoo and MONAI
    Label expect), written once under ``dataset_dir`` and read back by a second run."""
    bundle = _copy(name, tmp_path)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json")])
    parser["bundle_root"] = str(bundle)
    parser.update({k: v for k, v in TINY_TRAIN[name].items() if k.startswith("num_")})
    for split, key in (("train", "num_train"), ("validate", "num_val")):
        data = parser.get_parsed_content(f"{split}#dataset#data")
        assert len(data) == TINY_TRAIN[name][key]
        images = [Path(item["image"]) for item in data]
        assert all(image.is_file() and image.is_relative_to(bundle / "data") for image in images)
        sample = parser.get_parsed_content(f"{split}#dataset")[0]
        assert sample["image"].shape[0] == 1 and sample["image"].dtype == torch.float32
    again = ConfigParser()
    again.read_config([str(bundle / "configs" / "train.json")])
    again["bundle_root"] = str(bundle)
    again.update({k: v for k, v in TINY_TRAIN[name].items() if k.startswith("num_")})
    assert again.get_parsed_content("train#dataset#data") == parser.get_parsed_content("train#dataset#data")


@pytest.mark.parametrize("name", TRAINED)
def test_robustness_evaluation_writes_its_report(name, tmp_path):
    bundle = _copy(name, tmp_path)
    out = tmp_path / "out"
    override = {"num_test": 6 if name == CLS else 2, "attack_eps": "$[4 / 255]", "output_dir": str(out)}
    if name == CLS:
        override["attacks"] = ["fgsm", "pgd-20"]
    _workflow(bundle, ["train.json", "evaluate_robustness.json"], **override)
    report = json.loads((out / f"{name}.json").read_text())
    validate_report(report)
    assert (out / "robustness.md").is_file() and (out / "robustness_curves.png").is_file()


@pytest.mark.parametrize("name", TRAINED)
def test_clean_evaluation_writes_metrics(name, tmp_path):
    bundle = _copy(name, tmp_path)
    out = tmp_path / "out"
    _workflow(bundle, ["train.json", "evaluate.json"], num_test=4, output_dir=str(out))
    assert (out / "metrics.csv").read_text().startswith("val_")


def _template_test_data(folder):
    """The template's starter-weight test split: the demo task as a MedMNIST file (a split depends only on its
    own settings, so writing the test split alone gives the build's test samples)."""
    from monai_adv.data import export_demo_medmnist

    path = export_demo_medmnist(folder / "brain_lesion_demo_28px.npz", {"test": 100}, image_size=28)
    return {"dataset_dir": str(path.parent), "medmnist_file": path.name}


@pytest.mark.parametrize("name", ALL)
def test_bundled_model_matches_its_eval_metrics(name, tmp_path):
    """Re-measure one figure of eval_metrics with the bundle's own config: same data, seed and attack."""
    bundle = _copy(name, tmp_path)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    attack, key = ("fgsm", "fgsm_mean_dice_eps_8/255") if name == SEG else ("pgd-20", "pgd-20_accuracy_eps_8/255")
    override = {"attack_eps": "$[8 / 255]", "attacks": [attack], "output_dir": str(tmp_path / "out")}
    if name == TEMPLATE:
        override.update(_template_test_data(tmp_path))
    _workflow(bundle, ["train.json", "evaluate_robustness.json"], **override)
    report_name = "robust_classifier" if name == TEMPLATE else name
    report = json.loads((tmp_path / "out" / f"{report_name}.json").read_text())
    metric = report["primary_metric"]
    measured = {r["attack"]: r["metrics"][metric] for r in report["results"]}[attack]
    assert measured == pytest.approx(meta[key], abs=0.011)
    clean_key = "clean_mean_dice" if name == SEG else "clean_accuracy"
    assert report["clean"][metric] == pytest.approx(meta[clean_key], abs=0.011)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_full_robustness_evaluation_matches_eval_metrics(name, tmp_path):
    bundle = _copy(name, tmp_path)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]
    _workflow(bundle, ["train.json", "evaluate_robustness.json"], output_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    metric = report["primary_metric"]
    label = "accuracy" if metric == "accuracy" else "mean_dice"
    for row in report["results"]:
        assert row["metrics"][metric] == pytest.approx(
            meta[f"{row['attack']}_{label}_eps_{row['eps_label']}"], abs=0.02
        )


@pytest.mark.parametrize("data_format", ["medmnist", "csv"])
def test_template_trains_on_your_data(data_format, tmp_path):
    bundle = _copy(TEMPLATE, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    configs = ["train.json"]
    if data_format == "medmnist":
        _tiny_medmnist(data)
        override = {"medmnist_file": "tiny.npz"}
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        lines = ["image,label,split"]
        for i, split in enumerate(["train"] * 24 + ["val"] * 8 + ["test"] * 8):
            label = i % 2
            pixels = rng.integers(0, 80, (20, 20)).astype(np.uint8)
            if label:
                pixels[5:15, 5:15] = 250
            Image.fromarray(pixels).save(data / f"img{i}.png")
            lines.append(f"img{i}.png,{label},{split}")
        (data / "manifest.csv").write_text("\n".join(lines) + "\n")
        configs.append("data_csv.json")
        override = {"image_size": 16}
    ckpt = tmp_path / "ckpt"
    _workflow(
        bundle,
        configs + ["train_robust.json"],
        dataset_dir=str(data),
        ckpt_dir=str(ckpt),
        **override,
        **TINY_TRAIN[TEMPLATE],
    )
    assert (ckpt / "model.pt").is_file()
    out = tmp_path / "out"
    _workflow(
        bundle,
        configs + ["evaluate_robustness.json"],
        dataset_dir=str(data),
        ckpt_path=str(ckpt / "model.pt"),
        output_dir=str(out),
        attacks=["fgsm"],
        attack_eps="$[4 / 255]",
        **override,
    )
    report = json.loads((out / "robust_classifier.json").read_text())
    validate_report(report)
    assert report["num_samples"] == (12 if data_format == "medmnist" else 8)


def _torchrun(bundle, configs, **override):
    files = "[" + ",".join(f"'{bundle / 'configs' / c}'" for c in configs) + "]"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--bundle_root",
        str(bundle),
    ]
    for key, value in override.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("name", TRAINED)
def test_multi_gpu_config_trains_with_two_cpu_processes(name, tmp_path):
    bundle = _copy(name, tmp_path)
    ckpt = tmp_path / "ckpt"
    proc = _torchrun(
        bundle, ["train.json", "train_robust.json", "multi_gpu_train.json"], ckpt_dir=ckpt, **TINY_TRAIN[name]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = torch.load(ckpt / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "the checkpoint holds the plain network's weights"


def test_multi_gpu_robustness_evaluation_with_two_cpu_processes_equals_one(tmp_path):
    bundle = _copy(CLS, tmp_path)
    override = {"num_test": 7, "attack_eps": "$[4 / 255]", "attacks": "['fgsm','pgd-20']"}
    proc = _torchrun(
        bundle,
        ["train.json", "evaluate_robustness.json", "multi_gpu_evaluate_robustness.json"],
        output_dir=tmp_path / "ddp",
        **override,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _workflow(
        bundle,
        ["train.json", "evaluate_robustness.json"],
        output_dir=str(tmp_path / "one"),
        num_test=7,
        attack_eps="$[4 / 255]",
        attacks=["fgsm", "pgd-20"],
    )
    reports = [comparable_report(json.loads((tmp_path / run / f"{CLS}.json").read_text())) for run in ("ddp", "one")]
    assert reports[0]["num_samples"] == 7
    assert reports[0] == reports[1]
