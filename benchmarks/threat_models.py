# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-image attacks, universal perturbations, patches and natural corruptions on the demo models, in one table.

Usage (from the repository root)::

    python -m benchmarks.threat_models            # demo lesion classifiers (natural, PGD-AT), 200 test images
    python -m benchmarks.threat_models --tiny     # a smoke run

Each model is evaluated by one ``RobustnessEvaluator`` run: PGD-20, the universal perturbation ("uap", fitted
on 200 validation images) and a targeted one that pushes every image to "no lesion" at 2, 4, 8, 16/255; the
universal patch ("patch", fitted on the same images) and the per-image patch ("image_patch") at 1, 2, 5 and 10 % of
the image area; every corruption at severities 1-5. Beside it, by hand: random sign noise of the same L-inf norm
as the universal perturbation (a corner of the eps-ball), and a random uniform patch at the same placements as the
universal patch. Written to docs/threat_models.md and docs/images/.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Dict, List

import torch
from monai.data import DataLoader

from benchmarks.autoattack_fast import demo_models
from benchmarks.doc_sections import replace_section
from monai_adv.apps.threat_figures import write_threat_figures
from monai_adv.attacks import UniversalPatch, apply_perturbation
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.data import BrainLesionDataset
from monai_adv.engines import RobustnessEvaluator

DOC = Path("docs/threat_models.md")
IMAGES = Path("docs/images")
HEADING = "## Measured on the demo models"
EPS = [2 / 255, 4 / 255, 8 / 255, 16 / 255]
SIZES = [0.01, 0.02, 0.05, 0.1]


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def baselines(evaluator: RobustnessEvaluator, model, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Random sign noise with the universal perturbation's L-inf norm, and a random uniform patch of each size at the
    universal patch's placements, on the test images."""
    noise, patch, hidden = {}, {}, {}
    generator = torch.Generator().manual_seed(0)
    lesion = y == 1
    for eps in evaluator.eps_values:
        with torch.no_grad():  # lesions the clean model finds that the targeted UAP hides
            found = model(x).argmax(1) == 1
            pushed = apply_perturbation(x, evaluator.fitted[("uap-to-healthy", eps)], None, (0.0, 1.0))
            missed = model(pushed).argmax(1) == 0
        hidden[f"{eps * 255:g}/255"] = int((lesion & found & missed).sum()) / max(int((lesion & found).sum()), 1)
        delta = evaluator.fitted[("uap", eps)]
        size = float(delta.abs().max())
        sign = torch.randint(0, 2, delta.shape, generator=generator).float() * 2 - 1
        noise[f"{eps * 255:g}/255"] = _accuracy(model, apply_perturbation(x, sign * size, None, (0.0, 1.0)), y)
    for size in evaluator.patch_sizes:
        fitted = evaluator.fitted[("patch", size)]
        random_patch = torch.rand(fitted.shape, generator=generator)
        attack = UniversalPatch(model, size=size, patch=random_patch, seed=evaluator.seed)
        patch[str(size)] = _accuracy(model, attack(x, y), y)
    return {"noise": noise, "random_patch": patch, "hidden": hidden}


def evaluate(model, x, y, fit_x, fit_y, tiny: bool) -> Dict:
    test = DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=50)
    fit = DataLoader([{"image": a, "label": b} for a, b in zip(fit_x, fit_y)], batch_size=50)
    steps = 2 if tiny else 50
    hide = {"attack": "uap", "name": "uap-to-healthy", "target_class": 0}  # every image pushed to "no lesion"
    suite = ["pgd-20", "uap", hide, "patch", {"attack": "image_patch", "steps": steps}]
    evaluator = RobustnessEvaluator(
        x.device,
        test,
        model,
        suite,
        EPS,
        fit_data_loader=fit,
        patch_sizes=SIZES,
        corruptions="all",
        keep_examples=1,
    )
    start = time.perf_counter()
    evaluator.run()
    report = evaluator.report()
    report["wall_seconds"] = time.perf_counter() - start
    report["baselines"] = baselines(evaluator, model, x, y)
    return evaluator, report


def _row(report: Dict, attack: str, label: str) -> float:
    return next(r for r in report["results"] if r["attack"] == attack and r["eps_label"] == label)


