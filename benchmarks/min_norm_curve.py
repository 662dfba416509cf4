# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The robust-accuracy-vs-eps curve from one FMN run next to AutoAttack at each budget, on the demo models.

Usage (from the repository root)::

    python -m benchmarks.min_norm_curve            # demo lesion classifiers (natural, PGD-AT), 100 images
    python -m benchmarks.min_norm_curve --tiny     # a smoke run

Each model is evaluated by ``RobustnessEvaluator(attacks=["autoattack"], eps=[1, 2, 4, 8]/255,
min_norm_attack="fmn")``: AutoAttack (standard) runs once per budget, FMN (100 steps) once in all. The table
gives, at each budget, AutoAttack's robust accuracy, FMN's alone and the two combined, and the time of each; the
figure draws the whole curve. Written to docs/evaluation.md and docs/images/.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Dict

import torch
from monai.data import DataLoader

from benchmarks.autoattack_fast import demo_models
from benchmarks.doc_sections import replace_section
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.engines import RobustnessEvaluator
from monai_adv.visualize import plot_min_norm_curve

DOC = Path("docs/evaluation.md")
IMAGES = Path("docs/images")
HEADING = "## Robust accuracy against eps from one minimum-norm run"
EPS = [1 / 255, 2 / 255, 4 / 255, 8 / 255]


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, tiny: bool) -> Dict:
    """The report of AutoAttack at each budget with the FMN curve."""
    data = [{"image": a, "label": b} for a, b in zip(x, y)]
    attack = {"attack": "autoattack", "name": "autoattack"}
    if tiny:
        attack.update(steps=3, queries=20)
    evaluator = RobustnessEvaluator(
        x.device,
        DataLoader(data, batch_size=50),
        model,
        [attack],
        EPS,
        min_norm_attack={"attack": "fmn", "steps": steps},
        curve_points=33,
    )
    evaluator.run()
    return evaluator.report()


def markdown(payload: Dict) -> str:
    lines = [
        HEADING,
        "",
        '`python -m benchmarks.min_norm_curve`: `RobustnessEvaluator(attacks=["autoattack"], eps=[1, 2, 4, 8]/255, '
        f'min_norm_attack={{"attack": "fmn", "steps": {payload["steps"]}}})` on the demo task\'s lesion '
        f"classifiers (32x32 slices, {payload['images']} test images), on {payload['machine']}. FMN runs once; "
        "AutoAttack once per budget. *Combined*: a sample is robust at eps only if neither FMN (its smallest "
        "adversarial norm is above eps) nor AutoAttack at any budget <= eps broke it.",
        "",
        "| model | eps | AutoAttack | FMN alone | combined |",
        "|---|---|---|---|---|",
    ]
    for name, report in payload["models"].items():
        curve = report["curve"]
        rows = {r["eps"]: r for r in report["results"]}
        for eps in EPS:
            at = curve["eps"].index(eps)
            lines.append(
                f"| {name} | {rows[eps]['eps_label']} | {rows[eps]['metrics']['accuracy']:.3f} | "
                f"{curve['robust_accuracy'][at]:.3f} | {curve['combined_robust_accuracy'][at]:.3f} |"
            )
    lines += ["", "| model | AutoAttack seconds (4 budgets) | FMN seconds (the whole curve) | median smallest norm |"]
    lines.append("|---|---|---|---|")
    for name, report in payload["models"].items():
        aa = sum(r["seconds"] for r in report["results"])
        median = report["curve"]["median_min_norm"]
        median_text = "n/a" if median is None else f"{median * 255:.2f}/255"
        lines.append(f"| {name} | {aa:.1f} | {report['curve']['seconds']:.1f} | {median_text} |")
    lines.append("")
    for name, figure in payload["figures"].items():
        lines.append(f"![{name}]({Path(figure).relative_to('docs').as_posix()})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="test images per model")
    parser.add_argument("--steps", type=int, default=100, help="FMN iterations")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (8 images, 5 FMN steps, small AutoAttack)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/min_norm_curve.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.steps = 8, 5
    models, x, y = demo_models(args.tiny)
    x, y = x[: args.n], y[: args.n]
    payload = {
        "images": args.n,
        "steps": args.steps,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "models": {},
        "figures": {},
    }
    for name, (model, _) in models.items():
        report = evaluate(model, x, y, args.steps, args.tiny)
        report["model"] = {"name": name}
        payload["models"][name] = report
        if not args.tiny:
            slug = "min_norm_curve_" + ("pgd_at" if "PGD-AT" in name else "natural") + ".png"
            payload["figures"][name] = str(plot_min_norm_curve(report, IMAGES / slug))
        curve = report["curve"]
        print(name, [f"{a:.3f}" for a in curve["robust_accuracy"]], flush=True)
    write_json_atomic(args.out, payload)
    if not args.tiny:
        replace_section(DOC, HEADING, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
