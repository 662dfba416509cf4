# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The robust-accuracy-vs-eps curve of an evaluation: one minimum-norm run combined with the fixed-budget attacks."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch

from monai_adv.engines.robustness_results import RobustnessResults

__all__ = ["MIN_NORM_ROWS", "curve_grid", "robustness_curve"]

#: the per-sample rows the evaluator keeps with the clean cell for the curve
MIN_NORM_ROWS = ("min_norm", "min_norm_seconds", "min_norm_queries")


def curve_grid(eps_values: Sequence[float], points: int) -> List[float]:
    """The budgets the curve is given at: ``points`` evenly spaced from 0 to twice the largest budget, and every
    budget of the evaluation, sorted, without duplicates."""
    top = 2.0 * max(eps_values)
    grid = {top * i / max(points - 1, 1) for i in range(points)} | {float(e) for e in eps_values}
    return sorted(grid)


def robustness_curve(
    results: RobustnessResults,
    attack: str,
    eps_grid: Sequence[float],
    fixed_attacks: Sequence[str],
    eps_label: Callable[[float], str],
) -> Dict[str, Any]:
    """The robust accuracy at every budget of ``eps_grid``, from each sample's smallest adversarial norm and the
    fixed-budget attacks' outcomes.

    A sample counts as robust at ``eps`` when its clean prediction is right, the minimum-norm attack found no
    adversarial example within ``eps`` (its ``min_norm`` is larger), and no fixed-budget attack of
    ``fixed_attacks`` broke it at a budget ``<= eps`` (a perturbation within a smaller ball lies within every
    larger one of the same norm). ``robust_accuracy`` holds the minimum-norm attack's curve alone,
    ``combined_robust_accuracy`` the curve with the fixed-budget attacks; at the evaluation's own budgets the
    combined value is at most the worst-case row of the report.

    Args:
        results: the evaluation's cells; the clean cell holds the rows of :data:`MIN_NORM_ROWS`.
        attack: the name of the minimum-norm attack.
        eps_grid: the budgets of the curve.
        fixed_attacks: the fixed-budget attacks (their names in ``results``) whose norm is the curve's.
        eps_label: how a budget is written (e.g. "8/255").
    """
    clean = results.clean.rows()
    index, correct = clean["index"], clean["correct"].bool()
    min_norm = clean["min_norm"].double()
    broken_at = torch.full_like(min_norm, float("inf"))
    for name, eps, cell in results.rows():
        if name not in fixed_attacks:
            continue
        rows = cell.rows()
        position = torch.searchsorted(index, rows["index"])
        hit = position[rows["broken"].bool()]
        broken_at[hit] = torch.clamp(broken_at[hit], max=float(eps))
    alone, combined = [], []
    n = max(int(index.numel()), 1)
    for eps in eps_grid:
        robust = correct & (min_norm > eps)
        alone.append(float(robust.sum()) / n)
        combined.append(float((robust & (broken_at > eps)).sum()) / n)
    attackable = min_norm[correct]
    median = float(attackable.median()) if attackable.numel() else float("inf")
    return {
        "attack": attack,
        "eps": [float(e) for e in eps_grid],
        "eps_labels": [eps_label(float(e)) for e in eps_grid],
        "robust_accuracy": alone,
        "combined_robust_accuracy": combined,
        "fixed_attacks": list(fixed_attacks),
        "median_min_norm": median if median < float("inf") else None,
        "not_found": int((~torch.isfinite(attackable)).sum()),
        "seconds": float(clean["min_norm_seconds"].sum()),
        "queries_per_sample": float(clean["min_norm_queries"].sum()) / n,
    }
