# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Input purification and adversarial detection on the demo classifier: the non-adaptive attack such defenses are
usually reported with, next to the adaptive attack that evaluates them.

Usage (from the repository root)::

    python -m benchmarks.defended_models            # demo lesion classifier (natural), 200 test images
    python -m benchmarks.defended_models --tiny     # a smoke run

Purifiers (``evaluate_purification``, PGD with 20 steps, EoT over 8 draws for the randomized one): bit depth 3,
median 3x3, Gaussian noise 0.05 then median. Detectors (``evaluate_detection``, fitted on 400 clean validation
images, threshold at 5 % false positives; PGD on the classifier against the detector-aware APGD, 50 steps).
Written to docs/defenses.md.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks.autoattack_fast import demo_models
from benchmarks.doc_sections import replace_section
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.data import BrainLesionDataset
from monai_adv.defenses import (
    FeatureSqueezingDetector,
    MahalanobisDetector,
    Purified,
    evaluate_detection,
    evaluate_purification,
    make_purifier,
)

DOC = Path("docs/defenses.md")
HEADING = "## Purification and detection: the non-adaptive attack against the adaptive one"
EPS = [4 / 255, 8 / 255]
PURIFIERS = {
    "bit depth 3": ("bit_depth", {"bits": 3}),
    "median 3x3": ("median", {"kernel_size": 3}),
    "noise 0.05 + median": ("noise", {"sigma": 0.05, "then": "median", "seed": 0}),
}


def purification_rows(model, x, y, steps: int) -> List[Dict]:
    rows = []
    for label, (name, kwargs) in PURIFIERS.items():
        purified = Purified(model, make_purifier(name, **kwargs))
        for eps in EPS:
            result = evaluate_purification(purified, x, y, attack="pgd", eps=eps, steps=steps, seed=0)
            rows.append({"purifier": label, "eps": eps, **{k: v for k, v in result.items() if k.endswith("accuracy")}})
            print(label, f"{eps * 255:g}/255", {k: round(v, 3) for k, v in rows[-1].items() if k.endswith("y")})
    return rows


def detection_rows(model, x, y, fit, steps: int) -> List[Dict]:
    rows = []
    for label, cls in (("Mahalanobis", MahalanobisDetector), ("feature squeezing", FeatureSqueezingDetector)):
        detector = cls(model).fit(fit)
        for eps in EPS:
            result = evaluate_detection(model, detector, x, y, eps=eps, steps=steps, seed=0)
            for attack, row in result["attacks"].items():
                keep = ("auroc", "tpr_at_5_fpr", "robust_accuracy", "classify_or_reject_accuracy", "adaptive")
                rows.append({"detector": label, "eps": eps, "attack": attack, **{k: row[k] for k in keep}})
            worst = result["worst_case"]
            rows.append({"detector": label, "eps": eps, "attack": "worst_case", "adaptive": None, **worst})
            rows[-1]["false_rejection_rate"] = result["clean"]["false_rejection_rate"]
            print(label, f"{eps * 255:g}/255", rows[-3:])
    return rows


def markdown(payload: Dict) -> str:
    lines = [
        HEADING,
        "",
        f"`python -m benchmarks.defended_models` on the demo task's natural lesion classifier (binary, 32x32 slices), "
        f"{payload['images']} test images, on {payload['machine']}. Accuracy of the defended model; the worst case "
        "(per sample, right under every attack) is the one to quote.",
        "",
        "| purifier | eps | clean | non-adaptive attack | adaptive attack (BPDA / EoT) | worst case |",
        "|---|---|---|---|---|---|",
    ]
    for row in payload["purification"]:
        lines.append(
            f"| {row['purifier']} | {row['eps'] * 255:g}/255 | {row['clean_accuracy']:.3f} | "
            f"{row['non_adaptive_accuracy']:.3f} | {row['adaptive_accuracy']:.3f} | "
            f"**{row['worst_case_accuracy']:.3f}** |"
        )
    lines += [
        "",
        "Detectors fitted on 400 clean validation slices (threshold at 5 % false positives). *Classify or reject*: the "
        "adversarial input is classified correctly or rejected.",
        "",
        "| detector | eps | attack | AUROC | TPR at 5% FPR | classifier robust accuracy | classify or reject |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in payload["detection"]:
        value = f"{row['classify_or_reject_accuracy']:.3f}"
        if row["attack"] == "worst_case":
            lines.append(
                f"| {row['detector']} | {row['eps'] * 255:g}/255 | worst case of both | | | "
                f"{row['robust_accuracy']:.3f} | **{value}** |"
            )
            continue
        name = "detector-aware APGD (adaptive)" if row["adaptive"] else "PGD on the classifier"
        lines.append(
            f"| {row['detector']} | {row['eps'] * 255:g}/255 | {name} | {row['auroc']:.3f} | "
            f"{row['tpr_at_5_fpr']:.3f} | {row['robust_accuracy']:.3f} | {value} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test images")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (8 images, few steps)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/defended_models.json"))
    args = parser.parse_args(argv)
    models, x, y = demo_models(args.tiny)
    n = 8 if args.tiny else args.n
    x, y = x[:n], y[:n]
    model = models["demo lesion, natural"][0]
    val = BrainLesionDataset("val", task="classification", num_samples=16 if args.tiny else 400, image_size=32)
    fit = [(torch.stack([s["image"].as_tensor() for s in val]), torch.as_tensor([int(s["label"]) for s in val]))]
    payload = {
        "images": n,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "purification": purification_rows(model, x, y, 2 if args.tiny else 20),
        "detection": detection_rows(model, x, y, fit, 2 if args.tiny else 50),
    }
    write_json_atomic(args.out, payload)
    if not args.tiny:
        replace_section(DOC, HEADING, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
