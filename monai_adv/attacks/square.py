# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Square attack (Andriushchenko et al. 2020): a score-based random search, L-inf, in 1D, 2D and 3D."""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate, is_better
from monai_adv.attacks.base import AttackState, QueryAttack
from monai_adv.attacks.projections import clip_to_range
from monai_adv.attacks.square_l2 import l2_propose, l2_start, l2_window_side
from monai_adv.attacks.validation import check_positive

__all__ = ["Square", "square_fraction", "window_side"]

# (last iteration of the stage, divisor of p_init) of the original schedule, defined for 10,000 iterations
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def square_fraction(p_init: float, iteration: int, iterations: int, rescale: bool = False) -> float:
    """The fraction of the image a square window covers at ``iteration`` (0-based): ``p_init`` halved at
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. With ``rescale`` the schedule is stretched
    from 10,000 iterations to ``iterations``.
    """
    it = int(iteration / iterations * 10000) if rescale else iteration
    for last, divisor in _SCHEDULE:
        if it <= last:
            return p_init / divisor
    return p_init / 512


def window_side(fraction: float, spatial: Sequence[int]) -> int:
    """Side of the square (2D) or cube (3D) window covering ``fraction`` of the spatial positions."""
    side = round((fraction * math.prod(spatial)) ** (1.0 / len(spatial)))
    return int(min(max(side, 1), min(spatial)))


class _PerSampleUniforms:
    """Uniform numbers from each sample's own generator, drawn in blocks to save calls.

    The generators and the block drawn are rows of the search's :class:`ActiveSet` (``generators``, ``uniforms``),
    so they shrink with it when samples leave.
    """

    def __init__(self, rows: ActiveSet, generators: List[torch.Generator], width: int, block: int = 64):
        self.rows, self.width, self.block = rows, width, block
        rows.generators, rows.uniforms = list(generators), None
        self.position = block

    def draw(self) -> torch.Tensor:
        """(n, width) uniforms: row i comes from sample i's stream, the next numbers in it."""
        rows = self.rows
        if self.position == self.block:
            device = rows.idx.device
            rows.uniforms = torch.stack(
                [torch.rand((self.block, self.width), generator=g, device=device) for g in rows.generators]
            )
            self.position = 0
        row = rows.uniforms[:, self.position]
        self.position += 1
        return row


class Square(QueryAttack):
    """Square attack: random search over square (2D) or cube (3D) windows, L-inf or L2.

    It needs only the model's outputs, no gradients, so it sees through gradient masking. Each sample starts
    from random +-eps stripes along the last spatial dim; each query proposes to set one window, at a random
    place, to +-eps (a random sign per channel) and keeps the proposal when it meets the goal or raises the
    loss. The window covers a fraction of the image that starts at ``p_init`` and is halved on the original
    schedule. In L2 the start is a grid of the paper's two-signed concentric patterns, and a move shifts the
    energy of a second window into the first with a new pattern, always at norm ``eps``. Positions, signs
    and pattern orientations come from each sample's own random stream.

    Queries are counted exactly, one per model evaluation of a sample, including the clean pass: a sample
    uses at most ``queries`` evaluations; ``result.queries`` says how many it used.

    Args:
        model: the model under attack.
        loss: "cw" (the margin loss of the paper, default), "ce", or "dice" for segmentation.
        p_init: initial fraction of the image covered by a window.
        rescale_schedule: stretch the p schedule to ``queries`` (the paper's schedule is for 10,000).
        kwargs: the other arguments of :class:`~monai_adv.attacks.base.QueryAttack` (``queries`` >= 2: the clean
            pass and the start) and :class:`~monai_adv.attacks.Attack` (``early_stop``: stop querying a sample once
            it is fooled, the paper's rule).
    """

    name = "square"
    min_queries = 2

    def __init__(
        self, model: Callable, loss: str = "cw", p_init: float = 0.8, rescale_schedule: bool = False, **kwargs
    ):
        super().__init__(model, loss=loss, **kwargs)
        self.p_init = check_positive(p_init, "p_init")
        if self.p_init > 1:
            raise ValueError(f"`p_init` must be in (0, 1], got {p_init}.")
        self.rescale_schedule = bool(rescale_schedule)

    def __repr__(self) -> str:
        return (
            f"Square(eps={self.eps:g}, queries={self.queries}, norm={self.norm!r}, loss={self.loss!r}, "
            f"p_init={self.p_init:g})"
        )

    def _start(self, x0: torch.Tensor, generators: List[torch.Generator], mask) -> torch.Tensor:
        if self.norm == "L2":
            return clip_to_range(x0 + l2_start(x0, self.eps, generators, mask), self.value_range)
        return self._stripes(x0, generators, mask)

    def _stripes(self, x0: torch.Tensor, generators: List[torch.Generator], mask) -> torch.Tensor:
        """The start: +-eps stripes, one random sign per channel and position along the last spatial dim."""
        shape = (x0.shape[1],) + (1,) * (x0.ndim - 3) + (x0.shape[-1],)
        signs = torch.stack(
            [torch.where(torch.rand(shape, generator=g, device=x0.device) < 0.5, -1.0, 1.0) for g in generators]
        )
        delta = self.eps * signs.to(x0.dtype).expand_as(x0)
        if mask is not None:
            delta = delta * mask
        return clip_to_range(x0 + delta, self.value_range)

    def _perturb(self, state: AttackState):
        n, device = state.x.shape[0], state.x.device
        used = torch.ones(n, dtype=torch.long, device=device)  # the clean pass
        best = BestIterate(state.x, state.clean_success)
        idx = torch.arange(n, device=device)
        if self.early_stop:
            idx = idx[~state.clean_success]
        if idx.numel() == 0:
            return state.result(best.x, best.success, best.loss, used)
        generators = self.generators(state, idx, 0)
        mask = None if state.mask is None else state.mask[idx]
        x_start = self._start(state.x[idx], generators, mask)
        loss, success = self.query(state, x_start, idx)
        best.update(idx, x_start, loss, success)
        used[idx] += 1
        spatial = tuple(state.x.shape[2:])
        search = _ActiveSearch(best, idx, state.x[idx], mask, self.eps, self.norm, self.value_range)
        # per query: two window corners, a sign per channel and a split axis (L2 uses them all)
        uniforms = _PerSampleUniforms(search.rows, generators, 2 * len(spatial) + state.x.shape[1] + 1)
        iterations = self.queries - 2
        for it in range(iterations):
            if self.early_stop and not search.drop_fooled():  # the query's one host synchronisation
                break
            fraction = square_fraction(self.p_init, it, iterations, self.rescale_schedule)
            proposal = search.propose(uniforms.draw(), fraction)
            loss, success = self.query(state, proposal, search.rows.idx)
            search.offer(proposal, loss, success)
            used[search.rows.idx] += 1
        search.write_back()
        return state.result(best.x, best.success, best.loss, used)


