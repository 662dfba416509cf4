# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Clean and adversarial examples side by side with their amplified perturbation, for classification or
segmentation (ground truth and predicted contours)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.axes import Axes

from monai_adv.visualize.figures import PathLike, new_figure, save_figure
from monai_adv.visualize.slices import ArrayLike, as_numpy, display_slice, mid_slice, show_image

__all__ = ["plot_adversarial_examples"]

_CONTOUR_COLORS = {"label": "lime", "clean": "yellow", "adversarial": "red"}


def _batch(data: ArrayLike, name: str) -> np.ndarray:
    array = as_numpy(data)
    if array.ndim not in (4, 5):
        raise ValueError(f"`{name}` must have shape (N, C, H, W) or (N, C, H, W, D), got {array.shape}.")
    return array


def _class_labels(data: Optional[ArrayLike], n: int, name: str) -> Optional[np.ndarray]:
    """Class indices (N,) or multi-hot (N, K); an (N, 1) column counts as indices."""
    if data is None:
        return None
    array = as_numpy(data)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim not in (1, 2) or array.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) (class indices) or ({n}, K) (multi-hot), got {array.shape}.")
    return array


def _class_name(value: np.ndarray, class_names: Optional[Sequence[str]]) -> str:
    """The name of a class index, or the names of the active labels of a multi-hot row joined by ","."""

    def name(index: int) -> str:
        return str(class_names[index]) if class_names is not None and 0 <= index < len(class_names) else str(index)

    if np.ndim(value) == 0:
        return name(int(value))
    active = np.flatnonzero(np.asarray(value, dtype=np.float64) > 0.5)
    return ",".join(name(int(i)) for i in active) if active.size else "none"


def _label_maps(segmentation: Mapping[str, ArrayLike], shape: tuple) -> dict:
    maps = {}
    for key, data in segmentation.items():
        if key not in _CONTOUR_COLORS:
            raise ValueError(f"`segmentation` keys must be among {sorted(_CONTOUR_COLORS)}, got {key!r}.")
        array = as_numpy(data)
        if array.ndim == len(shape) - 1:
            array = array[:, None]
        if array.ndim != len(shape) or array.shape[0] != shape[0] or array.shape[2:] != shape[2:]:
            raise ValueError(
                f'`segmentation["{key}"]` must have shape ({shape[0]}, 1, {", ".join(map(str, shape[2:]))}) '
                f"like `images`, got {array.shape}."
            )
        maps[key] = array
    return maps


def _indices(label_map: np.ndarray) -> np.ndarray:
    """Integer class indices of one (C, *spatial) map: as is for one channel, argmax over one-hot channels."""
    return (label_map[0] if label_map.shape[0] == 1 else np.argmax(label_map, axis=0)).astype(np.int64)


