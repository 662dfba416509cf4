# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Projected gradient descent (Madry et al. 2018), L-inf and L2, the engine of FGSM and CW too."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.base import AttackState, FirstPass, IterativeAttack
from monai_adv.attacks.objective import reads_clean_logits
from monai_adv.attacks.projections import ascent_step, clip_to_range, gaussian_start, project, random_start
from monai_adv.attacks.seeding import sample_generators
from monai_adv.attacks.validation import check_positive

__all__ = ["PGD"]


class PGD(IterativeAttack):
    """Projected gradient descent: ``steps`` ascent steps on the loss, each projected onto the eps-ball and range.

    L-inf takes sign steps, L2 normalized-gradient steps. The random start is uniform in the ball
    (per coordinate for L-inf), or Gaussian with ``start_sigma``. With ``restarts`` > 1 each restart runs only on
    the samples not yet fooled (with ``early_stop``) and each sample keeps its best point over all restarts.

    Cost: ``steps`` forward and backward passes, plus the clean forward pass and, with ``best_iterate``, one
    forward pass at the end. Called as ``attack(x, y)`` with a random start, no early exit and the last iterate
    (adversarial training), nothing reads the clean prediction: the first iterate's pass takes the clean pass's
    place. Without a random start, the clean pass keeps its graph and gives the first gradient.

    Args:
        model: the model under attack.
        steps: number of gradient steps (>= 1).
        alpha: step size; default ``eps / 4``.
        random_start: start at a random point of the ball (True) or at the clean input (False).
        start_sigma: with ``random_start``, draw the start from N(0, start_sigma^2) per voxel (TRADES' 0.001),
            projected onto the ball, instead of uniformly in the ball.
        best_iterate: return each sample's best point (one that fools, else the highest loss) over all
            iterates, which costs one extra forward pass at the end. False returns the last iterate, as
            in the textbook algorithm and in adversarial training.
        kwargs: the arguments of :class:`~monai_adv.attacks.base.IterativeAttack` (``restarts``, > 1 needs
            ``random_start``) and :class:`~monai_adv.attacks.Attack` (eps, norm, loss, value_range, targeted,
            task, kappa, seg_success_ratio, early_stop, seed, ...).

    Example::

        atk = PGD(model, eps=4 / 255, steps=20, alpha=1 / 255)
        x_adv = atk(x, y)
        x_adv = atk(x, y, mask=roi)  # perturb inside the region of interest only
    """

    name = "pgd"

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        steps: int = 10,
        alpha: Optional[float] = None,
        random_start: bool = True,
        start_sigma: Optional[float] = None,
        best_iterate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, steps=steps, **kwargs)
        self.alpha = self.eps / 4 if alpha is None else check_positive(alpha, "alpha")
        self.random_start = bool(random_start)
        self.start_sigma = None if start_sigma is None else check_positive(start_sigma, "start_sigma")
        if self.restarts > 1 and not self.random_start:
            raise ValueError("`restarts` > 1 needs random_start=True: every restart from the clean input is the same.")
        self.best_iterate = bool(best_iterate)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g}, norm={self.norm!r}, "
            f"loss={self.loss!r}, random_start={self.random_start}, restarts={self.restarts})"
        )

    def _evaluates_last(self) -> bool:
        return self.best_iterate or self.restarts > 1

    def _reads_clean(self) -> bool:
        """Whether the run reads the clean prediction (early exit, best point, least-likely target, KL loss)."""
        return (
            self.early_stop
            or self._evaluates_last()
            or self.targeted == "least_likely"
            or reads_clean_logits(self.loss)
        )

    def _clean_pass(
        self, x: torch.Tensor, mask: Optional[torch.Tensor], keys: List[bytes], seed: int, need_clean: bool
    ) -> Tuple[torch.Tensor, Optional[FirstPass]]:
        if self.eps > 0 and not self.random_start:  # the first step starts at the clean input: keep its graph
            leaf = x.clone().requires_grad_(True)
            logits = self.call_model(leaf)
            return logits, FirstPass(leaf, logits, clean=True)
        if self.eps > 0 and not need_clean and not self._reads_clean():  # the first iterate replaces the clean pass
            leaf = self._random_point(x, mask, sample_generators(keys, seed, 0, x.device)).requires_grad_(True)
            logits = self.call_model(leaf)
            return logits, FirstPass(leaf, logits, clean=False)
        return super()._clean_pass(x, mask, keys, seed, need_clean)

    def _random_point(self, x0: torch.Tensor, mask: Optional[torch.Tensor], generators) -> torch.Tensor:
        if self.start_sigma is None:
            delta = random_start(x0, self.eps, self.norm, mask, generators)
        else:
            delta = project(gaussian_start(x0, self.start_sigma, mask, generators), self.eps, self.norm)
        return clip_to_range(x0 + delta, self.value_range)

    def _perturb(self, state: AttackState):
        best = BestIterate(state.x, state.clean_success)
        todo = torch.arange(state.x.shape[0], device=state.x.device)
        for restart in range(self.restarts):
            if self.early_stop:
                todo = todo[~best.success[todo]]
            if todo.numel() == 0:
                break
            self._run(state, todo, restart, best)
        if not self._evaluates_last():
            return state.result(best.x)
        return state.result(best.x, best.success, best.loss)

    def _step(self, x_adv: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, mask: Optional[torch.Tensor]):
        if mask is not None:
            grad = grad * mask
        delta = project(ascent_step(x_adv, grad, self.alpha, self.norm) - x0, self.eps, self.norm)
        if mask is not None:
            delta = delta * mask
        return clip_to_range(x0 + delta, self.value_range)

    def _gradient(self, state: AttackState, active: ActiveSet, step: int, restart: int):
        """Logits, loss and input gradient at the active samples' iterate (the first pass reused once)."""
        objective, first = state.objective, state.first
        if step == 0 and restart == 0 and first is not None:
            state.first = None  # its graph is used once
            logits = first.logits[active.idx]
            loss = objective.loss(logits, active.idx)
            return logits, loss, self.input_gradient(loss, first.x)[active.idx]
        x_adv = active.x_adv.requires_grad_(True)
        logits = self.call_model(x_adv)
        loss = objective.loss(logits, active.idx)
        return logits, loss, self.input_gradient(loss, x_adv)

    def _run(self, state: AttackState, idx: torch.Tensor, restart: int, best: BestIterate) -> None:
        """One restart of PGD on the samples ``idx``, offering its iterates to ``best``."""
        objective = state.objective
        mask = None if state.mask is None else state.mask[idx]
        x0 = state.x[idx]
        if state.first is not None and restart == 0:  # the first pass was run in the clean pass's place
            x_adv = state.first.x.detach()[idx]
        elif self.random_start:
            x_adv = self._random_point(x0, mask, self.generators(state, idx, restart))
        else:
            x_adv = x0.clone()
        active = ActiveSet(idx, x0=x0, x_adv=x_adv, mask=mask)
        track = self.best_iterate or self.early_stop
        for step in range(self.steps):
            logits, loss, grad = self._gradient(state, active, step, restart)
            active.x_adv = active.x_adv.detach()
            if track:  # no host synchronisation but early exit's one: which samples are left
                with torch.no_grad():
                    success = objective.success(logits.detach(), active.idx)
                offered = None if self.best_iterate else success  # without best_iterate: only points that fool
                best.update(active.idx, active.x_adv, loss.detach(), success, offered)
                if self.early_stop:
                    active.grad = grad
                    if not active.keep(~success):
                        return
                    grad = active.grad
            with torch.no_grad():
                active.x_adv = self._step(active.x_adv, grad, active.x0, active.mask)
        if self._evaluates_last():
            with torch.inference_mode():
                logits = self.call_model(active.x_adv)
                loss, success = objective.loss(logits, active.idx), objective.success(logits, active.idx)
            best.update(active.idx, active.x_adv, loss, success)
        else:
            best.overwrite(active.idx, active.x_adv)
