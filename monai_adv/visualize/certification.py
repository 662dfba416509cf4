# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Certified robustness curves from certification reports: certified accuracy (classification) or certified Dice
and certified-voxel fraction (segmentation) against the L2 radius."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from matplotlib.axes import Axes

from monai_adv.visualize.figures import PathLike, new_figure, save_figure

__all__ = ["plot_certified_curves"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _named_reports(reports: Any) -> Tuple[Dict[str, Mapping], bool]:
    """``{name: report}`` and whether a single report was given."""
    if isinstance(reports, Mapping) and "curve" in reports:
        model = reports.get("model")
        return {str(model.get("name", "model")) if isinstance(model, Mapping) else "model": reports}, True
    if not isinstance(reports, Mapping) or not reports:
        raise ValueError("`reports` must be a certification report or a non-empty mapping {name: report}.")
    for name, report in reports.items():
        if not isinstance(report, Mapping) or "curve" not in report:
            raise ValueError(f"`reports[{name!r}]` must be a certification report (with a 'curve').")
    return {str(name): report for name, report in reports.items()}, False


def _accuracy_steps(report: Mapping) -> Optional[Tuple[List[float], List[float]]]:
    """The exact certified accuracy curve of a classification report from its per-sample radii: the fraction of
    samples right with a radius >= r, a step function of r (None without per-sample rows)."""
    samples = report.get("samples") or []
    if not samples:
        return None
    key = "radius_min" if report["task"] == "multilabel" else "radius"
    radii = sorted(float(s[key]) for s in samples if s.get("correct"))
    total = len(samples)
    end = max(max(report["radii"]), radii[-1] if radii else 0.0)
    xs, ys = [0.0], [len(radii) / total]
    for i, r in enumerate(radii):  # the curve drops after each correct sample's radius
        xs += [r, r]
        ys += [ys[-1], (len(radii) - i - 1) / total]
    xs.append(end)
    ys.append(ys[-1])
    return xs, ys


def _series(report: Mapping, key: str) -> Tuple[List[float], List[float]]:
    points = [(float(p["radius"]), p.get(key)) for p in report["curve"]]
    return [r for r, v in points if v is not None], [float(v) for _, v in points if v is not None]


def _style(ax: Axes, ylabel: str) -> None:
    ax.set_xlabel("L2 radius (input units)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlim(left=0.0)
    ax.grid(True, alpha=0.3)


def _label(name: str, report: Mapping, several: bool) -> str:
    return f"{name}, sigma {report['sigma']:g}" if several else f"sigma {report['sigma']:g}"


def plot_certified_curves(reports: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """Plot the certified curves of one or several certification reports and write the figure as a PNG.

    Classification and multi-label: certified accuracy against the L2 radius, drawn exactly from the per-sample
    radii (a step down at each right sample's radius) with the report's radii marked. Segmentation: two panels,
    the mean certified Dice and the mean fraction of certified voxels against the radius (markers at the report's
    radii; the voxel tests are redone per radius, so only those radii are known).

    Args:
        reports: a certification report (schema "monai_adv.certification_report") or ``{name: report}`` (e.g.
            several sigmas or models) of one task.
        path: the PNG file to write (replaced atomically; missing folders are created).
        title: the figure title; a default names the model, the draws and the guarantee level.

    Returns:
        the path written.
    """
    named, single = _named_reports(reports)
    tasks = {r["task"] for r in named.values()}
    if len(tasks) != 1:
        raise ValueError(f"The reports must be of one task, got {sorted(tasks)}.")
    task = tasks.pop()
    first_name, first = next(iter(named.items()))
    several = len(named) > 1
    default = f"{first_name + ': ' if single else ''}certified robustness (L2)"
    if len({(r["n"], r["alpha"]) for r in named.values()}) == 1:  # the settings the curves share
        default += f"\nn={first['n']:,} draws, each certificate holds with probability >= {1 - first['alpha']:g}"
    if task == "segmentation":
        fig = new_figure(10.0, 4.2)
        panels = [("certified_dice", "certified Dice"), ("certified_fraction", "certified voxels (fraction)")]
        for k, (key, ylabel) in enumerate(panels):
            ax = fig.add_subplot(1, 2, k + 1)
            for index, (name, report) in enumerate(named.items()):
                xs, ys = _series(report, key)
                ax.plot(
                    xs,
                    ys,
                    marker=_MARKERS[index % len(_MARKERS)],
                    color=f"C{index % 10}",
                    label=_label(name, report, several),
                )
            _style(ax, ylabel)
            ax.legend()
    else:
        fig = new_figure(6.4, 4.4)
        ax = fig.add_subplot()
        for index, (name, report) in enumerate(named.items()):
            color = f"C{index % 10}"
            steps = _accuracy_steps(report)
            if steps is not None:
                ax.plot(*steps, color=color, label=_label(name, report, several))
            xs, ys = _series(report, "certified_accuracy")
            ax.plot(
                xs,
                ys,
                linestyle="none",
                marker=_MARKERS[index % len(_MARKERS)],
                color=color,
                label=None if steps is not None else _label(name, report, several),
            )
        _style(ax, "certified accuracy")
        ax.legend()
    fig.suptitle(title if title is not None else default)
    return save_figure(fig, path)
