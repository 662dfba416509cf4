# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Projected gradient descent (Madry et al. 2018), L-inf and L2, the engine of FGSM and CW too."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from monai_adv.attacks.base import Attack, AttackState, BestIterate
from monai_adv.attacks.projections import ascent_step, clip_to_range, project, random_start
from monai_adv.attacks.seeding import sample_generators
from monai_adv.attacks.validation import check_int, check_positive

__all__ = ["PGD"]


class PGD(Attack):
    """Projected gradient descent: ``steps`` ascent steps on the loss, each projected onto the eps-ball and range.

    L-inf takes sign steps, L2 normalized-gradient steps. The random start is uniform in the ball
    (per coordinate for L-inf). With ``restarts`` > 1 each restart runs only on the samples not yet fooled
    (with ``early_stop``) and each sample keeps its best point over all restarts.

    Args:
        model: the model under attack (see :class:`~monai_adv.attacks.base.Attack`).
        eps: budget (>= 0).
        steps: number of gradient steps (>= 1).
        alpha: step size; default ``eps / 4``.
        norm: "Linf" or "L2".
        loss: "ce", "cw", "dlr" or "dice" (see :class:`~monai_adv.attacks.base.Attack`).
        value_range: ``(lo, hi)`` or None.
        random_start: start at a random point of the ball (True) or at the clean input (False).
        restarts: number of random restarts (>= 1; > 1 needs ``random_start``).
        targeted: False, True, "least_likely" or "random".
        task: "auto", "classification", "multilabel" or "segmentation".
        kappa: confidence cap of the "cw" loss.
        seg_success_ratio: segmentation goal (see :class:`~monai_adv.attacks.base.Attack`).
        best_iterate: return each sample's best point (one that fools, else the highest loss) over all
            iterates, which costs one extra forward pass at the end. False returns the last iterate, as
            in the textbook algorithm and in adversarial training.
        early_stop: stop attacking a sample as soon as it is fooled, and skip samples misclassified clean.
        seed: seed of the per-sample random starts.

    Example::

        atk = PGD(model, eps=4 / 255, steps=20, alpha=1 / 255)
        x_adv = atk(x, y)
        x_adv = atk(x, y, mask=roi)  # perturb inside the region of interest only
    """

    name = "pgd"

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        steps: int = 10,
        alpha: Optional[float] = None,
        norm: str = "Linf",
        loss: str = "ce",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        random_start: bool = True,
        restarts: int = 1,
        targeted: Union[bool, str] = False,
        task: str = "auto",
        kappa: float = 0.0,
        seg_success_ratio: float = 0.5,
        best_iterate: bool = True,
        early_stop: bool = True,
        seed: Optional[int] = 0,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            norm=norm,
            loss=loss,
            value_range=value_range,
            targeted=targeted,
            task=task,
            kappa=kappa,
            seg_success_ratio=seg_success_ratio,
            early_stop=early_stop,
            seed=seed,
        )
        self.steps = check_int(steps, "steps")
        self.alpha = self.eps / 4 if alpha is None else check_positive(alpha, "alpha")
        self.random_start = bool(random_start)
        self.restarts = check_int(restarts, "restarts")
        if self.restarts > 1 and not self.random_start:
            raise ValueError("`restarts` > 1 needs random_start=True: every restart from the clean input is the same.")
        self.best_iterate = bool(best_iterate)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g}, norm={self.norm!r}, "
            f"loss={self.loss!r}, random_start={self.random_start}, restarts={self.restarts})"
        )

    def _clean_pass_needs_grad(self) -> bool:
        # without a random start the first step starts at the clean input: reuse the clean pass for its gradient
        return not self.random_start and self.eps > 0

    def _evaluates_last(self) -> bool:
        return self.best_iterate or self.restarts > 1

    def _first_point_without_clean_pass(self, x, mask, keys, seed):
        # random start, every sample attacked, last iterate: nothing reads the clean prediction
        reads_clean = self.early_stop or self._evaluates_last() or self.targeted == "least_likely"
        if not self.random_start or reads_clean or self.eps == 0:
            return None
        return self._random_point(x, mask, sample_generators(keys, seed, 0, x.device))

    def _random_point(self, x0: torch.Tensor, mask: Optional[torch.Tensor], generators) -> torch.Tensor:
        delta = random_start(x0, self.eps, self.norm, mask, generators)
        return clip_to_range(x0 + delta, self.value_range)

    def _perturb(self, state: AttackState):
        if self.eps == 0:
            return state.x, state.clean_success, state.clean_loss.double()
        n, device = state.x.shape[0], state.x.device
        best = BestIterate(state.x, state.clean_success)
        todo = torch.arange(n, device=device)
        for restart in range(self.restarts):
            if self.early_stop:
                todo = todo[~best.success[todo]]
            if todo.numel() == 0:
                break
            self._run(state, todo, restart, best)
        if not self._evaluates_last():
            return best.x, None, None
        return best.x, best.success, best.loss

    def _step(self, x_adv: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, mask: Optional[torch.Tensor]):
        if mask is not None:
            grad = grad * mask
        delta = project(ascent_step(x_adv, grad, self.alpha, self.norm) - x0, self.eps, self.norm)
        if mask is not None:
            delta = delta * mask
        return clip_to_range(x0 + delta, self.value_range)

    def _run(self, state: AttackState, idx: torch.Tensor, restart: int, best: BestIterate) -> None:
        """One restart of PGD on the samples ``idx``, offering its iterates to ``best``."""
        objective = state.objective
        x0 = state.x[idx]
        mask = None if state.mask is None else state.mask[idx]
        if state.clean_pass_skipped:  # the first point was drawn and evaluated in place of the clean pass
            x_adv = state.x_with_grad.detach()[idx]
        elif self.random_start:
            x_adv = self._random_point(x0, mask, self.generators(state, idx, restart))
        else:
            x_adv = x0.clone()
        track = self.best_iterate or self.early_stop
        for step in range(self.steps):
            if step == 0 and state.x_with_grad is not None and restart == 0:
                logits = state.clean_logits[idx]
                loss = objective.loss(logits, idx)
                grad = self.input_gradient(loss, state.x_with_grad)[idx]
                state.x_with_grad = None  # the clean graph is used once
            else:
                x_adv.requires_grad_(True)
                logits = self.forward(x_adv)
                loss = objective.loss(logits, idx)
                grad = self.input_gradient(loss, x_adv)
            x_adv = x_adv.detach()
            if track:
                with torch.no_grad():
                    success = objective.success(logits.detach(), idx)
                if self.best_iterate:
                    best.update(idx, x_adv, loss.detach(), success)
                elif bool(success.any()):
                    best.update(idx[success], x_adv[success], loss.detach()[success], success[success])
                if self.early_stop and bool(success.any()):
                    keep = ~success
                    idx, x_adv, grad, x0 = idx[keep], x_adv[keep], grad[keep], x0[keep]
                    mask = None if mask is None else mask[keep]
                    if idx.numel() == 0:
                        return
            with torch.no_grad():
                x_adv = self._step(x_adv, grad, x0, mask)
        if self._evaluates_last():
            with torch.inference_mode():
                logits = self.forward(x_adv)
                best.update(idx, x_adv, objective.loss(logits, idx), objective.success(logits, idx))
        else:
            best.overwrite(idx, x_adv)
