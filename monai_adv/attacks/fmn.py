# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""FMN (Pintor et al. 2021): the fast minimum-norm attack, L-inf and L2, and robust accuracy from minimal norms."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch

from monai_adv.attacks.active import BestIterate
from monai_adv.attacks.base import AttackResult, AttackState, IterativeAttack
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.projections import clip_to_range
from monai_adv.attacks.tasks import rank_other_classes
from monai_adv.attacks.validation import check_eps, check_int, check_positive

__all__ = ["FMN", "cosine_schedule", "robust_accuracy_curve"]

#: the initial step (a fraction of the current norm bound) per norm, when ``alpha`` is not given
DEFAULT_ALPHA = {"Linf": 1.0, "L2": 1.0}


def cosine_schedule(start: float, end: float, step: int, steps: int) -> float:
    """The value at ``step`` (0 .. ``steps`` - 1) of a cosine annealing from ``start`` (step 0) towards ``end``."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def robust_accuracy_curve(
    min_norms: Union[torch.Tensor, Sequence[float]],
    eps_grid: Union[torch.Tensor, Sequence[float]],
    broken_at: Optional[Union[torch.Tensor, Sequence[float]]] = None,
) -> torch.Tensor:
    """Robust accuracy at each budget of ``eps_grid`` from per-sample minimal adversarial norms.

    A sample counts as robust at ``eps`` exactly when its minimal adversarial norm is larger than ``eps`` (and, with
    ``broken_at``, no other attack broke it at a budget ``<= eps``): a sample misclassified clean has norm 0 (robust
    at no budget), one for which no adversarial example was found has ``inf`` (robust at every budget). With the
    norms of an attack (e.g. FMN's ``result.details["min_norm"]``) the curve is an upper bound on the true robust
    accuracy, as every attack's is.

    Args:
        min_norms: per-sample minimal norms (N,), each >= 0 or ``inf``.
        eps_grid: the budgets (each a finite number >= 0).
        broken_at: optional per-sample smallest budget (N,) at which fixed-budget attacks of the same norm broke the
            sample (``inf`` where none did); a perturbation within a smaller ball lies within every larger one.

    Returns:
        float64 tensor (len(eps_grid),) on the device of ``min_norms``: the fraction of samples robust at each
        budget (NaN for an empty batch).
    """
    norms = _per_sample_norms(min_norms, "min_norms")
    if broken_at is not None:
        broken = _per_sample_norms(broken_at, "broken_at").to(norms.device)
        if broken.shape != norms.shape:
            raise ValueError(
                f"`broken_at` must have the shape of `min_norms` {tuple(norms.shape)}, got {tuple(broken.shape)}."
            )
        norms = torch.minimum(norms, broken)
    grid = torch.as_tensor(eps_grid, dtype=torch.float64).reshape(-1)
    for eps in grid.tolist():
        check_eps(eps, "eps_grid")
    grid = grid.to(norms.device)
    if norms.numel() == 0:
        return torch.full_like(grid, float("nan"))
    robust = norms[None, :] > grid[:, None]
    return robust.double().mean(dim=1)


def _per_sample_norms(values: Union[torch.Tensor, Sequence[float]], name: str) -> torch.Tensor:
    norms = torch.as_tensor(values).to(torch.float64)
    if norms.ndim != 1:
        raise ValueError(f"`{name}` must hold one norm per sample, shape (N,), got {tuple(norms.shape)}.")
    if norms.numel() and (bool(torch.isnan(norms).any()) or bool((norms < 0).any())):
        raise ValueError(f"`{name}` must be numbers >= 0 (or inf where no adversarial example was found).")
    return norms


class FMN(IterativeAttack):
    """FMN: the fast minimum-norm attack (Pintor et al., NeurIPS 2021), L-inf and L2.

    FMN looks for the smallest perturbation that fools the model. It keeps a per-sample norm bound ``eps_k`` and
    a perturbation ``delta`` inside it. Each step evaluates the logit margin at ``x + delta`` and its gradient;
    then it adapts the bound: while no adversarial point has been found, to the linear estimate of the boundary,
    ``||delta|| + |margin| / ||grad||_*`` (``||.||_*`` the dual norm), enlarged by ``1 + gamma_k``; afterwards
    it shrinks to ``min(eps_k * (1 - gamma_k), smallest adversarial norm so far)`` when ``x + delta`` fools the
    model and grows to ``eps_k * (1 + gamma_k)`` when it does not. Then ``delta`` steps along the steepest
    direction of the norm that lowers the margin (``sign(grad)`` for L-inf, ``grad / ||grad||_2`` for L2) by
    ``alpha_k * eps_k``, is projected onto the ``eps_k`` ball, masked, and clipped to ``value_range``. Both
    ``gamma_k`` and ``alpha_k`` are annealed on a cosine schedule, from ``gamma`` to ``gamma_final`` and from
    ``alpha`` to ``alpha_final``. Every step costs one forward and one backward pass, with no host
    synchronisation.

    The step is relative to the current bound (a fraction ``alpha_k`` of ``eps_k``) rather than an absolute
    length as in the paper, so that the defaults fit any intensity scale (images in [0, 1], CT in HU, z-scored
    MRI) and any image size. The boundary estimate is enlarged by ``1 + gamma_k`` so that the search cannot stall
    on the boundary of a (nearly) linear model.

    The search has no norm cap of its own: ``eps`` only says which result is reported.

    - ``result.details["min_norm"]``: per sample, the smallest norm of an adversarial point found over the whole
      run (float64, (N,), on the input's device): 0 for a sample the clean input already fools, ``inf`` where
      none was found. It does not depend on ``eps``.
    - ``result.x_adv``: the smallest adversarial point found when its norm is at most ``eps``; otherwise the
      best effort inside ``eps`` (the iterate with the highest margin loss whose perturbation lies within
      ``eps``; the clean input when no iterate did).
    - ``result.success``: whether an adversarial point within ``eps`` was found (``min_norm <= eps``);
      ``result.loss``: the margin loss at ``x_adv`` (positive exactly when it fools the model).

    With ``eps`` 0 the search still runs (``min_norm`` is reported) and ``x_adv`` is the clean input. The search
    always runs every step on the samples it attacks, since it minimizes the norm; ``early_stop`` only skips the
    samples the clean input already fools (their ``min_norm`` is 0 either way). The attack is deterministic: it
    starts from the clean input and draws nothing at random (``seed`` matters only to ``targeted="random"``).

    The margin FMN descends is the one to the leading other class, so the search may settle on the boundary of
    that class when another, nearly as likely, class has a closer boundary. ``target_classes`` > 1 adds searches
    that each pull towards the next most likely other class of the clean prediction (a targeted margin; any
    misclassification still counts) and keeps each sample's smallest norm over all of them, at one more search's
    cost each.

    Classification only (multi-class logits, two logits, or a single binary logit read as [0, z]); untargeted
    (any other class), or targeted (``targeted=True`` with ``target=``, or "least_likely" / "random"), then
    succeeding exactly when the target class wins.

    Args:
        model: the model under attack.
        steps: iterations (forward and backward passes) per sample and search; 100 by default (the paper runs up
            to 1000).
        gamma: initial relative change of the norm bound per step (the paper's 0.05), annealed to
            ``gamma_final``.
        gamma_final: final relative change of the norm bound (the paper's 0.001); at most ``gamma``.
        alpha: initial step length as a fraction of the current norm bound, annealed to ``alpha_final``; None
            for the default of the norm (1.0 for L-inf and L2).
        alpha_final: final step fraction; None for ``alpha / 100`` (the paper's ratio); at most ``alpha``.
        target_classes: searches per sample (default 1, FMN as published): the first descends the margin to the
            leading other class, each further one pulls towards the next most likely other class; capped at
            classes - 1. Untargeted only.
        kwargs: the arguments of :class:`~monai_adv.attacks.Attack`: ``eps`` (the budget the result is reported
            at), ``norm``, ``value_range``, ``targeted``, ``early_stop``, ``max_batch``. The loss is the logit
            margin and the task is classification; the attack takes no ``restarts``.

    Example::

        result = FMN(model, eps=8 / 255, norm="Linf").perturb(x, y)
        norms = result.details["min_norm"]                      # per-sample smallest adversarial norm
        curve = robust_accuracy_curve(norms, [0, 2 / 255, 4 / 255, 8 / 255])
    """

    name = "fmn"
    fixed_arguments = ("loss", "task", "kappa", "seg_success_ratio", "loss_kwargs", "objective", "restarts")
    tasks = ("classification",)
    per_sample_details = ("min_norm",)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        steps: int = 100,
        gamma: float = 0.05,
        gamma_final: float = 0.001,
        alpha: Optional[float] = None,
        alpha_final: Optional[float] = None,
        target_classes: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, steps=steps, loss="cw", task="classification", kappa=1e12, **kwargs)
        self.gamma = check_positive(gamma, "gamma")
        self.gamma_final = check_positive(gamma_final, "gamma_final")
        if self.gamma >= 1:
            raise ValueError(f"`gamma` must be in (0, 1), got {gamma}.")
        if self.gamma_final > self.gamma:
            raise ValueError(f"`gamma_final` must be at most `gamma` ({self.gamma}), got {gamma_final}.")
        self.alpha = DEFAULT_ALPHA[self.norm] if alpha is None else check_positive(alpha, "alpha")
        self.alpha_final = self.alpha / 100.0 if alpha_final is None else check_positive(alpha_final, "alpha_final")
        if self.alpha_final > self.alpha:
            raise ValueError(f"`alpha_final` must be at most `alpha` ({self.alpha}), got {alpha_final}.")
        self.target_classes = check_int(target_classes, "target_classes")
        if self.targeted is not False and self.target_classes > 1:
            raise ValueError("`target_classes` > 1 adds runs of an untargeted attack; a targeted FMN runs once.")

    def __repr__(self) -> str:
        return (
            f"FMN(eps={self.eps:g}, steps={self.steps}, norm={self.norm!r}, gamma={self.gamma:g}, "
            f"alpha={self.alpha:g}, target_classes={self.target_classes})"
        )

    # ---- the batch -------------------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> AttackState:
        labels = torch.as_tensor(y)
        if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
            raise ValueError(
                "FMN attacks classification only (`task`='classification': one class index per sample, labels of "
                f"shape (N,)); got labels of shape {tuple(labels.shape)}, as for a multi-label or segmentation task."
            )
        return super()._prepare(x, y, *args, **kwargs)

    def _unchanged(self, state: AttackState) -> AttackResult:
        # eps == 0: the search does not depend on eps, so it runs and reports min_norm; x_adv stays the clean input
        return self._perturb(state)

    # ---- geometry ----------------------------------------------------------------------------------------------
    def _norms(self, delta: torch.Tensor, wide: torch.dtype) -> torch.Tensor:
        flat = delta.flatten(1).to(wide)
        return flat.abs().amax(dim=1) if self.norm == "Linf" else torch.linalg.vector_norm(flat, dim=1)

    def _dual_norms(self, grad: torch.Tensor, wide: torch.dtype) -> torch.Tensor:
        flat = grad.flatten(1).to(wide)
        return flat.abs().sum(dim=1) if self.norm == "Linf" else torch.linalg.vector_norm(flat, dim=1)

    def _largest_norms(self, x0: torch.Tensor, mask: Optional[torch.Tensor], wide: torch.dtype) -> torch.Tensor:
        """The largest perturbation norm the value range allows per sample (``inf`` when unbounded)."""
        if self.value_range is None:
            return torch.full((x0.shape[0],), float("inf"), dtype=wide, device=x0.device)
        lo, hi = self.value_range
        room = torch.maximum(x0 - lo, hi - x0)
        return self._norms(room if mask is None else room * mask, wide)

    def _step(
        self, delta: torch.Tensor, grad: torch.Tensor, bound: torch.Tensor, alpha: float, wide: torch.dtype
    ) -> torch.Tensor:
        """``delta`` moved by ``alpha * bound`` along the loss's steepest ascent direction for the norm (unit length
        in the norm), then projected onto the ball of radius ``bound``."""
        shape = (-1,) + (1,) * (delta.ndim - 1)
        length = (alpha * bound).to(delta.dtype).reshape(shape)
        radius = bound.to(delta.dtype).reshape(shape)
        if self.norm == "Linf":
            moved = delta + length * grad.sign()
            return torch.maximum(torch.minimum(moved, radius), -radius)
        # grad / ||grad||_2 in two stages (by the largest entry first), safe in any dtype; a zero gradient stays 0
        tiny = torch.finfo(grad.dtype).tiny
        grad = grad / grad.flatten(1).abs().amax(dim=1).clamp_min(tiny).reshape(shape)
        grad = grad / self._dual_norms(grad, wide).clamp_min(1.0).to(grad.dtype).reshape(shape)
        moved = delta + length * grad
        factor = (bound / self._norms(moved, wide).clamp_min(1e-30)).clamp_max(1.0)
        return moved * factor.to(delta.dtype).reshape(shape)

    # ---- the attack ------------------------------------------------------------------------------------------
    def _perturb(self, state: AttackState) -> AttackResult:
        x, objective = state.x, state.objective
        n, device = x.shape[0], x.device
        wide = torch.float32 if device.type == "mps" else torch.float64
        clean_success = state.clean_success
        min_norm = torch.where(clean_success, 0.0, float("inf")).to(wide)
        smallest = x.clone()  # the smallest adversarial point per sample (the clean input where it fools)
        smallest_loss = state.clean_loss.to(wide).clone()
        best = BestIterate(x, clean_success)  # the best effort inside eps
        todo = torch.arange(n, device=device)
        if self.early_stop:
            todo = todo[~clean_success]
        runs = 1 if objective.targeted else min(self.target_classes, max(objective.num_classes, 2) - 1)
        ranked = rank_other_classes(state.clean_logits, objective.labels) if runs > 1 else None
        for run in range(runs if todo.numel() else 0):
            pulled = objective if run == 0 else objective.with_loss_targets(ranked[:, run], loss="cw")
            norms, points, losses = self._search(state, pulled, todo, best)
            with torch.no_grad():  # keep the smaller of this run's and the earlier runs' (no host synchronisation)
                smaller = norms < min_norm.index_select(0, todo)
                rows = smaller.reshape(-1, *([1] * (x.ndim - 1)))
                min_norm.index_copy_(0, todo, torch.where(smaller, norms, min_norm.index_select(0, todo)))
                smallest.index_copy_(0, todo, torch.where(rows, points, smallest.index_select(0, todo)))
                smallest_loss.index_copy_(0, todo, torch.where(smaller, losses, smallest_loss.index_select(0, todo)))
        with torch.no_grad():
            take = min_norm <= self.eps
            rows = take.reshape(-1, *([1] * (x.ndim - 1)))
            x_adv = torch.where(rows, smallest, best.x)
            loss = torch.where(take, smallest_loss, best.loss.to(wide))
        return state.result(x_adv, take, loss.double(), min_norm=min_norm.double())

    def _search(self, state: AttackState, pulled: Objective, idx: torch.Tensor, best: BestIterate):
        """One FMN search on the samples ``idx``, descending the margin of ``pulled`` (the attack's objective, or a
        copy pulling towards other classes); returns per sample the smallest adversarial norm it found, that point
        and the attack's loss there, and offers every iterate inside ``eps`` to ``best``."""
        objective = state.objective
        x0 = state.x[idx]
        mask = None if state.mask is None else state.mask[idx]
        m, device = x0.shape[0], x0.device
        wide = torch.float32 if device.type == "mps" else torch.float64
        largest = self._largest_norms(x0, mask, wide)
        bound = torch.zeros(m, dtype=wide, device=device)
        found = torch.zeros(m, dtype=torch.bool, device=device)
        min_norm = torch.full((m,), float("inf"), dtype=wide, device=device)
        smallest = x0.clone()
        smallest_loss = torch.full((m,), float("-inf"), dtype=wide, device=device)
        x_adv = x0.clone()
        for k in range(self.steps):
            gamma = cosine_schedule(self.gamma, self.gamma_final, k, self.steps)
            alpha = cosine_schedule(self.alpha, self.alpha_final, k, self.steps)
            point = x_adv.detach().requires_grad_(True)
            logits = self.call_model(point)
            margin = pulled.loss(logits, idx)  # ascending: positive exactly when the pulled goal is met
            grad = self.input_gradient(margin, point)
            with torch.no_grad():
                logits = logits.detach()
                margin = margin.detach().to(wide)
                loss = margin if pulled is objective else objective.loss(logits, idx).to(wide)
                success = objective.success(logits, idx)
                norms = self._norms(x_adv - x0, wide)
                best.update(idx, x_adv, loss, success, offered=norms <= self.eps)  # no host synchronisation
                smaller = success & (norms < min_norm)
                min_norm = torch.where(smaller, norms, min_norm)
                smallest = torch.where(smaller.reshape(-1, *([1] * (x0.ndim - 1))), x_adv, smallest)
                smallest_loss = torch.where(smaller, loss, smallest_loss)
                if k == self.steps - 1:
                    break  # the next iterate would not be evaluated
                found = found | success
                if mask is not None:
                    grad = grad * mask
                dual = self._dual_norms(grad, wide)
                # the linear estimate of the boundary; with no gradient there is none, and the bound stays
                boundary = (norms + margin.abs() / dual.clamp_min(1e-30)) * (1.0 + gamma)
                boundary = torch.where(dual > 0, boundary, bound)
                bound = torch.where(
                    success,
                    torch.minimum(bound * (1.0 - gamma), min_norm),
                    torch.where(found, bound * (1.0 + gamma), boundary),
                )
                bound = torch.minimum(bound, largest)
                delta = self._step(x_adv - x0, grad, bound, alpha, wide)
                if mask is not None:
                    delta = delta * mask
                x_adv = clip_to_range(x0 + delta, self.value_range)
        return min_norm, smallest, smallest_loss
