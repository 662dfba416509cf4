# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Windows and the L2 moves of the Square attack, for any number of spatial dims."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["window_starts", "window_index", "window_mask", "eta_pattern", "l2_start", "l2_propose", "l2_window_side"]


def window_starts(uniforms: torch.Tensor, side: int, spatial: Sequence[int]) -> torch.Tensor:
    """Per-sample window corners (n, dims) from uniforms (n, dims), uniform over the valid positions."""
    sizes = torch.tensor(spatial, device=uniforms.device)
    return (uniforms * (sizes - side + 1)).floor().long().minimum(sizes - side)


def window_index(starts: torch.Tensor, side: int, spatial: Sequence[int]) -> torch.Tensor:
    """Flat indices (n, side ** dims) into the flattened spatial dims of each sample's cube window, row-major."""
    strides = [math.prod(spatial[d + 1 :]) for d in range(len(spatial))]
    grids = torch.meshgrid(*[torch.arange(side, device=starts.device)] * len(spatial), indexing="ij")
    offsets = sum(g.flatten() * stride for g, stride in zip(grids, strides))
    corner = sum(starts[:, d] * stride for d, stride in enumerate(strides))
    return corner[:, None] + offsets


def window_mask(starts: torch.Tensor, side: int, spatial: Sequence[int]) -> torch.Tensor:
    """Boolean (n, *spatial), True inside each sample's cube window of the given side."""
    n = starts.shape[0]
    window = torch.ones((n, *spatial), dtype=torch.bool, device=starts.device)
    for d, size in enumerate(spatial):
        ar = torch.arange(size, device=starts.device)
        inside = (ar >= starts[:, d, None]) & (ar < starts[:, d, None] + side)
        shape = [n] + [1] * len(spatial)
        shape[1 + d] = size
        window &= inside.reshape(shape)
    return window


@lru_cache(maxsize=64)
def _rectangles(shape: Tuple[int, ...]) -> torch.Tensor:
    """Concentric boxes around the centre with weights 1 / (k + 1)^2, unit L2 norm."""
    delta = torch.zeros(shape, dtype=torch.float64)
    centres = [s // 2 for s in shape]
    for k in range(max(s // 2 + 1 for s in shape)):
        region = tuple(slice(max(c - k, 0), min(c + k + 1, s)) for c, s in zip(centres, shape))
        delta[region] += 1.0 / (k + 1) ** 2
    return delta / delta.norm()


@lru_cache(maxsize=64)
def eta_pattern(side: int, dims: int, axis: int) -> torch.Tensor:
    """The Square attack's L2 window pattern: two halves (split along ``axis``) of concentric boxes with
    opposite signs, unit L2 norm, shape (side,) * dims."""
    half = side // 2
    first, second = [side] * dims, [side] * dims
    first[axis], second[axis] = half, side - half
    parts = [-_rectangles(tuple(second))]
    if half > 0:
        parts.insert(0, _rectangles(tuple(first)))
    delta = torch.cat(parts, dim=axis)
    return delta / delta.norm()


def _patterns(side: int, dims: int, device, dtype) -> torch.Tensor:
    """The ``dims`` patterns (one per split axis), flattened: (dims, side ** dims)."""
    return torch.stack([eta_pattern(side, dims, a).flatten() for a in range(dims)]).to(device=device, dtype=dtype)


def _to_norm(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / norms).reshape(-1, *([1] * (delta.ndim - 1)))


def l2_window_side(fraction: float, spatial: Sequence[int]) -> int:
    """Odd window side >= 3 covering ``fraction`` of the positions, at most the smallest spatial size."""
    side = max(round((fraction * math.prod(spatial)) ** (1.0 / len(spatial))), 3)
    side += 1 - side % 2
    smallest = min(spatial)
    return side if side <= smallest else max(smallest - (1 - smallest % 2), 1)


def l2_start(
    x0: torch.Tensor, eps: float, generators: List[torch.Generator], mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """The L2 start: a grid of patterns, each with a random sign per channel and split axis, scaled to norm eps."""
    n, channels, spatial = x0.shape[0], x0.shape[1], tuple(x0.shape[2:])
    dims = len(spatial)
    side = max(min(spatial) // 5, 1)
    counts = [size // side for size in spatial]
    offsets = [(size - side * count) // 2 for size, count in zip(spatial, counts)]
    tiles = math.prod(counts)
    u = torch.stack([torch.rand(tiles * (channels + 1), generator=g, device=x0.device) for g in generators])
    u = u.reshape(n, tiles, channels + 1)
    patterns = _patterns(side, dims, x0.device, x0.dtype).reshape(dims, *([side] * dims))
    delta = torch.zeros_like(x0)
    for t, corner in enumerate(torch.cartesian_prod(*[torch.arange(c) for c in counts]).reshape(tiles, dims)):
        region = tuple(slice(off + int(c) * side, off + (int(c) + 1) * side) for off, c in zip(offsets, corner))
        signs = torch.where(u[:, t, :channels] < 0.5, -1.0, 1.0).to(x0.dtype)
        axes = (u[:, t, channels] * dims).floor().long().clamp_max(dims - 1)
        tile = signs.reshape(n, channels, *([1] * dims)) * patterns[axes][:, None]
        delta[(slice(None), slice(None), *region)] += tile
    if mask is not None:
        delta = delta * mask
    return _to_norm(delta, eps)


def l2_propose(
    x0: torch.Tensor,
    x_best: torch.Tensor,
    uniforms: torch.Tensor,
    side: int,
    eps: float,
    mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """One L2 Square move per sample, returned as a perturbation of norm eps.

    Mass moves into window 1 (a new pattern plus window 1's old content, renormalized to hold window 1's and
    window 2's old energy plus the unused budget) and window 2 is cleared, as in Andriushchenko et al. 2020.
    """
    n, channels, spatial = x0.shape[0], x0.shape[1], tuple(x0.shape[2:])
    dims = len(spatial)
    delta = x_best - x0
    first_starts = window_starts(uniforms[:, :dims], side, spatial)
    first = window_mask(first_starts, side, spatial)
    second = window_mask(window_starts(uniforms[:, dims : 2 * dims], side, spatial), side, spatial)
    # window 1's values by index (a boolean selection would need a host synchronisation for its size)
    index = window_index(first_starts, side, spatial)[:, None].expand(n, channels, -1)
    signs = torch.where(uniforms[:, 2 * dims : 2 * dims + channels] < 0.5, -1.0, 1.0).to(x0.dtype)
    axes = (uniforms[:, 2 * dims + channels] * dims).floor().long().clamp_max(dims - 1)

    norm_image = delta.flatten(1).norm(dim=1)
    norm_windows = (delta * (first | second)[:, None]).flatten(1).norm(dim=1)
    old = delta.flatten(2).gather(2, index)
    new = _patterns(side, dims, x0.device, x0.dtype)[axes][:, None] * signs[:, :, None]
    new = new + old / (old.norm(dim=-1, keepdim=True) + 1e-12)
    energy = (eps**2 - norm_image**2).clamp_min(0.0) / channels + norm_windows**2
    new = new / new.norm(dim=-1, keepdim=True).clamp_min(1e-12) * energy.sqrt()[:, None, None]
    delta = delta.masked_fill(second[:, None].expand_as(delta), 0.0)
    delta = delta.flatten(2).scatter(2, index, new).reshape(x0.shape)
    if mask is not None:
        delta = delta * mask
    return _to_norm(delta, eps)
