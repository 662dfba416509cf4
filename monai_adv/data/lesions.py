# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Procedural lesions and acquisition effects on real anatomy, 2D slices or 3D patches (pure PyTorch)."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["smooth_field", "random_warp", "lesion_mask", "apply_lesion", "acquisition"]


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def smooth_field(shape: Sequence[int], g: torch.Generator, coarse: int = 4) -> torch.Tensor:
    """A smooth random field in [-1, 1] of ``shape`` (2D or 3D): coarse Gaussian noise, upsampled."""
    dims = len(shape)
    noise = torch.randn((1, 1) + (coarse,) * dims, generator=g)
    mode = "bilinear" if dims == 2 else "trilinear"
    field = F.interpolate(noise, size=tuple(shape), mode=mode, align_corners=True)[0, 0]
    return field / field.abs().max().clamp_min(1e-6)


def random_warp(
    maps: torch.Tensor, size: int, g: torch.Generator, rotate: float = 10.0, scale: Tuple[float, float] = (0.9, 1.1)
) -> torch.Tensor:
    """Resample maps (C, *spatial) onto a (C, size, ..., size) grid with a random similarity transform and a
    small elastic displacement. The grid covers the whole input field of view at scale 1."""
    dims = maps.ndim - 1
    angles = [math.radians(_uniform(g, -rotate, rotate)) for _ in range(1 if dims == 2 else 3)]
    s = _uniform(g, *scale)
    if dims == 2:
        (a,) = angles
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    else:
        rot = torch.eye(3)
        for axis, a in enumerate(angles):
            c, si = math.cos(a), math.sin(a)
            i, j = [k for k in range(3) if k != axis]
            r = torch.eye(3)
            r[i, i], r[i, j], r[j, i], r[j, j] = c, -si, si, c
            rot = rot @ r
    shift = torch.tensor([_uniform(g, -0.05, 0.05) for _ in range(dims)])
    theta = torch.cat([rot / s, shift[:, None]], dim=1)[None]
    out_shape = (1, maps.shape[0]) + (size,) * dims
    grid = F.affine_grid(theta, out_shape, align_corners=False)
    elastic = torch.stack([smooth_field((size,) * dims, g, coarse=5) for _ in range(dims)], dim=-1)
    grid = grid + 0.02 * elastic[None]
    # the transform is drawn symmetrically, so it does not matter that the grid lists the axes last-first
    return F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def lesion_mask(
    tissue: torch.Tensor, g: torch.Generator, radius: float, region: Optional[torch.Tensor] = None
) -> Optional[torch.Tensor]:
    """A soft, irregular lesion in [0, 1] centred on a random tissue voxel (inside ``region`` if given).

    The shape is an ellipse (ellipsoid in 3D) with random axes and orientation, its boundary roughened by a
    smooth random field; the lesion stays inside brain tissue. Returns None if no tissue voxel is available.
    """
    candidates = tissue > 0.8
    if region is not None:
        candidates &= region
    where = candidates.nonzero()
    if where.shape[0] == 0:
        return None
    centre = where[int(torch.randint(where.shape[0], (1,), generator=g))].float()
    dims = tissue.ndim
    coords = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in tissue.shape], indexing="ij"))
    offset = coords - centre.reshape(dims, *([1] * dims))
    q, _ = torch.linalg.qr(torch.randn(dims, dims, generator=g))  # a random orientation
    axes = torch.tensor([radius * _uniform(g, 0.6, 1.4) for _ in range(dims)])
    local = torch.einsum("ij,j...->i...", q.T, offset) / axes.reshape(dims, *([1] * dims))
    distance = local.pow(2).sum(dim=0).sqrt()
    rough = 0.25 * smooth_field(tissue.shape, g, coarse=6)
    soft = torch.sigmoid((1.0 - distance + rough) * 6.0) * (tissue > 0.3).float()
    return soft if region is None else soft * region.float()


def apply_lesion(
    image: torch.Tensor, mask: torch.Tensor, contrast: float, g: torch.Generator, texture: float = 0.25
) -> torch.Tensor:
    """Add a lesion of relative ``contrast`` (> 0 hyper-, < 0 hypo-intense) with a random texture."""
    pattern = 1.0 + texture * smooth_field(image.shape, g, coarse=8)
    return image * (1.0 + contrast * mask * pattern)


def acquisition(image: torch.Tensor, brain: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A multiplicative bias field, Rician-like noise, and scaling to [0, 1] (99.5th percentile of the brain)."""
    bias = torch.exp(_uniform(g, 0.05, 0.2) * smooth_field(image.shape, g, coarse=3))
    image = image * bias
    sigma = _uniform(g, 0.01, 0.04) * float(image[brain > 0.5].mean()) if bool((brain > 0.5).any()) else 0.02
    real = image + sigma * torch.randn(image.shape, generator=g)
    imag = sigma * torch.randn(image.shape, generator=g)
    image = (real.pow(2) + imag.pow(2)).sqrt()
    top = torch.quantile(image.flatten()[:: max(1, image.numel() // 100_000)], 0.995).clamp_min(1e-6)
    return (image / top).clamp(0.0, 1.0)