def markdown(payload: Dict) -> str:
    lines: List[str] = [
        HEADING,
        "",
        f"`python -m benchmarks.threat_models` on the demo task's lesion classifiers (binary, 32x32 slices; natural "
        f"and PGD-AT at 8/255), {payload['images']} test images, the universal perturbation and patch fitted on "
        f"{payload['fit_images']} validation images (10 epochs), per-image patch {payload['patch_steps']} steps, on "
        f"{payload['machine']}. Accuracy everywhere (clean in the first column).",
        "",
        "### Universal perturbation against per-image PGD-20 and random noise (L-inf)",
        "",
        "| model | eps | clean | PGD-20 (per image) | UAP | UAP fooling rate | random sign noise, same norm | "
        "UAP to healthy: accuracy | lesions hidden (share of found lesions) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, report in payload["models"].items():
        clean = report["clean"]["accuracy"]
        for label in report["eps_labels"]:
            pgd, uap = _row(report, "pgd-20", label), _row(report, "uap", label)
            hide = _row(report, "uap-to-healthy", label)
            lines.append(
                f"| {name} | {label} | {clean:.3f} | {pgd['metrics']['accuracy']:.3f} | "
                f"{uap['metrics']['accuracy']:.3f} | {uap['fooling_rate']:.3f} | "
                f"{report['baselines']['noise'][label]:.3f} | {hide['metrics']['accuracy']:.3f} | "
                f"{report['baselines']['hidden'][label]:.3f} |"
            )
    lines += [
        "",
        "### Patches against patch size (share of the image area)",
        "",
        "| model | size | clean | universal patch | per-image patch | random patch, same placements |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in payload["models"].items():
        clean = report["clean"]["accuracy"]
        rows = {(r["attack"], r["size"]): r for r in report["patches"]}
        for size in SIZES:
            universal, image = rows[("patch", size)], rows[("image_patch", size)]
            lines.append(
                f"| {name} | {universal['size_label']} | {clean:.3f} | {universal['metrics']['accuracy']:.3f} | "
                f"{image['metrics']['accuracy']:.3f} | {report['baselines']['random_patch'][str(size)]:.3f} |"
            )
    lines += ["", "### Natural corruptions (mean over severities 1-5, and severity 5)", ""]
    names = list(next(iter(payload["models"].values()))["corruptions"]["per_corruption"])
    lines.append("| corruption | " + " | ".join(f"{m} mean | {m} sev. 5" for m in payload["models"]) + " |")
    lines.append("|---|" + "---|" * (2 * len(payload["models"])))
    for corruption in names:
        cells = []
        for report in payload["models"].values():
            section = report["corruptions"]
            worst = next(
                r
                for r in section["results"]
                if r["corruption"] == corruption and r["severity"] == max(section["severities"])
            )
            cells += [f"{section['per_corruption'][corruption]['accuracy']:.3f}", f"{worst['metrics']['accuracy']:.3f}"]
        lines.append(f"| {corruption} | " + " | ".join(cells) + " |")
    means = [f"**{r['corruptions']['mean']['accuracy']:.3f}** | " for r in payload["models"].values()]
    lines.append("| **mean corruption accuracy** | " + " | ".join(m.rstrip(" |") + " | " for m in means) + " |")
    lines += ["", "| model | wall seconds (whole evaluation) |", "|---|---|"]
    for name, report in payload["models"].items():
        lines.append(f"| {name} | {report['wall_seconds']:.1f} |")
    lines.append("")
    for name, figure in payload["figures"].items():
        lines.append(f"![{name}]({Path(figure).relative_to('docs').as_posix()})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test images per model")
    parser.add_argument("--fit", type=int, default=200, help="validation images the fitted attacks are fitted on")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (8 images, few steps)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threat_models.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.fit = 8, 8
    models, x, y = demo_models(args.tiny)
    x, y = x[: args.n], y[: args.n]
    val = BrainLesionDataset("val", task="classification", num_samples=args.fit, image_size=32)
    fit_x = torch.stack([item["image"].as_tensor() for item in val])
    fit_y = torch.as_tensor([int(item["label"]) for item in val])
    payload = {
        "images": len(y),
        "fit_images": len(fit_y),
        "patch_steps": 2 if args.tiny else 50,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "models": {},
        "figures": {},
    }
    for name, (model, _) in models.items():
        evaluator, report = evaluate(model, x, y, fit_x, fit_y, args.tiny)
        report["model"] = {"name": name}
        payload["models"][name] = report
        print(name, f"{report['wall_seconds']:.1f} s", flush=True)
        if not args.tiny:
            slug = "pgd_at" if "PGD-AT" in name else "natural"
            folder = IMAGES / f"threats_{slug}"
            for kind, path in write_threat_figures(evaluator, report, folder).items():
                payload["figures"][f"{name}: {kind}"] = str(path)
    write_json_atomic(args.out, payload)
    if not args.tiny:
        replace_section(DOC, HEADING, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
