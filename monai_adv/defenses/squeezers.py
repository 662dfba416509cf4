# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The squeezers of feature squeezing (Xu et al., "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", NDSS 2018): bit-depth reduction (:class:`~monai_adv.defenses.purifiers.BitDepthReduction`) and median
smoothing over windows of any side, even ones such as the paper's 2x2 (:class:`MedianSqueezer`), for 1D, 2D and 3D
images."""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from monai_adv.attacks.validation import check_int
from monai_adv.defenses.purifiers import BitDepthReduction

__all__ = ["MedianSqueezer", "make_squeezer"]


class MedianSqueezer(nn.Module):
    """Median smoothing (Xu et al., NDSS 2018) over a sliding window of every spatial dim, per channel.

    The window covers offsets ``-(k // 2)`` to ``(k - 1) // 2`` along a dim of side ``k`` (for an even side, the
    window reaches one voxel further back), edges are replicated, and the median of an even number of values is
    the upper of the two middle ones (as ``scipy.ndimage.median_filter``).

    Args:
        size: the window's side, one int for every spatial dim, or one per spatial dim.
    """

    def __init__(self, size: Union[int, Sequence[int]] = 2) -> None:
        super().__init__()
        sides = (size,) if isinstance(size, int) else tuple(size)
        if not sides or len(sides) > 3:
            raise ValueError(f"`size` must be an int or 1 to 3 ints, got {size!r}.")
        self.size = tuple(check_int(side, "size") for side in sides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.ndim - 2
        sides = self.size * dims if len(self.size) == 1 else self.size
        if len(sides) != dims:
            raise ValueError(f"MedianSqueezer of size {self.size} cannot smooth an input of {dims} spatial dim(s).")
        pads: List[int] = []
        for side in reversed(sides):  # F.pad takes the last dim first
            pads += [side // 2, (side - 1) // 2]
        windows = F.pad(x, pads, mode="replicate") if any(pads) else x
        for dim, side in enumerate(sides):
            windows = windows.unfold(2 + dim, side, 1)
        windows = windows.flatten(x.ndim)
        return windows.kthvalue(windows.shape[-1] // 2 + 1, dim=-1).values

    def extra_repr(self) -> str:
        return f"size={self.size}"


_SQUEEZER_NAME = re.compile(r"^(bit_depth_(\d+)|median_(\d+(?:x\d+){0,2}))$")


def make_squeezer(name: Union[str, Callable], value_range: Optional[Sequence[float]] = (0.0, 1.0)) -> Callable:
    """A squeezer from its name: ``"bit_depth_<bits>"`` (:class:`~monai_adv.defenses.purifiers.BitDepthReduction`),
    ``"median_<k>x<k>"`` or ``"median_<k>x<k>x<k>"`` (:class:`MedianSqueezer`; a window with equal sides applies to
    inputs of any number of spatial dims, e.g. ``"median_2x2"`` smooths a 3D volume over 2x2x2 windows). A callable
    is returned as it is.

    Args:
        name: the squeezer's name, or a callable ``x -> x'`` of the input's shape.
        value_range: the images' range, for bit-depth reduction.
    """
    if callable(name):
        return name
    match = _SQUEEZER_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f'`squeezers` must hold names "bit_depth_<bits>", "median_<k>x<k>", "median_<k>x<k>x<k>" or callables, '
            f"got {name!r}."
        )
    if match.group(2) is not None:
        if value_range is None:
            raise ValueError("`value_range`: bit-depth reduction needs the bounded (lo, hi) range of the images.")
        return BitDepthReduction(int(match.group(2)), value_range)
    sides = tuple(int(side) for side in match.group(3).split("x"))
    return MedianSqueezer(sides[0] if len(set(sides)) == 1 else sides)
