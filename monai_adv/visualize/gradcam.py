# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Grad-CAM of clean and adversarial inputs, computed with MONAI's ``GradCAM`` without changing the model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from monai.visualize import GradCAM

from monai_adv.visualize.figures import PathLike, new_figure, save_figure
from monai_adv.visualize.slices import ArrayLike, as_numpy, display_slice, mid_slice, show_image

__all__ = ["default_target_layer", "gradcam_maps", "plot_gradcam"]

_CAM_COLORMAP = "jet"
_CAM_ALPHA = 0.45
# every per-module hook registry of torch.nn.Module; MONAI's GradCAM registers hooks it never removes
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


def default_target_layer(model: nn.Module) -> str:
    """The dotted name of the last ``nn.Conv2d`` or ``nn.Conv3d`` module of ``model`` (in registration order).

    For networks whose blocks end with a projection shortcut (e.g. MONAI's ``ResNet``) this may be the
    shortcut convolution; pass a block name (e.g. ``"layer4"``) as target layer to use the block output instead.

    Args:
        model: the network.

    Raises:
        ValueError: when ``model`` has no 2D or 3D convolution.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Conv3d))]
    if not names:
        raise ValueError(f"`model` ({type(model).__name__}) has no nn.Conv2d or nn.Conv3d layer; give a target layer.")
    return names[-1]


@contextmanager
def _model_state_kept(model: nn.Module) -> Iterator[None]:
    """Restore on exit the training flags, hooks, ``inplace`` flags and parameter gradients of ``model``."""
    modules = list(model.modules())
    training = [module.training for module in modules]
    hooks = [{name: set(getattr(module, name, {})) for name in _HOOK_DICTS} for module in modules]
    full_backward = [module.__dict__.get("_is_full_backward_hook") for module in modules]
    inplace = [(module, module.__dict__["inplace"]) for module in modules if "inplace" in module.__dict__]
    params = list(model.parameters())
    grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    try:
        yield
    finally:
        for module, flag, kept, full in zip(modules, training, hooks, full_backward):
            module.training = flag
            for name, keys in kept.items():
                registry = getattr(module, name, None)
                for key in [key for key in (registry or {}) if key not in keys]:
                    del registry[key]
            if "_is_full_backward_hook" in module.__dict__:
                module._is_full_backward_hook = full
        for module, flag in inplace:
            module.__dict__["inplace"] = flag
        with torch.no_grad():
            for p, (grad, copy) in zip(params, grads):
                if grad is not None:
                    grad.copy_(copy)
                p.grad = grad


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch linearly to [0, 1] (a constant map becomes 0)."""
    flat = maps.detach().reshape(maps.shape[0], -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    scaled = (flat - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return scaled.reshape(maps.shape)


def _inputs(images: ArrayLike, model: nn.Module, name: str) -> torch.Tensor:
    x = images.detach().as_subclass(torch.Tensor) if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    if x.ndim not in (4, 5):
        raise ValueError(f"`{name}` must have shape (N, C, H, W) or (N, C, H, W, D), got {tuple(x.shape)}.")
    param = next(model.parameters(), None)
    if param is not None:
        return x.to(device=param.device, dtype=param.dtype if param.is_floating_point() else torch.float32)
    return x.float()


def _gradcam(
    model: nn.Module, images: ArrayLike, target_layer: Optional[str], name: str = "images"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of the predicted classes (N, 1, *spatial) in [0, 1], and the predicted classes (N,)."""
    layer = default_target_layer(model) if target_layer is None else target_layer
    if layer not in dict(model.named_modules()):
        raise ValueError(f"`target_layer` {layer!r} is not a module of `model`.")
    x = _inputs(images, model, name)
    maps = torch.zeros((x.shape[0], 1, *x.shape[2:]), device=x.device)
    with _model_state_kept(model):
        model.eval()
        with torch.no_grad():
            logits = model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError("Grad-CAM needs a classifier returning logits of shape (N, K).")
        predictions = logits.argmax(dim=1)
        cam = GradCAM(nn_module=model, target_layers=layer, postprocessing=_unit_range)
        with torch.enable_grad():
            # one pass per predicted class: MONAI scores a whole batch with one class index
            for k in predictions.unique():
                index = (predictions == k).nonzero()[:, 0]
                subset = x[index].detach().requires_grad_(True)
                maps[index] = cam(subset, class_idx=int(k)).detach().to(maps.dtype)
        del cam
    return maps, predictions


def gradcam_maps(model: nn.Module, images: ArrayLike, target_layer: Optional[str] = None) -> torch.Tensor:
    """Grad-CAM of each sample's predicted class, scaled to [0, 1] per sample.

    The model is left exactly as found: training flags, parameter gradients and registered hooks are
    restored, and the maps are computed in evaluation mode (batch-norm statistics untouched).

    Args:
        model: a classifier returning logits (N, K).
        images: inputs (N, C, H, W) or (N, C, H, W, D).
        target_layer: dotted name of the layer whose activations are weighted; by default
            :func:`default_target_layer`.

    Returns:
        maps (N, 1, *spatial) in [0, 1], upsampled to the input size, on the model's device.

    Raises:
        ValueError: for inputs of the wrong rank, an unknown target layer, or a model without convolutions
            when ``target_layer`` is omitted.
    """
    return _gradcam(model, images, target_layer)[0]


def _class_name(index: int, class_names: Optional[Sequence[str]]) -> str:
    return str(class_names[index]) if class_names is not None and 0 <= index < len(class_names) else str(index)


def _checked_entries(entries: Sequence[Mapping[str, Any]]) -> list:
    if not entries:
        raise ValueError("`entries` must hold at least one model entry.")
    for j, entry in enumerate(entries):
        for key in ("model", "images", "adversarial"):
            if key not in entry:
                raise ValueError(f'`entries[{j}]` lacks "{key}".')
        clean, adv = as_numpy(entry["images"]), as_numpy(entry["adversarial"])
        if clean.ndim not in (4, 5):
            raise ValueError(f'`entries[{j}]["images"]` must have shape (N, C, H, W) or (N, C, H, W, D).')
        if adv.shape != clean.shape:
            raise ValueError(
                f'`entries[{j}]["adversarial"]` must have the shape of `entries[{j}]["images"]` {clean.shape}, '
                f"got {adv.shape}."
            )
    return list(entries)


def plot_gradcam(entries: Sequence[Mapping[str, Any]], path: PathLike, max_samples: int = 4) -> Path:
    """Plot Grad-CAM of clean and adversarial inputs for one or more models and write the figure as a PNG.

    One row per sample (the first ``max_samples`` common to all entries); for each model two columns, the clean
    and the adversarial input with the Grad-CAM of the predicted class overlaid, titled with the model name and
    the predicted class (in red on the adversarial input when the attack changed the prediction). 3D inputs are
    shown by their axial mid-slice. Each model is left exactly as found (see :func:`gradcam_maps`).

    Args:
        entries: one mapping per model: ``{"name": "NAT", "model": nn.Module, "images": (N, C, *spatial),
            "adversarial": (N, C, *spatial), "target_layer": "layer4" or None}``; optional ``"class_names"``.
        path: the PNG file to write (replaced atomically; missing folders are created).
        max_samples: most rows to draw.

    Returns:
        the path written.

    Raises:
        ValueError: when an entry lacks a key or its inputs have the wrong or mismatched shapes, or for the
            errors of :func:`gradcam_maps`.
    """
    entries = _checked_entries(entries)
    if max_samples < 1:
        raise ValueError(f"`max_samples` must be at least 1, got {max_samples}.")
    rows = min([int(max_samples)] + [len(entry["images"]) for entry in entries])
    cols = 2 * len(entries)
    fig = new_figure(2.7 * cols + 0.6, 2.7 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    for j, entry in enumerate(entries):
        name = str(entry.get("name", f"model {j}"))
        names = entry.get("class_names")
        panels = []
        for key in ("images", "adversarial"):
            maps, predictions = _gradcam(
                entry["model"], entry[key][:rows], entry.get("target_layer"), f'entries[{j}]["{key}"]'
            )
            panels.append((as_numpy(entry[key][:rows]), as_numpy(maps), predictions.cpu().tolist()))
        (clean, clean_maps, clean_pred), (adv, adv_maps, adv_pred) = panels
        for i in range(rows):
            shown = display_slice(clean[i], "images")
            lo, hi = float(np.min(shown)), float(np.max(shown))
            for col, image, cam, label, title in (
                (2 * j, shown, clean_maps[i], clean_pred[i], f"{name} clean"),
                (2 * j + 1, display_slice(adv[i], "adversarial"), adv_maps[i], adv_pred[i], f"{name} adversarial"),
            ):
                ax = axes[i][col]
                show_image(ax, image, lo, hi)
                ax.imshow(mid_slice(cam), cmap=_CAM_COLORMAP, alpha=_CAM_ALPHA, vmin=0.0, vmax=1.0)
                changed = col % 2 == 1 and label != clean_pred[i]
                ax.set_title(f"{title}: {_class_name(label, names)}", fontsize=9, color="red" if changed else "black")
    colors = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=_CAM_COLORMAP)
    fig.colorbar(colors, ax=axes, shrink=0.8, label="Grad-CAM")
    return save_figure(fig, path)
