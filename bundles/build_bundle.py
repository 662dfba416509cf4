# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Train a bundle's weights on the demo data, measure them, and record the figures in its metadata.

Usage (from the repository root)::

    python bundles/build_bundle.py brain_lesion_robust_classification
    python bundles/build_bundle.py brain_lesion_robust_segmentation
    python bundles/build_bundle.py robust_classification_template   # starter weights, demo data as MedMNIST

Each step runs the bundle's own configs with ``python -m monai.bundle run``, exactly as a user would:

1. natural training (``train.json``), the reference;
2. adversarial training (``train.json`` + ``train_robust.json``); its best checkpoint (robust validation metric)
   is copied to ``models/model.pt`` (training itself writes only to its own folder, never over the shipped file);
3. robustness evaluation of both models on the test split (``train.json`` + ``evaluate_robustness.json``);
4. ``configs/metadata.json#eval_metrics`` gets the robust model's clean and worst-case figures, and
   ``docs/results.json`` both models' reports.

Steps whose outputs exist are skipped, so an interrupted build resumes (work folder: ``--work``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / ".build" / "data"  # the demo data the configs export, outside the bundle folders
TEMPLATE = "robust_classification_template"
#: the template's starter weights: the demo classification task as a MedMNIST-style file, at MedMNIST's 28 px
TEMPLATE_SPLITS = {"train": 1000, "val": 200, "test": 100}


def _run(bundle: Path, configs, log: Path, **overrides) -> None:
    files = "[" + ",".join(f"'{bundle / 'configs' / c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle)]
    cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    print(f"  done in {time.perf_counter() - start:.0f} s (log {log})", flush=True)


def _eval_metrics(report: dict) -> dict:
    metric = report["primary_metric"]
    name = "accuracy" if metric == "accuracy" else "mean_dice"
    out = {f"clean_{name}": round(report["clean"][metric], 4)}
    for row in report["results"]:
        out[f"{row['attack']}_{name}_eps_{row['eps_label']}"] = round(row["metrics"][metric], 4)
    out["attack_norm"] = report["norm"]
    out["test_samples"] = report["num_samples"]
    return out


def _data(name: str) -> dict:
    """The data overrides of a bundle's runs: the demo data (the trained bundles export it under ``DATA``); for the
    template, the demo classification task written as the MedMNIST file it reads."""
    if name != TEMPLATE:
        return {"dataset_dir": DATA}
    from monai_adv.data import export_demo_medmnist

    path = DATA / "brain_lesion_demo_28px.npz"
    if not path.is_file():
        export_demo_medmnist(path, TEMPLATE_SPLITS, image_size=28)
    return {"dataset_dir": path.parent, "medmnist_file": path.name}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a bundle folder name under bundles/")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default bundles/.build/<bundle>)")
    args = parser.parse_args(argv)
    bundle = HERE / args.bundle
    work = args.work or HERE / ".build" / args.bundle
    work.mkdir(parents=True, exist_ok=True)
    data = _data(args.bundle)
    for method, configs in (("natural", ["train.json"]), ("robust", ["train.json", "train_robust.json"])):
        ckpt = work / method / "model.pt"
        if not ckpt.is_file():
            _run(bundle, configs, work / f"train_{method}.log", ckpt_dir=work / method, **data)
    model = bundle / "models" / "model.pt"
    state = torch.load(work / "robust" / "model.pt", map_location="cpu", weights_only=True)
    model.parent.mkdir(exist_ok=True)
    torch.save(state, model)
    reports = {}
    for method in ("natural", "robust"):
        out = work / f"eval_{method}"
        name = f"{args.bundle}_{method}"
        if not (out / f"{name}.json").is_file():
            configs = ["train.json", "evaluate_robustness.json"]
            _run(
                bundle,
                configs,
                work / f"eval_{method}.log",
                ckpt_path=work / method / "model.pt",
                output_dir=out,
                model_name=name,
                **data,
            )
        reports[method] = json.loads((out / f"{name}.json").read_text())
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = _eval_metrics(reports["robust"])
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    (bundle / "docs" / "results.json").write_text(json.dumps(reports, indent=4) + "\n")  # the Model Zoo's JSON style
    shutil.copy(work / "eval_robust" / "robustness_curves.png", bundle / "docs" / "robustness_curves.png")
    print(json.dumps(meta["eval_metrics"], indent=1))


if __name__ == "__main__":
    main()
