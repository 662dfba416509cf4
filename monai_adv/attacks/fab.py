# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""FAB-T (Croce & Hein 2020): the targeted fast adaptive boundary attack, L-inf and L2."""

from __future__ import annotations

from typing import Callable

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.base import AttackState, IterativeAttack
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.projections import clip_to_range
from monai_adv.attacks.tasks import as_two_logits, rank_other_classes
from monai_adv.attacks.validation import check_int, check_positive

__all__ = ["FAB", "hyperplane_projection"]


def hyperplane_projection(
    w: torch.Tensor, c: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: str
) -> torch.Tensor:
    """Per row, the smallest ``d`` (L-inf or L2 norm) with ``<w, d> = c`` and ``lower <= d <= upper``.

    ``w``, ``lower`` (<= 0) and ``upper`` (>= 0) are (n, D); ``c`` is (n,). When the box cannot reach the
    hyperplane, ``d`` goes as far towards it as the box allows. Solved exactly: along the optimal path
    ``d_i = clip(t * r_i * sign(c w_i))`` (``r_i = 1`` for L-inf, ``|w_i|`` for L2), ``<w, d>`` is piecewise
    linear in ``t``, and the kinks are the sorted saturation points.
    """
    direction = torch.sign(c)[:, None] * torch.sign(w)  # the sign each coordinate moves with
    room = torch.where(direction > 0, upper, -lower).clamp_min(0.0)  # how far it can move
    a = w.abs()
    r = torch.ones_like(a) if norm == "Linf" else a
    target = c.abs()
    # breakpoint of coordinate i: t at which it saturates (inf where it never moves)
    breaks = torch.where(r > 0, room / r.clamp_min(1e-30), torch.full_like(room, float("inf")))
    breaks, order = breaks.sort(dim=1)
    a_s, r_s, room_s = a.gather(1, order), r.gather(1, order), room.gather(1, order)
    saturated = torch.where(torch.isfinite(breaks), a_s * room_s, torch.zeros_like(room_s))
    # h(t) on the segment after the first k saturations: sum_{j<k} a_j room_j + t * sum_{j>=k} a_j r_j
    before = torch.cumsum(saturated, dim=1) - saturated
    slope = torch.flip(torch.cumsum(torch.flip(a_s * r_s, [1]), dim=1), [1])
    h_at_breaks = before + torch.where(torch.isfinite(breaks), breaks, torch.zeros_like(breaks)) * slope
    # the solution lies on the segment before the first kink where h reaches the target, or where the
    # remaining coordinates never saturate (an unbounded box); none of these: the box cannot reach it
    reach = ~torch.isfinite(breaks) | (h_at_breaks >= target[:, None])
    size = breaks.shape[1]
    k = torch.where(reach.any(dim=1), reach.float().argmax(dim=1), torch.full_like(target, size).long())
    k_safe = k.clamp_max(size - 1)[:, None]
    inside = k < size
    seg_before = torch.where(inside, before.gather(1, k_safe)[:, 0], saturated.sum(dim=1))
    seg_slope = torch.where(inside, slope.gather(1, k_safe)[:, 0], torch.zeros_like(target))
    feasible = inside & (seg_slope > 0)
    t = torch.where(
        feasible, (target - seg_before).clamp_min(0.0) / seg_slope.clamp_min(1e-30), torch.zeros_like(target)
    )
    move = torch.where(feasible[:, None], torch.minimum(t[:, None] * r, room), room)
    move = torch.where(torch.isfinite(move) & (a > 0), move, torch.zeros_like(move))
    return direction * move


