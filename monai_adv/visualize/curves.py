# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Robustness curves: a metric against the perturbation budget, from one or several robustness reports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from matplotlib.axes import Axes

from monai_adv.visualize.figures import PathLike, new_figure, save_figure

__all__ = ["plot_min_norm_curve", "plot_robustness_curves"]

WORST_CASE = "worst-case"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

# one curve: (eps, tick label, metric value) per point, the clean point (eps 0) included
Curve = List[Tuple[float, str, float]]


def _is_report(obj: Any) -> bool:
    return isinstance(obj, Mapping) and ("results" in obj or "schema" in obj)


def _named_reports(reports: Any) -> Tuple[Dict[str, Mapping], bool]:
    """``{method: report}`` and whether a single report (no mapping) was given."""
    if _is_report(reports):
        return {str(reports.get("model", {}).get("name", "model")): reports}, True
    if not isinstance(reports, Mapping) or not reports:
        raise ValueError("`reports` must be a robustness report or a non-empty mapping {method name: report}.")
    for name, report in reports.items():
        if not isinstance(report, Mapping):
            raise ValueError(f"`reports[{name!r}]` must be a robustness report (a mapping), got {type(report)}.")
    return {str(name): report for name, report in reports.items()}, False


def _value(metrics: Any, metric: str, where: str) -> float:
    if not isinstance(metrics, Mapping) or metric not in metrics:
        raise ValueError(f"{where} lacks the metric {metric!r}.")
    value = metrics[metric]
    return math.nan if value is None else float(value)


def _curves(report: Mapping, metric: str, where: str) -> Dict[str, Curve]:
    """``{attack: curve}`` of one report, attacks in order of first appearance, the worst case last."""
    results = report.get("results")
    if not results:
        raise ValueError(f"{where} has no results.")
    clean = _value(report.get("clean"), metric, f"{where} (clean metrics)")
    points: Dict[str, Dict[float, Tuple[str, float]]] = {}
    for i, row in enumerate(results):
        attack = str(row.get("attack", "attack"))
        if row.get("eps") is None:
            raise ValueError(f"{where}, results[{i}] has no eps.")
        eps = float(row["eps"])
        label = str(row.get("eps_label") or f"{eps:.4g}")
        value = _value(row.get("metrics"), metric, f"{where}, results[{i}] ({attack}, eps {label})")
        points.setdefault(attack, {}).setdefault(eps, (label, value))
    order = sorted(points, key=lambda attack: attack.lower() == WORST_CASE)  # stable: first appearance kept
    return {
        attack: [(0.0, "0", clean)] + [(eps, *points[attack][eps]) for eps in sorted(points[attack]) if eps != 0.0]
        for attack in order
    }


def _eps_ticks(curves: List[Curve]) -> Dict[float, Tuple[int, str]]:
    """``{eps: (position, tick label)}``: the budgets of all curves, equally spaced in increasing order."""
    labels: Dict[float, str] = {}
    for curve in curves:
        for eps, label, _ in curve:
            labels.setdefault(eps, label)
    return {eps: (i, labels[eps]) for i, eps in enumerate(sorted(labels))}


def _draw(ax: Axes, curve: Curve, ticks: Dict[float, Tuple[int, str]], label: str, index: int) -> None:
    xs = [ticks[eps][0] for eps, _, _ in curve]
    ys = [value for _, _, value in curve]
    ax.plot(xs, ys, marker=_MARKERS[index % len(_MARKERS)], color=f"C{index % 10}", label=label, clip_on=False)


def _style(ax: Axes, ticks: Dict[float, Tuple[int, str]], metric: str, norm: str, unit_range: bool) -> None:
    ax.set_xticks([pos for pos, _ in ticks.values()], [label for _, label in ticks.values()])
    ax.set_xlabel(f"eps ({norm})" if norm else "eps")
    ax.set_ylabel(f"robust {metric}")
    if unit_range:
        ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)


