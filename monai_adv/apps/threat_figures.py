# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The figures of the threat models beyond the eps-ball for a finished evaluation: the universal perturbations, a
patched image per patch attack and size, and one image under every corruption and severity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping

from monai_adv.engines import RobustnessEvaluator
from monai_adv.engines.attack_suite import eps_label
from monai_adv.transforms.corruptions import corrupt
from monai_adv.visualize import plot_image_grid, plot_threat_families, plot_universal_perturbations

__all__ = ["write_threat_figures"]


def write_threat_figures(evaluator: RobustnessEvaluator, report: Mapping[str, Any], out: Path) -> Dict[str, Path]:
    """Write the figures of the report's universal, patch and corruption sections into ``out`` (those it has):
    ``universal_perturbations.png``, ``patches.png``, ``corruptions.png`` (on the first kept example image) and
    ``threat_models.png`` (the metric against patch size and corruption severity). Returns the paths by kind."""
    paths: Dict[str, Path] = {}
    examples = evaluator.state.examples or {}
    image = examples["image"][:1] if "image" in examples and len(examples["image"]) else None
    label = examples["label"][:1] if image is not None else None
    universal = {
        f"{name} @ {eps_label(budget, evaluator.value_range)}": tensor.cpu()
        for (name, budget), tensor in evaluator.fitted.items()
        if evaluator.attack(name, budget).threat_model == "universal"
    }
    if universal:
        paths["universal"] = plot_universal_perturbations(
            universal,
            out / "universal_perturbations.png",
            image=None if image is None else image[0],
            value_range=evaluator.value_range,
        )
    if image is not None and evaluator.patch_specs:
        from monai_adv.attacks.patch import size_label

        device = evaluator.state.device
        rows = {}
        for spec in evaluator.patch_specs:
            patched = []
            for size in evaluator.patch_sizes:
                attack = evaluator.attack(spec.name, size)
                patched.append(attack(image.to(device), label.to(device)).detach().cpu()[0])
            rows[spec.name] = patched
        columns = [size_label(size) for size in evaluator.patch_sizes]
        paths["patches"] = plot_image_grid(rows, out / "patches.png", columns, evaluator.value_range, "patches")
    if image is not None and evaluator.corruptions:
        seed = evaluator.seed if evaluator.seed is not None else 0
        rows = {
            name: [corrupt(image, name, v, seed, evaluator.value_range)[0] for v in evaluator.severities]
            for name in evaluator.corruptions
        }
        columns = [f"severity {v}" for v in evaluator.severities]
        paths["corruptions"] = plot_image_grid(
            {"clean": [image[0]] * len(columns), **rows},
            out / "corruptions.png",
            columns,
            evaluator.value_range,
            "natural corruptions",
        )
    if report.get("patches") or report.get("corruptions"):
        paths["threat_models"] = plot_threat_families(report, out / "threat_models.png")
    return paths