def _dice(prediction: np.ndarray, label: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in the prediction or the ground truth (1 when none is)."""
    classes = np.union1d(np.unique(prediction), np.unique(label))
    scores = []
    for c in classes[classes > 0]:
        p, g = prediction == c, label == c
        scores.append(2.0 * np.logical_and(p, g).sum() / (p.sum() + g.sum()))
    return float(np.mean(scores)) if scores else 1.0


def _contours(ax: Axes, label_slice: np.ndarray, color: str) -> None:
    for c in np.unique(label_slice):
        mask = label_slice == c
        if c > 0 and not mask.all():
            ax.contour(mask.astype(np.float64), levels=[0.5], colors=color, linewidths=1.2)


def plot_adversarial_examples(
    images: ArrayLike,
    adversarial: ArrayLike,
    path: PathLike,
    labels: Optional[ArrayLike] = None,
    clean_predictions: Optional[ArrayLike] = None,
    adversarial_predictions: Optional[ArrayLike] = None,
    class_names: Optional[Sequence[str]] = None,
    segmentation: Optional[Mapping[str, ArrayLike]] = None,
    amplify: Optional[float] = None,
    max_samples: int = 8,
) -> Path:
    """Plot clean and adversarial examples with their perturbation and write the figure as a PNG.

    One row per sample (the first ``max_samples``), three columns: the clean image, the adversarial image (both
    on the intensity scale of the clean image) and the perturbation ``adversarial - images`` multiplied by the
    amplification factor, in a diverging colour map centred at 0 whose ends are at plus and minus half the
    intensity range of the clean images shown. 3D samples are shown by their axial mid-slice (RGB perturbations
    by their channel mean). Titles name the predicted (and true) classes when given; a wrong adversarial
    prediction is titled in red.

    For segmentation, the contours of the ground truth (green) are drawn on both images, those of the clean
    prediction (yellow) on the clean image and those of the adversarial prediction (red) on the adversarial
    image; the titles give the Dice of each prediction (mean over the foreground classes, on the whole sample).

    Args:
        images: clean inputs, (N, C, H, W) or (N, C, H, W, D).
        adversarial: adversarial inputs, the shape of ``images``.
        path: the PNG file to write (replaced atomically; missing folders are created).
        labels: true classes, indices (N,) or multi-hot (N, K).
        clean_predictions: predicted classes of the clean inputs, indices (N,) or multi-hot (N, K).
        adversarial_predictions: predicted classes of the adversarial inputs, indices (N,) or multi-hot (N, K).
        class_names: names of the class indices; the indices themselves are shown otherwise.
        segmentation: integer label maps ``{"label": ..., "clean": ..., "adversarial": ...}``, each
            (N, 1, *spatial) (any of the keys may be left out; one-hot (N, K, *spatial) maps are accepted).
        amplify: factor applied to the perturbation; by default the largest absolute perturbation shown reaches
            the end of the colour map.
        max_samples: most rows to draw.

    Returns:
        the path written.

    Raises:
        ValueError: when an argument has the wrong shape or does not match ``images``.
    """
    clean = _batch(images, "images")
    adv = _batch(adversarial, "adversarial")
    if adv.shape != clean.shape:
        raise ValueError(f"`adversarial` must have the shape of `images` {clean.shape}, got {adv.shape}.")
    if max_samples < 1:
        raise ValueError(f"`max_samples` must be at least 1, got {max_samples}.")
    n = clean.shape[0]
    truth = _class_labels(labels, n, "labels")
    pred_clean = _class_labels(clean_predictions, n, "clean_predictions")
    pred_adv = _class_labels(adversarial_predictions, n, "adversarial_predictions")
    maps = _label_maps(segmentation, clean.shape) if segmentation else {}
    rows = min(n, int(max_samples))

    shown_clean = [display_slice(clean[i], "images") for i in range(rows)]
    shown_adv = [display_slice(adv[i], "adversarial") for i in range(rows)]
    deltas = [a - c for a, c in zip(shown_adv, shown_clean)]
    deltas = [d.mean(axis=-1) if d.ndim == 3 else d for d in deltas]
    lo, hi = float(min(s.min() for s in shown_clean)), float(max(s.max() for s in shown_clean))
    half_range = (hi - lo) / 2.0 if hi > lo else 0.5
    if amplify is None:
        largest = max(float(np.abs(d).max()) for d in deltas)
        amplify = half_range / largest if largest > 0 else 1.0

    fig = new_figure(9.0, 3.1 * rows)
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        ax_clean, ax_adv, ax_delta = axes[i]
        lo_i, hi_i = float(shown_clean[i].min()), float(shown_clean[i].max())
        show_image(ax_clean, shown_clean[i], lo_i, hi_i)
        show_image(ax_adv, shown_adv[i], lo_i, hi_i)
        image = ax_delta.imshow(
            amplify * deltas[i], cmap="seismic", vmin=-half_range, vmax=half_range, interpolation="nearest"
        )
        ax_delta.set_axis_off()
        fig.colorbar(image, ax=ax_delta, fraction=0.046, pad=0.02)

        clean_title, adv_title, adv_color = "clean", "adversarial", "black"
        if pred_clean is not None:
            clean_title += f": {_class_name(pred_clean[i], class_names)}"
        if truth is not None:
            clean_title += f" (true {_class_name(truth[i], class_names)})"
        if pred_adv is not None:
            adv_title += f": {_class_name(pred_adv[i], class_names)}"
            if truth is not None and not np.array_equal(pred_adv[i], truth[i]):
                adv_color = "red"
        if maps:
            sample_maps = {key: _indices(value[i]) for key, value in maps.items()}
            slices = {key: mid_slice(value[None]) for key, value in sample_maps.items()}
            if "label" in slices:
                _contours(ax_clean, slices["label"], _CONTOUR_COLORS["label"])
                _contours(ax_adv, slices["label"], _CONTOUR_COLORS["label"])
            for key, ax in (("clean", ax_clean), ("adversarial", ax_adv)):
                if key in slices:
                    _contours(ax, slices[key], _CONTOUR_COLORS[key])
            if "label" in sample_maps:
                if "clean" in sample_maps:
                    clean_title += f", Dice {_dice(sample_maps['clean'], sample_maps['label']):.2f}"
                if "adversarial" in sample_maps:
                    adv_title += f", Dice {_dice(sample_maps['adversarial'], sample_maps['label']):.2f}"
        ax_clean.set_title(clean_title, fontsize=9)
        ax_adv.set_title(adv_title, fontsize=9, color=adv_color)
        ax_delta.set_title(f"perturbation x{amplify:.3g}", fontsize=9)
    return save_figure(fig, path)