def plot_robustness_curves(
    reports: Mapping[str, Any], path: PathLike, metric: Optional[str] = None, title: Optional[str] = None
) -> Path:
    """Plot a metric against the perturbation budget eps and write the figure as a PNG.

    Each curve starts at eps 0 with the metric of the clean inputs, followed by the metric under attack at
    every budget of the report (ticks labelled with the rows' ``eps_label``, equally spaced). The y axis spans
    [0, 1] when all values lie in it.

    With a mapping ``{method: report}`` (e.g. ``{"NAT": r1, "PGD-AT": r2}``) there is one subplot per attack,
    in order of first appearance with the "worst-case" rows last, and one line per method. With a single report
    there is one plot with one line per attack.

    Args:
        reports: a robustness report (``schema`` "monai_adv.robustness_report") or a mapping of method names
            to such reports.
        path: the PNG file to write (replaced atomically; missing folders are created).
        metric: the metric to plot; defaults to the ``primary_metric`` of the (first) report.
        title: figure title; a default naming the metric (and the model of a single report) when omitted.

    Returns:
        the path written.

    Raises:
        ValueError: when a report has no results, lacks the metric (in its clean metrics or in a row), or
            ``metric`` is omitted and the first report names no primary metric.
    """
    named, single = _named_reports(reports)
    first_name, first = next(iter(named.items()))
    if metric is None:
        metric = first.get("primary_metric")
        if not metric:
            raise ValueError(f"`metric` is not given and the report of {first_name!r} names no primary_metric.")
    curves = {name: _curves(report, metric, f"The report of {name!r}") for name, report in named.items()}
    ticks = _eps_ticks([curve for per_attack in curves.values() for curve in per_attack.values()])
    values = [v for per_attack in curves.values() for curve in per_attack.values() for _, _, v in curve]
    unit_range = all(0.0 <= v <= 1.0 for v in values if not math.isnan(v))
    norm = str(next((r["norm"] for r in named.values() if r.get("norm")), ""))

    if single:
        fig = new_figure(6.4, 4.4)
        ax = fig.add_subplot()
        for index, (attack, curve) in enumerate(curves[first_name].items()):
            _draw(ax, curve, ticks, attack, index)
        _style(ax, ticks, metric, norm, unit_range)
        ax.legend(title="attack")
        model = first.get("model", {}).get("name") if isinstance(first.get("model"), Mapping) else None
        ax.set_title(title if title is not None else (f"{model}: robust {metric}" if model else f"robust {metric}"))
        return save_figure(fig, path)

    attacks: List[str] = []
    for per_attack in curves.values():
        attacks += [attack for attack in per_attack if attack not in attacks]
    attacks.sort(key=lambda attack: attack.lower() == WORST_CASE)
    ncols = min(3, len(attacks))
    nrows = math.ceil(len(attacks) / ncols)
    fig = new_figure(4.4 * ncols, 3.6 * nrows + 0.8)
    handles: Dict[str, Any] = {}
    for i, attack in enumerate(attacks):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for index, (name, per_attack) in enumerate(curves.items()):
            if attack in per_attack:
                _draw(ax, per_attack[attack], ticks, name, index)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
        _style(ax, ticks, metric, norm, unit_range)
        ax.set_title(attack)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6))
    fig.suptitle(title if title is not None else f"robust {metric} under attack")
    return save_figure(fig, path)


def plot_min_norm_curve(report: Mapping[str, Any], path: PathLike, title: Optional[str] = None) -> Path:
    """Plot the report's ``curve`` (robust accuracy against eps from one minimum-norm run, alone and combined with
    the suite) next to the robust accuracy of every fixed-budget attack at its budgets, and write it as a PNG.

    Args:
        report: a robustness report with a ``curve`` (see ``RobustnessEvaluator(min_norm_attack=...)``).
        path: the PNG file to write (replaced atomically; missing folders are created).
        title: figure title; a default naming the model when omitted.

    Raises:
        ValueError: when the report has no curve.
    """
    curve = report.get("curve") if isinstance(report, Mapping) else None
    if not curve:
        raise ValueError("The report has no `curve`: evaluate with RobustnessEvaluator(min_norm_attack='fmn').")
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax.plot(curve["eps"], curve["robust_accuracy"], "-", color="C0", label=f"{curve['attack']} (one run)")
    ax.plot(curve["eps"], curve["combined_robust_accuracy"], "--", color="k", label="combined with the suite")
    attacks: List[str] = []
    for row in report.get("results", []):
        if row["attack"] not in attacks:
            attacks.append(row["attack"])
    for index, attack in enumerate(attacks):
        rows = [r for r in report["results"] if r["attack"] == attack]
        values = [r["metrics"].get("accuracy") for r in rows]
        points = [(r["eps"], v) for r, v in zip(rows, values) if v is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, _MARKERS[index % len(_MARKERS)], color=f"C{index + 1}", label=attack, markersize=7)
    budgets = sorted({r["eps"] for r in report.get("results", [])})
    labels = dict(zip(curve["eps"], curve["eps_labels"]))
    ax.set_xticks(budgets, [labels.get(e, f"{e:g}") for e in budgets], rotation=45, fontsize="small")
    ax.set_xlim(0, max(curve["eps"]))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"eps ({report.get('norm', '')})")
    ax.set_ylabel("robust accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    model = report.get("model", {}).get("name") if isinstance(report.get("model"), Mapping) else None
    ax.set_title(title if title is not None else f"{model + ': ' if model else ''}robust accuracy against eps")
    return save_figure(fig, path)