class _ActiveSearch:
    """The samples still searched, as an :class:`ActiveSet` of compact rows (clean point, best point, its loss and
    success, and in L-inf the box every coordinate must stay in), handed back to the :class:`BestIterate` when
    they leave.

    Working on the active rows only (and, in L-inf, on each sample's window only) keeps a query's own cost
    small next to the model's forward pass.
    """

    def __init__(self, best: BestIterate, idx, x0, mask, eps: float, norm: str, value_range) -> None:
        self.best, self.eps, self.norm, self.value_range = best, eps, norm, value_range
        self.rows = ActiveSet(idx, x0=x0, mask=mask, x=best.x[idx], loss=best.loss[idx], success=best.success[idx])
        self.spatial = tuple(x0.shape[2:])
        if norm == "Linf":
            # the box every coordinate must stay in: the eps-ball, the value range, and x0 where the mask is 0
            lo, hi = x0 - eps, x0 + eps
            if value_range is not None:
                lo, hi = lo.clamp_min(value_range[0]), hi.clamp_max(value_range[1])
            if mask is not None:
                lo, hi = torch.where(mask > 0, lo, x0), torch.where(mask > 0, hi, x0)
            self.rows.lower, self.rows.upper = lo.flatten(2), hi.flatten(2)
            # window corners and positions as flat indices into the (N, C, prod(spatial)) view
            self.sizes = torch.tensor(self.spatial, device=x0.device)
            self._strides = [math.prod(self.spatial[d + 1 :]) for d in range(len(self.spatial))]
            self.strides = torch.tensor(self._strides, device=x0.device)
            self._offsets_side, self._offsets = -1, None

    def _window_offsets(self, side: int) -> torch.Tensor:
        """Flat offsets (side ** dims,) of a window's positions from its corner (cached per side)."""
        if side != self._offsets_side:
            device = self.sizes.device
            grids = torch.meshgrid(*[torch.arange(side, device=device)] * len(self.spatial), indexing="ij")
            self._offsets = sum(g.flatten() * s for g, s in zip(grids, self._strides))
            self._offsets_side = side
        return self._offsets

    def propose(self, uniforms: torch.Tensor, fraction: float) -> torch.Tensor:
        """One proposal per active sample around its best point, inside the budget and the value range."""
        r = self.rows
        if self.norm == "L2":
            side = l2_window_side(fraction, self.spatial)
            delta = l2_propose(r.x0, r.x, uniforms, side, self.eps, r.mask)
            return clip_to_range(r.x0 + delta, self.value_range)
        # L-inf: move one window by +-2 eps (a random sign per channel), then back into the box: the window
        # goes to +-eps, as in the paper. Only the window's values are read and written.
        n, channels, dims = r.x.shape[0], r.x.shape[1], len(self.spatial)
        side = window_side(fraction, self.spatial)
        corners = (uniforms[:, :dims] * (self.sizes - side + 1)).floor().long().minimum(self.sizes - side)
        flat = (corners * self.strides).sum(dim=1, keepdim=True) + self._window_offsets(side)
        index = flat[:, None].expand(n, channels, -1)
        steps = torch.where(uniforms[:, 2 * dims : 2 * dims + channels] < 0.5, -2.0 * self.eps, 2.0 * self.eps)
        x = r.x.flatten(2)
        values = (x.gather(2, index) + steps[..., None].to(x.dtype)).clamp(
            r.lower.gather(2, index), r.upper.gather(2, index)
        )
        return x.scatter(2, index, values).reshape(r.x.shape)

    def offer(self, proposal: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        """Take each proposal that beats the sample's best point (the rule of :func:`is_better`)."""
        r = self.rows
        better = is_better(success, loss, r.success, r.loss)
        r.x = torch.where(better.reshape(-1, *([1] * (proposal.ndim - 1))), proposal, r.x)
        r.loss = torch.where(better, loss, r.loss)
        r.success = torch.where(better, success, r.success)

    def drop_fooled(self) -> bool:
        """Hand the fooled samples back to the BestIterate and stop searching them; return whether any is left.

        One host synchronisation (reading which samples stay); the write-back selects on the device.
        """
        self.write_back(self.rows.success)
        return self.rows.keep(~self.rows.success)

    def write_back(self, which: Optional[torch.Tensor] = None) -> None:
        """Copy the search state of the active samples (or of ``which`` among them) into the BestIterate."""
        r = self.rows
        self.best.set(r.idx, r.x, r.loss, r.success, which)
