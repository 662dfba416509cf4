# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Figures of the threat models beyond the per-image eps-ball: universal perturbations, patches, corruptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from monai_adv.visualize.figures import PathLike, new_figure, save_figure
from monai_adv.visualize.slices import as_numpy, display_slice, show_image

__all__ = ["plot_universal_perturbations", "plot_image_grid", "plot_threat_families"]


def plot_universal_perturbations(
    perturbations: Mapping[str, Any],
    path: PathLike,
    image: Optional[Any] = None,
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
) -> Path:
    """Each universal perturbation (C, *spatial) as a map in a diverging colour scale (its own symmetric range,
    written in the title), and with ``image`` (C, *spatial) the image with the perturbation added below it.
    3D perturbations show their axial mid-slice.

    Args:
        perturbations: ``{label: perturbation}``, e.g. ``{"uap @ 4/255": tensor}``.
        path: the PNG to write.
        image: an image of the perturbations' shape, or None.
        value_range: the images' intensity range (the perturbed image is clipped to it).
    """
    if not perturbations:
        raise ValueError("`perturbations` must hold at least one perturbation.")
    rows = 1 if image is None else 2
    fig = new_figure(2.4 * len(perturbations), 2.4 * rows + 0.3)
    axes = np.atleast_2d(fig.subplots(rows, len(perturbations), squeeze=False))
    for column, (label, perturbation) in enumerate(perturbations.items()):
        delta = display_slice(perturbation, "perturbations")
        delta = delta if delta.ndim == 2 else delta.mean(axis=-1)
        scale = float(np.abs(delta).max()) or 1.0
        ax = axes[0, column]
        shown = ax.imshow(delta, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"{label}\n(colour range +/-{scale:.3g})", fontsize=8)
        fig.colorbar(shown, ax=ax, shrink=0.7)
        if image is not None:
            perturbed = as_numpy(image) + as_numpy(perturbation)
            if value_range is not None:
                perturbed = np.clip(perturbed, *value_range)
            lo, hi = (None, None) if value_range is None else value_range
            show_image(axes[1, column], display_slice(perturbed, "image"), lo, hi)
            axes[1, column].set_title("image + perturbation", fontsize=8)
    return save_figure(fig, path)


def plot_image_grid(
    rows: Mapping[str, Sequence[Any]],
    path: PathLike,
    columns: Sequence[str],
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    title: Optional[str] = None,
) -> Path:
    """A grid of images on one intensity scale: one row per entry of ``rows`` (its label on the left), one column
    per label of ``columns`` (e.g. corruptions x severities, or patch attacks x patch sizes). 3D images show their
    axial mid-slice.

    Args:
        rows: ``{row label: [image (C, *spatial) per column]}``.
        path: the PNG to write.
        columns: the column titles.
        value_range: the shared intensity scale (None: each image's own).
        title: the figure's title.
    """
    if not rows:
        raise ValueError("`rows` must hold at least one row of images.")
    for label, images in rows.items():
        if len(images) != len(columns):
            raise ValueError(f"row {label!r} of `rows` has {len(images)} images for {len(columns)} `columns`.")
    fig = new_figure(1.6 * len(columns) + 1.2, 1.6 * len(rows) + (0.4 if title else 0.1))
    axes = np.atleast_2d(fig.subplots(len(rows), len(columns), squeeze=False))
    lo, hi = (None, None) if value_range is None else value_range
    for r, (label, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            show_image(ax, display_slice(image, "rows"), lo, hi)
            if r == 0:
                ax.set_title(str(columns[c]), fontsize=8)
            if c == 0:
                ax.text(-0.08, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_threat_families(report: Mapping[str, Any], path: PathLike, title: Optional[str] = None) -> Path:
    """The report's primary metric under patches (against patch size) and under each corruption (against
    severity), side by side, with the clean value as a dashed line.

    Args:
        report: a robustness report with a ``patches`` and/or ``corruptions`` section.
        path: the PNG to write.
        title: the figure's title.
    """
    metric = report["primary_metric"]
    panels = [name for name in ("patches", "corruptions") if report.get(name)]
    if not panels:
        raise ValueError("`report` has neither a `patches` nor a `corruptions` section to plot.")
    fig = new_figure(4.6 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    clean = report["clean"].get(metric)
    for ax, panel in zip(axes, panels):
        if panel == "patches":
            rows = report["patches"]
            labels = list(dict.fromkeys(r["size_label"] for r in rows))
            for attack in dict.fromkeys(r["attack"] for r in rows):
                values = {r["size_label"]: r["metrics"].get(metric) for r in rows if r["attack"] == attack}
                ax.plot(range(len(labels)), [_nan(values.get(label)) for label in labels], marker="o", label=attack)
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlabel("patch size (share of the image, or side)")
        else:
            section = report["corruptions"]
            for name in dict.fromkeys(r["corruption"] for r in section["results"]):
                points = [
                    (r["severity"], r["metrics"].get(metric)) for r in section["results"] if r["corruption"] == name
                ]
                ax.plot([p[0] for p in points], [_nan(p[1]) for p in points], marker=".", label=name)
            ax.set_xticks(section["severities"])
            ax.set_xlabel("severity")
            mean = section["mean"].get(metric)
            if mean is not None:
                ax.set_title(f"mean over corruptions: {mean:.3f}", fontsize=9)
        if clean is not None:
            ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label="clean")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)
