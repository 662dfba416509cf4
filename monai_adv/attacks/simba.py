# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""SimBA (Guo et al. 2019): simple black-box attack along orthonormal directions, pixel or low-frequency DCT."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Union

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.base import AttackState, QueryAttack
from monai_adv.attacks.projections import clip_to_range, project
from monai_adv.attacks.validation import check_choice, check_int, check_positive

__all__ = ["SimBA", "dct_matrix"]


@lru_cache(maxsize=16)
def _dct_matrix_cpu(size: int) -> torch.Tensor:
    n = torch.arange(size, dtype=torch.float64)
    k = n[:, None]
    matrix = math.sqrt(2.0 / size) * torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * size))
    matrix[0] /= math.sqrt(2.0)
    return matrix


def dct_matrix(
    size: int, device: Optional[Union[str, torch.device]] = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The orthonormal DCT-II matrix (size, size): row k is the pixel-space basis vector of frequency k; on
    ``device`` (None: the host, where it is built and cached)."""
    return _dct_matrix_cpu(size).to(device=device, dtype=dtype)


class SimBA(QueryAttack):
    """SimBA: try ``x - step * q`` then ``x + step * q`` along one orthonormal direction ``q`` per iteration,
    and keep a move when it meets the goal or raises the loss (with the default cross-entropy: when the
    probability of the true class drops).

    Directions come from the pixel basis (single coordinates) or from the DCT basis (2D or 3D separable
    cosines, any number of channels), low frequencies first: the ``freq_dims``-wide lowest band in random
    order, then bands ``stride`` wider in random order each. Each sample draws its own order. Every trial is
    projected onto the eps-ball and the value range, and costs one query; ``result.queries`` counts them
    exactly, including the clean pass, and never exceeds ``queries``.

    Args:
        model: the model under attack.
        basis: "dct" (SimBA-DCT) or "pixel".
        step: size of one move along a unit direction. Default: ``eps`` for the pixel basis in L-inf (a move
            sets one coordinate to the edge of the budget); otherwise 0.2 times the width of ``value_range``
            (the paper's step for images in [0, 1]), or ``eps`` when the range is None.
        freq_dims: width of the lowest frequency band tried first (DCT basis).
        stride: width of each further frequency band (DCT basis).
        kwargs: the other arguments of :class:`~monai_adv.attacks.base.QueryAttack` (``queries``) and
            :class:`~monai_adv.attacks.Attack` (``early_stop``: stop querying a sample once it is fooled; ``seed``
            of the per-sample direction orders).
    """

    name = "simba"

    def __init__(
        self,
        model: Callable,
        basis: str = "dct",
        step: Optional[float] = None,
        freq_dims: int = 8,
        stride: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        self.basis = check_choice(basis, "basis", ("dct", "pixel"))
        self.freq_dims = check_int(freq_dims, "freq_dims")
        self.stride = check_int(stride, "stride")
        if step is not None:
            self.step = check_positive(step, "step")
        elif self.basis == "pixel" and self.norm == "Linf":
            self.step = self.eps
        elif self.value_range is not None:
            self.step = 0.2 * (self.value_range[1] - self.value_range[0])
        else:
            self.step = self.eps

    def __repr__(self) -> str:
        return (
            f"SimBA(eps={self.eps:g}, queries={self.queries}, basis={self.basis!r}, step={self.step:g}, "
            f"norm={self.norm!r}, loss={self.loss!r})"
        )

    def _orders(self, shape: Sequence[int], generators: List[torch.Generator], device) -> torch.Tensor:
        """Per-sample order of the candidate directions (n, channels * prod(spatial)), low bands first."""
        channels, spatial = shape[0], shape[1:]
        count = channels * math.prod(spatial)
        if self.basis == "pixel":
            group = torch.zeros(count, device=device)
        else:
            grids = torch.meshgrid(*[torch.arange(s, device=device) for s in spatial], indexing="ij")
            band = torch.stack([g.flatten() for g in grids]).amax(dim=0)  # max frequency index per position
            group = torch.where(
                band < self.freq_dims, 0, 1 + (band - self.freq_dims).div(self.stride, rounding_mode="floor")
            )
            group = group.repeat(channels)
        keys = torch.stack([torch.rand(count, generator=g, device=device, dtype=torch.float64) for g in generators])
        return (group.to(torch.float64) + keys).argsort(dim=1)

    def _directions(self, index: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Unit directions (n, C, *spatial) for flat candidate indices (channel-major, then spatial)."""
        channels, spatial = shape[0], tuple(shape[1:])
        n, device = index.shape[0], index.device
        per_channel = math.prod(spatial)
        channel, flat = index // per_channel, index % per_channel
        if self.basis == "pixel":
            q = torch.zeros((n, channels * per_channel), dtype=dtype, device=device)
            q[torch.arange(n, device=device), index] = 1.0
            return q.reshape(n, channels, *spatial)
        coords = []
        for size in reversed(spatial):
            coords.append(flat % size)
            flat = flat // size
        coords.reverse()
        pattern = None
        for d, (size, k) in enumerate(zip(spatial, coords)):
            rows = dct_matrix(size, device, dtype)[k]  # (n, size)
            shape_d = [n] + [1] * len(spatial)
            shape_d[1 + d] = size
            rows = rows.reshape(shape_d)
            pattern = rows if pattern is None else pattern * rows
        q = torch.zeros((n, channels, *spatial), dtype=dtype, device=device)
        q[torch.arange(n, device=device), channel] = pattern
        return q

    def _try(self, state: AttackState, best: BestIterate, used: torch.Tensor, idx: torch.Tensor, move: torch.Tensor):
        """Query ``best.x + move`` (projected) for the samples ``idx``; keep it where it helps; return where kept."""
        x0 = state.x[idx]
        candidate = clip_to_range(x0 + project(best.x[idx] + move - x0, self.eps, self.norm), self.value_range)
        loss, success = self.query(state, candidate, idx)
        used[idx] += 1
        return best.update(idx, candidate, loss, success)

    def _perturb(self, state: AttackState):
        n, device, shape = state.x.shape[0], state.x.device, tuple(state.x.shape[1:])
        used = torch.ones(n, dtype=torch.long, device=device)  # the clean pass
        best = BestIterate(state.x, state.clean_success)
        best.loss = state.clean_loss.double().clone()  # a move must beat the current point, the clean input first
        idx = torch.arange(n, device=device)
        if self.early_stop:
            idx = idx[~state.clean_success]
        if idx.numel() == 0 or self.queries < 2:
            return state.result(best.x, best.success, best.loss, used)
        iterations = min(self.queries - 1, math.prod(shape))
        active = ActiveSet(idx, order=self._orders(shape, self.generators(state, idx, 0), device)[:, :iterations])
        for it in range(iterations):
            left = used[active.idx] < self.queries
            if self.early_stop:
                left &= ~best.success[active.idx]
            if not active.keep(left):  # the iteration's first host synchronisation: which samples are left
                break
            q = self._directions(active.order[:, it], shape, state.x.dtype)
            if state.mask is not None:
                q = q * state.mask[active.idx]
            # one query: the move against q; a second one, along q, for the samples it did not help (reading which
            # ones is the iteration's second host synchronisation: the size of the second query's batch)
            taken = self._try(state, best, used, active.idx, -self.step * q)
            rest = (~taken & (used[active.idx] < self.queries)).nonzero()[:, 0]
            if rest.numel():
                self._try(state, best, used, active.idx[rest], self.step * q[rest])
        return state.result(best.x, best.success, best.loss, used)
