# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Lp-ball geometry: random starts, ascent steps, projections, and the final exact budget guarantee.

Every function works per sample on batches (N, C, *spatial) with any number of spatial dims.
``mask`` is None or a 0/1 tensor of x's shape; coordinates where it is 0 never move.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["random_start", "boundary_start", "ascent_step", "project", "clip_to_range", "enforce_budget"]


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape (N,) to (N, 1, ..., 1) for broadcasting against a batch with ``ndim`` dims."""
    return values.reshape(-1, *([1] * (ndim - 1)))


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms, accumulated in float64 so that they do not depend on the batch's reduction order."""
    if t.device.type == "mps":  # no float64 there
        return torch.linalg.vector_norm(t.flatten(1), dim=1)
    return torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float64).to(t.dtype)


def random_start(
    x: torch.Tensor, eps: float, norm: str, mask: Optional[torch.Tensor], generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """A random perturbation per sample: U(-eps, eps) per coordinate (Linf) or uniform in the L2 ball.

    Each sample draws from its own generator, so its start does not depend on the rest of the batch.
    """
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    shape, opts = x.shape[1:], {"device": x.device, "dtype": dtype}
    if norm == "Linf":
        noise = torch.stack([torch.rand(shape, generator=g, **opts) for g in generators])
        delta = (2.0 * noise - 1.0) * eps
        return (delta if mask is None else delta * mask).to(x.dtype)
    directions, radii = [], []
    for g in generators:
        directions.append(torch.randn(shape, generator=g, **opts))
        radii.append(torch.rand((), generator=g, **opts))
    direction = torch.stack(directions)
    if mask is not None:
        direction = direction * mask
    if mask is None:
        dims = torch.full((x.shape[0],), float(shape.numel()), **opts)
    else:
        dims = mask.flatten(1).sum(dim=1).float().clamp_min(1.0)
    # radius r = eps * U^(1/d) makes the point uniform in the d-dimensional ball
    radius = eps * torch.stack(radii).pow(1.0 / dims)
    delta = direction / _l2_norms(direction).clamp_min(1e-12).reshape(-1, *([1] * len(shape)))
    return (delta * _per_sample(radius, x.ndim)).to(x.dtype)


def gaussian_start(
    x: torch.Tensor, sigma: float, mask: Optional[torch.Tensor], generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """A random perturbation per sample: N(0, sigma^2) per coordinate (TRADES' start, sigma 0.001), from each
    sample's own generator."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=dtype) for g in generators])
    delta = sigma * noise
    return (delta if mask is None else delta * mask).to(x.dtype)


def boundary_start(
    x: torch.Tensor, eps: float, norm: str, mask: Optional[torch.Tensor], generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """A random perturbation per sample on the surface of the eps-ball, as APGD starts (Croce & Hein 2020).

    Linf: U(-1, 1) noise scaled so that its largest coordinate is ``eps``; L2: a Gaussian direction of norm ``eps``.
    """
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    opts = {"device": x.device, "dtype": dtype}
    if norm == "Linf":
        noise = torch.stack([2.0 * torch.rand(x.shape[1:], generator=g, **opts) - 1.0 for g in generators])
    else:
        noise = torch.stack([torch.randn(x.shape[1:], generator=g, **opts) for g in generators])
    if mask is not None:
        noise = noise * mask
    if norm == "Linf":
        scale = noise.flatten(1).abs().amax(dim=1)
    else:
        scale = _l2_norms(noise)
    return (eps * noise / _per_sample(scale.clamp_min(1e-12), x.ndim)).to(x.dtype)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, alpha: Union[float, torch.Tensor], norm: str) -> torch.Tensor:
    """One steepest-ascent step: ``alpha * sign(grad)`` (Linf) or ``alpha * grad / ||grad||_2`` (L2).

    ``alpha`` is a number, or a tensor (N,) of per-sample step sizes.
    """
    if isinstance(alpha, torch.Tensor):
        alpha = _per_sample(alpha.to(x_adv.dtype), x_adv.ndim)
    if norm == "Linf":
        return x_adv + alpha * grad.sign()
    return x_adv + alpha * grad / (_per_sample(_l2_norms(grad), grad.ndim) + 1e-10)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project each sample's perturbation onto the eps-ball of the norm."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _l2_norms(delta)).clamp_max(1.0)  # a zero perturbation gives inf -> 1
    return delta * _per_sample(factor, delta.ndim)


def clip_to_range(x_adv: torch.Tensor, value_range: Optional[Tuple[float, float]]) -> torch.Tensor:
    """Clamp into ``value_range`` (no-op for None)."""
    if value_range is None:
        return x_adv
    return x_adv.clamp(value_range[0], value_range[1])


def enforce_budget(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    eps: float,
    norm: str,
    mask: Optional[torch.Tensor],
    value_range: Optional[Tuple[float, float]],
    max_rounds: int = 4,
) -> torch.Tensor:
    """Make the contract hold exactly despite floating-point rounding of ``x + delta``.

    Outside ``mask`` the result equals ``x`` bit for bit; inside, ``||x_adv - x||`` (measured in float64)
    is at most ``eps`` and every value lies in ``value_range``. An offending perturbation is clipped
    (Linf) or shrunk (L2) in float64 and rounded toward ``x``; conforming samples are returned untouched.
    """
    if mask is not None:
        x_adv = torch.where(mask > 0, x_adv, x)
    x_adv = clip_to_range(x_adv, value_range)
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    for _ in range(max_rounds):
        diff = x_adv.to(wide) - x.to(wide)
        if norm == "Linf":
            if not bool((diff.abs() > eps).any()):
                break
            diff = diff.clamp(-eps, eps)
        else:
            norms = _l2_norms(diff)
            over = norms > eps
            if not bool(over.any()):
                break
            diff = diff * _per_sample(torch.where(over, eps / norms * (1.0 - 1e-6), torch.ones_like(norms)), x.ndim)
        x_adv = clip_to_range(_round_toward(x, diff), value_range)
    return x_adv


def _round_toward(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + delta`` (delta in a wider dtype) cast to x's dtype, rounding each coordinate toward ``x``.

    Then no coordinate of the result is farther from ``x`` than the exact ``delta`` asks.
    """
    exact = x.to(delta.dtype) + delta
    cast = exact.to(x.dtype)
    away = (cast.to(delta.dtype) - x.to(delta.dtype)).abs() > delta.abs()
    return torch.where(away, torch.nextafter(cast, x), cast)
