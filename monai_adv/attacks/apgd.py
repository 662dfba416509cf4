# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Auto-PGD (Croce & Hein 2020): step-size free PGD with momentum, L-inf and L2, untargeted and targeted."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.base import AttackState, IterativeAttack
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.projections import ascent_step, boundary_start, clip_to_range, project
from monai_adv.attacks.tasks import as_two_logits, rank_other_classes
from monai_adv.attacks.validation import check_choice, check_int, check_positive

__all__ = ["APGD", "APGDT", "TARGET_RANKINGS", "apgd_checkpoints"]

#: how APGD-T orders the target classes it tries
TARGET_RANKINGS = ("logits", "linearized")


def apgd_checkpoints(steps: int) -> List[int]:
    """Iteration counts after which APGD checks its step size.

    The first check comes after ``0.22 * steps`` iterations; each later interval is ``0.03 * steps`` shorter
    than the previous one, but never shorter than ``0.06 * steps`` (each at least one iteration).
    """
    first, decrease, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, interval, done = [], first, first
    while done <= steps:
        points.append(done)
        interval = max(interval - decrease, shortest)
        done += interval
    return points


class APGD(IterativeAttack):
    """Auto-PGD: PGD whose step size adapts per sample, with momentum 0.75.

    Each sample starts at a random point on the surface of the eps-ball with step size ``2 * eps``. At the
    checkpoints of :func:`apgd_checkpoints` the step size of a sample is halved, and the sample restarts from
    its highest-loss point, when fewer than ``rho`` of the steps since the last checkpoint increased its
    loss, or when its step size was not reduced at the last checkpoint and its best loss did not improve
    since. Restarts run only on the samples not yet fooled (with ``early_stop``), and every sample returns
    its best point (one that fools, else the highest loss).

    Args:
        model: the model under attack.
        rho: the fraction of loss-increasing steps below which the step size is halved.
        eot_iter: forward/backward passes averaged per step (expectation over transformation, for
            randomized models; 1 otherwise).
        kwargs: the arguments of :class:`~monai_adv.attacks.base.IterativeAttack` (``steps``, 100 in the standard
            AutoAttack; ``restarts``) and :class:`~monai_adv.attacks.Attack` (eps, norm, loss: "ce", "dlr"
            (classification, >= 3 classes), "cw", "dice" (segmentation), ...).

    Example::

        x_adv = APGD(model, eps=8 / 255, loss="dlr")(x, y)       # APGD-DLR
        x_adv = APGD(model, eps=0.5, norm="L2", steps=50)(x, y)  # APGD-CE in L2
    """

    name = "apgd"

    def __init__(self, model: Callable, rho: float = 0.75, eot_iter: int = 1, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.eot_iter = check_int(eot_iter, "eot_iter")
        self.rho = check_positive(rho, "rho")
        if self.rho > 1:
            raise ValueError(f"`rho` must be in (0, 1], got {rho}.")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, norm={self.norm!r}, loss={self.loss!r}, "
            f"restarts={self.restarts})"
        )

    def _perturb(self, state: AttackState):
        best = BestIterate(state.x, state.clean_success)
        self._restarts(state, state.objective, torch.arange(state.x.shape[0], device=state.x.device), best, 0)
        return state.result(best.x, best.success, best.loss)

    def _restarts(self, state: AttackState, objective: Objective, todo: torch.Tensor, best: BestIterate, stream: int):
        """Run the restarts on the samples ``todo`` (only those not yet fooled, with ``early_stop``)."""
        for restart in range(self.restarts):
            if self.early_stop:
                todo = todo[~best.success[todo]]
            if todo.numel() == 0:
                return
            self._run(state, objective, todo, stream + restart, best)

    def _project(self, x0: torch.Tensor, x_new: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        delta = project(x_new - x0, self.eps, self.norm)
        if mask is not None:
            delta = delta * mask
        return clip_to_range(x0 + delta, self.value_range)

    def _evaluate(self, objective: Objective, x_adv: torch.Tensor, idx: torch.Tensor):
        """Loss, success and input gradient at ``x_adv`` for the samples ``idx``: one forward and one backward
        (``eot_iter`` of each, averaged, for a randomized model; success is read from the last pass)."""
        x_adv = x_adv.detach().requires_grad_(True)
        total_loss, total_grad = 0.0, 0.0
        for _ in range(self.eot_iter):
            logits = self.call_model(x_adv)
            loss = objective.loss(logits, idx)
            total_grad = total_grad + self.input_gradient(loss, x_adv)
            total_loss = total_loss + loss.detach().double()
        with torch.no_grad():
            success = objective.success(logits.detach(), idx)
        return total_loss / self.eot_iter, success, total_grad / self.eot_iter

    def _start(
        self, state: AttackState, idx: torch.Tensor, stream: int, x0: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The point a run on the samples ``idx`` starts from: a random point on the surface of the eps-ball (the
        sample's own stream ``stream``), inside the value range. Subclasses may start elsewhere (e.g. a warm start)."""
        start = boundary_start(x0, self.eps, self.norm, mask, self.generators(state, idx, stream))
        return clip_to_range(x0 + start, self.value_range)

    def _run(self, state: AttackState, objective: Objective, idx: torch.Tensor, stream: int, best: BestIterate):
        """One APGD run on the samples ``idx``, offering every iterate to ``best``."""
        x0 = state.x[idx]
        mask = None if state.mask is None else state.mask[idx]
        x_adv = self._start(state, idx, stream, x0, mask)
        loss, success, grad = self._evaluate(objective, x_adv, idx)
        best.update(idx, x_adv, loss, success)

        n = idx.numel()
        s = ActiveSet(
            idx,
            x0=x0,
            mask=mask,
            x_adv=x_adv,
            x_prev=x_adv.clone(),
            grad=grad,
            x_best=x_adv.clone(),
            grad_best=grad.clone(),
            loss_best=loss.clone(),
            loss_best_last=loss.clone(),
            reduced_last=torch.ones(n, dtype=torch.bool, device=x0.device),
            step=torch.full((n,), 2.0 * self.eps, dtype=torch.float64, device=x0.device),
            history=torch.zeros(n, self.steps + 1, dtype=torch.float64, device=x0.device),
        )
        s.history[:, 0] = loss
        if self.early_stop and not s.keep(~success):
            return
        checkpoints = apgd_checkpoints(self.steps)
        last_check = 0
        for i in range(self.steps):
            with torch.no_grad():
                momentum = 1.0 if i == 0 else 0.75
                x_cur, grad = s.x_adv, s.grad if s.mask is None else s.grad * s.mask
                z = self._project(s.x0, ascent_step(x_cur, grad, s.step, self.norm), s.mask)
                x_new = x_cur + momentum * (z - x_cur) + (1.0 - momentum) * (x_cur - s.x_prev)
                s.x_prev, s.x_adv = x_cur, self._project(s.x0, x_new, s.mask)
            loss, success, s.grad = self._evaluate(objective, s.x_adv, s.idx)
            best.update(s.idx, s.x_adv, loss, success)
            with torch.no_grad():  # selections on the device: no host synchronisation
                improved = loss > s.loss_best
                rows = improved.reshape(-1, *([1] * (s.x_adv.ndim - 1)))
                s.x_best = torch.where(rows, s.x_adv, s.x_best)
                s.grad_best = torch.where(rows, s.grad, s.grad_best)
                s.loss_best = torch.where(improved, loss, s.loss_best)
                s.history[:, i + 1] = loss
                if i + 1 in checkpoints:
                    self._check_step_size(s, i + 1, i + 1 - last_check)
                    last_check = i + 1
            if self.early_stop and not s.keep(~success):  # the step's one host synchronisation
                return

    def _check_step_size(self, s: ActiveSet, done: int, interval: int) -> None:
        """At a checkpoint after ``done`` iterations, halve the step of the stalling samples and restart them."""
        history = s.history
        increases = (history[:, done - interval + 1 : done + 1] > history[:, done - interval : done]).sum(dim=1)
        oscillating = increases <= self.rho * interval
        stalled = ~s.reduced_last & (s.loss_best_last >= s.loss_best)
        reduce = oscillating | stalled
        s.reduced_last, s.loss_best_last = reduce, s.loss_best.clone()
        rows = reduce.reshape(-1, *([1] * (s.x_adv.ndim - 1)))
        s.step = torch.where(reduce, s.step / 2.0, s.step)
        s.x_adv = torch.where(rows, s.x_best, s.x_adv)
        s.grad = torch.where(rows, s.grad_best, s.grad)


class APGDT(APGD):
    """Targeted APGD as in AutoAttack (APGD-T): for each of the ``target_classes`` most likely other classes,
    run APGD on the targeted DLR loss towards that class, on the samples not yet misclassified.

    Success stays untargeted (any misclassification counts), as in AutoAttack. Classification only. The
    targeted DLR loss needs at least 4 classes; with fewer, the targeted CW margin replaces it and the result's
    ``details["notes"]`` says so.

    The target classes are ranked, per sample, either by their clean logit (``target_ranking="logits"``, as in
    AutoAttack) or by the linearized distance to the boundary with each of them (``"linearized"``, as MALT,
    Melamed et al. 2024, does): ``(z_y - z_t) / ||grad_x (z_y - z_t)||_*`` at the clean input, with ``||.||_*`` the
    dual norm of the attack's norm (L1 for L-inf, L2 for L2) over the voxels the mask lets change. A target
    whose boundary is close in the attack's own geometry comes first, even when its logit is not the second
    largest; trying the first few of this order finds nearly every success of the first nine by logit. It costs
    one forward pass and one backward pass per candidate (the ``ranking_candidates`` classes with the largest
    logits), once per batch, before any iteration.

    Args:
        model: the model under attack.
        target_classes: how many target classes to try (default 9), capped at classes - 1.
        loss: "dlr" (targeted DLR, default), "ce" or "cw", pulled towards each target.
        target_ranking: "logits" (default) or "linearized".
        ranking_candidates: with ``"linearized"``, how many classes (those with the largest clean logits) are
            ranked by their linearized distance; the others follow in the order of their logits.
        kwargs: the other arguments of :class:`APGD` and :class:`~monai_adv.attacks.Attack` (steps and restarts
            per target class; the task is classification, untargeted).
    """

    name = "apgd_t"
    fixed_arguments = ("task", "targeted", "seg_success_ratio")
    tasks = ("classification",)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        target_classes: int = 9,
        loss: str = "dlr",
        target_ranking: str = "logits",
        ranking_candidates: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, loss=loss, task="classification", **kwargs)
        self.target_classes = check_int(target_classes, "target_classes")
        self.target_ranking = check_choice(target_ranking, "target_ranking", TARGET_RANKINGS)
        self.ranking_candidates = check_int(ranking_candidates, "ranking_candidates")

    def _objective_loss(self, num_classes: int):
        # the targeted DLR loss needs 4 classes: below, pull with the targeted CW margin and say so
        if self.loss == "dlr" and max(num_classes, 2) < 4:
            classes = max(num_classes, 2)
            return "cw", [f"Targeted DLR needs 4 classes, the model has {classes}: APGD-T uses the targeted CW margin."]
        return self.loss, []

    def _perturb(self, state: AttackState):
        objective = state.objective
        ranked = rank_other_classes(state.clean_logits, objective.labels)
        tries = min(self.target_classes, max(objective.num_classes, 2) - 1)
        if self.target_ranking == "linearized" and tries < ranked.shape[1] - 1:  # with every class tried, no need
            ranked = self._linearized_ranking(state, ranked)
        best = BestIterate(state.x, state.clean_success)
        everyone = torch.arange(state.x.shape[0], device=state.x.device)
        for rank in range(tries):
            pulled = objective.with_loss_targets(ranked[:, rank], loss=objective.loss_name)
            self._restarts(state, pulled, everyone, best, stream=rank * self.restarts)
        return state.result(best.x, best.success, best.loss)

    def _linearized_ranking(self, state: AttackState, ranked: torch.Tensor) -> torch.Tensor:
        """The other classes reordered by the linearized distance to their boundary: the first
        ``ranking_candidates`` of ``ranked`` (by logit) sorted by ``(z_y - z_t) / ||grad (z_y - z_t)||_*``, then the
        rest as they were. One forward pass, one backward pass per candidate."""
        candidates = ranked[:, : min(self.ranking_candidates, ranked.shape[1] - 1)]
        labels = state.objective.labels
        x = state.x.detach().requires_grad_(True)
        logits = as_two_logits(self.call_model(x))
        true = logits.gather(1, labels[:, None])[:, 0]
        distances = []
        for j in range(candidates.shape[1]):
            gap = true - logits.gather(1, candidates[:, j : j + 1])[:, 0]
            (grad,) = torch.autograd.grad(gap.sum(), x, retain_graph=j + 1 < candidates.shape[1])
            grad = torch.nan_to_num(grad if state.mask is None else grad * state.mask).flatten(1)
            dual = grad.abs().sum(dim=1) if self.norm == "Linf" else grad.norm(dim=1)
            distances.append(gap.detach().clamp_min(0.0) / dual.clamp_min(1e-12))
        order = torch.stack(distances, dim=1).argsort(dim=1, stable=True)
        return torch.cat([candidates.gather(1, order), ranked[:, candidates.shape[1] :]], dim=1)
