# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""2D views of channel-first 2D or 3D samples: the axial mid-slice of volumes, grey or RGB images for display."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from matplotlib.axes import Axes

__all__ = ["as_numpy", "display_slice", "mid_slice", "show_image"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def as_numpy(data: ArrayLike) -> np.ndarray:
    """A NumPy copy of a tensor (any device, dtype or tensor subclass) or an array.

    Args:
        data: tensor or array.
    """
    if isinstance(data, torch.Tensor):
        tensor = data.detach().as_subclass(torch.Tensor).cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy().copy()
    return np.array(data)


def _channel_first_2d(data: ArrayLike, name: str) -> np.ndarray:
    """The (C, H, W) view of a (C, H, W) sample or of the axial mid-slice of a (C, H, W, D) sample."""
    array = as_numpy(data)
    if array.ndim not in (3, 4):
        raise ValueError(
            f"`{name}` must be one channel-first sample of shape (C, H, W) or (C, H, W, D), got shape {array.shape}."
        )
    if array.ndim == 4:
        array = array[..., array.shape[-1] // 2]
    return array


def display_slice(image: ArrayLike, name: str = "image") -> np.ndarray:
    """A 2D float array to display one channel-first sample.

    3D samples are shown by the middle slice of their last axis (the axial mid-slice). One channel gives a
    (H, W) grey image, three channels a (H, W, 3) RGB image; any other channel count shows channel 0.

    Args:
        image: one sample, (C, H, W) or (C, H, W, D).
        name: the argument name quoted in error messages.

    Returns:
        (H, W) or (H, W, 3) float array.

    Raises:
        ValueError: when ``image`` is neither 3D nor 4D.
    """
    array = _channel_first_2d(image, name).astype(np.float64)
    if array.shape[0] == 3:
        return np.moveaxis(array, 0, -1)
    return array[0]


def mid_slice(volume: ArrayLike, name: str = "volume") -> np.ndarray:
    """The 2D view of a channel-first map (label map, class activation map), with the slice rule of
    :func:`display_slice`.

    A single-channel map gives its (H, W) slice with the dtype kept (integer labels stay integers); a map
    with several channels is read as one-hot (or per-class scores) and gives the index of the largest channel.

    Args:
        volume: one map, (C, H, W) or (C, H, W, D).
        name: the argument name quoted in error messages.

    Returns:
        (H, W) array.

    Raises:
        ValueError: when ``volume`` is neither 3D nor 4D.
    """
    array = _channel_first_2d(volume, name)
    if array.shape[0] == 1:
        return array[0]
    return np.argmax(array, axis=0)


def show_image(ax: Axes, image: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None) -> None:
    """Draw a grey (H, W) or RGB (H, W, 3) image from :func:`display_slice` on ``ax``, without axis ticks.

    Args:
        ax: the axes to draw on.
        image: (H, W) or (H, W, 3) array.
        vmin: intensity shown black (defaults to the image minimum); lets several panels share one scale.
        vmax: intensity shown white (defaults to the image maximum).
    """
    lo = float(np.min(image)) if vmin is None else float(vmin)
    hi = float(np.max(image)) if vmax is None else float(vmax)
    if image.ndim == 3:
        span = hi - lo if hi > lo else 1.0
        ax.imshow(np.clip((image - lo) / span, 0.0, 1.0), interpolation="nearest")
    else:
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1.0, interpolation="nearest")
    ax.set_axis_off()