class FAB(IterativeAttack):
    """FAB-T: targeted fast adaptive boundary attack, as run by AutoAttack.

    For each of the ``target_classes`` most likely other classes, it linearizes the boundary between the true
    class and the target at the current point, projects both the current point and the clean input onto that
    hyperplane within the value range, and steps to a convex combination of the two projections (weight at
    most ``alpha_max`` on the clean one), overshooting by ``eta``. A found adversarial point is pulled back
    towards the clean input by ``beta``. It looks for a minimal perturbation; an example counts, and is
    returned, only when it lies within ``eps``. Success is any misclassification, as in AutoAttack.

    Each iteration costs one forward and one backward pass for the boundary, and one forward pass to check
    the new point. Classification only; a single binary logit is read as the two logits [0, z].

    Args:
        model: the model under attack.
        target_classes: how many target classes to try (default 9), capped at classes - 1.
        alpha_max: largest weight of the clean input's projection.
        eta: overshoot of the projection step.
        beta: backward step towards the clean input after a success.
        kwargs: the arguments of :class:`~monai_adv.attacks.base.IterativeAttack` (``steps`` per target class and
            restart; ``restarts`` per target, all but the first from a random point within ``eps / 2``) and
            :class:`~monai_adv.attacks.Attack` (eps, norm, value_range, early_stop, seed). The task is classification,
            untargeted; the loss reported is the margin.
    """

    name = "fab_t"
    tasks = ("classification",)
    fixed_arguments = ("loss", "task", "kappa", "targeted", "seg_success_ratio", "loss_kwargs", "objective")

    def __init__(
        self,
        model: Callable,
        target_classes: int = 9,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        **kwargs,
    ) -> None:
        super().__init__(model, loss="cw", task="classification", kappa=1e12, **kwargs)
        self.target_classes = check_int(target_classes, "target_classes")
        self.alpha_max = check_positive(alpha_max, "alpha_max")
        self.eta = check_positive(eta, "eta")
        self.beta = check_positive(beta, "beta")

    def __repr__(self) -> str:
        return f"FAB(eps={self.eps:g}, steps={self.steps}, norm={self.norm!r}, target_classes={self.target_classes})"

    def _norms(self, delta: torch.Tensor) -> torch.Tensor:
        flat = delta.flatten(1)
        return flat.abs().amax(dim=1) if self.norm == "Linf" else flat.norm(dim=1)

    def _boundary(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor):
        """``z_t - z_y`` at ``x`` and its input gradient: one forward, one backward."""
        x = x.detach().requires_grad_(True)
        logits = as_two_logits(self.call_model(x))
        diff = (logits.gather(1, targets[:, None]) - logits.gather(1, labels[:, None]))[:, 0]
        return diff.detach(), self.input_gradient(diff, x)

    def _bounds(self, point: torch.Tensor):
        if self.value_range is None:
            big = torch.full_like(point, float("inf"))
            return -big, big
        return self.value_range[0] - point, self.value_range[1] - point

    def _start(self, state: AttackState, idx: torch.Tensor, x0: torch.Tensor, mask, stream: int) -> torch.Tensor:
        """The clean input for the first restart; a random point within ``eps / 2`` for the later ones."""
        if not stream % self.restarts:
            return x0.clone()
        generators = self.generators(state, idx, stream)
        noise = torch.stack([2 * torch.rand(x0.shape[1:], generator=g, device=x0.device) - 1 for g in generators])
        noise = noise.to(x0.dtype) if mask is None else noise.to(x0.dtype) * mask
        scale = 0.5 * self.eps / self._norms(noise).clamp_min(1e-12)
        return clip_to_range(x0 + noise * scale.reshape(-1, *[1] * (x0.ndim - 1)), self.value_range)

    def _step(self, s: ActiveSet, diff: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The next point: the convex combination of the boundary projections of the current and clean points."""
        x1, x0 = s.x1, s.x0
        if s.mask is not None:
            grad = grad * s.mask
        n, w = x1.shape[0], grad.flatten(1)
        # hyperplane <w, z - x1> = -diff, projected from the current point and from the clean input
        c1 = -diff
        c2 = -diff - (w * (x0 - x1).flatten(1)).sum(dim=1)
        lo1, hi1 = self._bounds(x1)
        lo0, hi0 = self._bounds(x0)
        d = hyperplane_projection(
            torch.cat([w, w]),
            torch.cat([c1, c2]),
            torch.cat([lo1.flatten(1), lo0.flatten(1)]),
            torch.cat([hi1.flatten(1), hi0.flatten(1)]),
            self.norm,
        ).reshape(2 * n, *x1.shape[1:])
        d1, d2 = d[:n], d[n:]
        a = self._norms(d).clamp_min(1e-8)
        alpha = (a[:n] / (a[:n] + a[n:])).clamp(0.0, self.alpha_max).reshape(-1, *[1] * (x1.ndim - 1))
        x1 = clip_to_range((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha, self.value_range)
        return x1 if s.mask is None else torch.where(s.mask > 0, x1, x0)

    def _run(self, state: AttackState, objective: Objective, idx: torch.Tensor, targets, stream: int, best):
        x0 = state.x[idx]
        mask = None if state.mask is None else state.mask[idx]
        s = ActiveSet(idx, x0=x0, mask=mask, labels=objective.labels[idx], targets=targets)
        s.x1 = self._start(state, idx, x0, mask, stream)
        for _ in range(self.steps):
            diff, grad = self._boundary(s.x1, s.labels, s.targets)
            with torch.no_grad():
                s.x1 = self._step(s, diff, grad)
                logits = self.call_model(s.x1)
                success = objective.success(logits, s.idx)
                inside = self._norms(s.x1 - s.x0) <= self.eps
                loss = objective.loss(logits, s.idx).double()
                best.update(s.idx, s.x1, loss, success, offered=inside)  # no host synchronisation
                rows = success.reshape(-1, *([1] * (s.x1.ndim - 1)))
                s.x1 = torch.where(rows, s.x0 + self.beta * (s.x1 - s.x0), s.x1)
                if self.early_stop and not s.keep(~best.success[s.idx]):  # the step's one host synchronisation
                    return

    def _perturb(self, state: AttackState):
        best = BestIterate(state.x, state.clean_success)
        objective = state.objective
        ranked = rank_other_classes(state.clean_logits, objective.labels)
        todo = torch.arange(state.x.shape[0], device=state.x.device)
        for rank in range(min(self.target_classes, ranked.shape[1] - 1)):
            for restart in range(self.restarts):
                if self.early_stop:
                    todo = todo[~best.success[todo]]
                if todo.numel() == 0:
                    return state.result(best.x, best.success, best.loss)
                self._run(state, objective, todo, ranked[todo, rank], rank * self.restarts + restart, best)
        return state.result(best.x, best.success, best.loss)
