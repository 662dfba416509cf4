# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Universal adversarial perturbations: one perturbation in the eps-ball that fools a model on most images."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch

from monai_adv.attacks.base import AttackResult, AttackState
from monai_adv.attacks.fitted import FitBatch, FittedAttack
from monai_adv.attacks.guard import model_dtype
from monai_adv.attacks.projections import clip_to_range
from monai_adv.attacks.validation import check_positive

__all__ = ["UniversalPerturbation", "apply_perturbation"]


def apply_perturbation(
    x: torch.Tensor,
    perturbation: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    value_range: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """``x + perturbation`` (broadcast over the batch), only where ``mask`` is non-zero, clipped to ``value_range``
    there (voxels outside the mask are returned as they are).

    The perturbation is the same for every image; clipping to the range may shorten it on a given image, never
    lengthen it, so every image stays within the perturbation's norm of its clean version.
    """
    delta = perturbation.to(device=x.device, dtype=x.dtype)
    if mask is None:
        return clip_to_range(x + delta, value_range)
    inside = mask != 0
    return torch.where(inside, clip_to_range(x + delta * inside.to(x.dtype), value_range), x)  # outside: x as it is


class UniversalPerturbation(FittedAttack):
    """A universal adversarial perturbation (UAP): one perturbation of norm at most ``eps`` added to every image.

    Fitted by stochastic projected gradient ascent on the perturbation (the stochastic-gradient UAP of Shafahi et
    al., "Universal adversarial training", AAAI 2020, rather than the per-sample DeepFool iterations of
    Moosavi-Dezfooli et al., CVPR 2017): for each batch of the fit data, the gradient of the summed per-sample loss
    at the current perturbation, over the samples it does not fool yet (classification and multi-label; every
    sample for segmentation), gives one step (sign step of ``alpha`` for L-inf, a step of length ``alpha`` along
    the normalized gradient for L2), then the projection onto the eps-ball. It starts from zero. After each pass
    over the fit data the perturbation is scored on the fit data (one forward per sample: the share of samples it
    fools, then the mean loss) and the best one over the passes is kept. Cost per pass: one forward+backward and
    one forward per fit sample. Deterministic for given data in a given order (no random draw).

    Targeted (``target_class``): every image is pushed towards that one class (classification).

    Applying it (``attack(x, y)``, :meth:`perturb`, or :class:`monai_adv.transforms.ApplyPerturbationd` with the
    saved ``fitted`` tensor) adds the same tensor to every image, inside ``mask`` only, clipped to ``value_range``
    (see :func:`apply_perturbation`); the images must have the fitted shape (C, *spatial).

    Args:
        model: the model the perturbation is fitted on.
        epochs: passes over the fit data.
        alpha: step size; default ``eps / 10``.
        target_class: None (untargeted) or the class every image is pushed to.
        perturbation: an already fitted perturbation (C, *spatial) to apply (e.g. loaded from a file); its norm must
            be at most ``eps``.
        kwargs: the arguments of :class:`~monai_adv.attacks.Attack` (``eps``, ``norm``, ``loss``, ``value_range``,
            ``task``, ``seed``, ``max_batch``: the fit runs batches of at most ``max_batch`` samples at once and sums
            their gradients before the step).
    """

    threat_model = "universal"
    fixed_arguments = ("targeted",)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        epochs: int = 10,
        alpha: Optional[float] = None,
        target_class: Optional[int] = None,
        perturbation: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, epochs=epochs, **kwargs)
        self.alpha = self.eps / 10 if alpha is None else check_positive(alpha, "alpha")
        if target_class is not None and (isinstance(target_class, bool) or not isinstance(target_class, int)):
            raise TypeError(f"`target_class` must be None or a class index (int), got {target_class!r}.")
        if target_class is not None and target_class < 0:
            raise ValueError(f"`target_class` must be a class index >= 0, got {target_class}.")
        self.target_class = target_class
        self.targeted = target_class is not None
        if perturbation is not None:
            delta = torch.as_tensor(perturbation).detach().as_subclass(torch.Tensor).float()
            if delta.ndim < 2 or not bool(torch.isfinite(delta).all()):
                raise ValueError(
                    f"`perturbation` must be a finite tensor (C, *spatial), got shape {tuple(delta.shape)}."
                )
            if self._norm(delta) > self.eps * (1 + 1e-5):
                raise ValueError(
                    f"`perturbation` has {self.norm} norm {self._norm(delta):.6g}, larger than `eps` {self.eps:.6g}."
                )
            self.fitted = delta

    def _norm(self, delta: torch.Tensor) -> float:
        return float(delta.abs().max()) if self.norm == "Linf" else float(delta.double().norm())

    def _targets(self, n: int, device: torch.device, y: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        if self.target_class is None:
            return None
        if y is not None and torch.as_tensor(y).ndim != 1:
            raise ValueError(
                "`target_class` pushes every image to one class: it takes class-index labels (N,) of classification, "
                f"got labels of shape {tuple(torch.as_tensor(y).shape)}."
            )
        return torch.full((n,), self.target_class, device=device)

    def _call(self, x_adv: torch.Tensor) -> torch.Tensor:
        """The model on ``x_adv`` in the network's dtype (a float16/bfloat16 network takes its own dtype)."""
        return self.call_model(x_adv.to(model_dtype(self.model) or x_adv.dtype))

    def _attack(self, x, y, mask, target, loss_mask, need_clean: bool) -> AttackResult:
        if target is not None:
            raise ValueError("UniversalPerturbation takes its target as `target_class` when built, not at the call.")
        if self.target_class is not None:
            target = self._targets(int(torch.as_tensor(x).shape[0]), torch.as_tensor(x).device, torch.as_tensor(y))
        return super()._attack(x, y, mask, target, loss_mask, need_clean)

    # ---- fit --------------------------------------------------------------------------------------------------
    def _fit(self, batches: Callable[[], Iterator[FitBatch]]) -> torch.Tensor:
        delta: Optional[torch.Tensor] = None
        best: Optional[torch.Tensor] = None
        best_score = (-1.0, -math.inf)
        for _ in range(self.epochs):
            for x, y, mask in batches():
                if delta is None:
                    delta = torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
                self._check_shape(x, delta, "fit data")
                delta = self._step(delta, self._gradient(delta, x, y, mask))
            score = self._score(delta, batches)
            if score > best_score:
                best, best_score = delta.clone(), score
        return best

    def _rows(self, n: int) -> List[slice]:
        size = n if self.max_batch is None else self.max_batch
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def _gradient(self, delta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor]):
        """The gradient of the per-sample loss, summed over the samples not yet fooled, at ``delta``."""
        grad = torch.zeros_like(delta)
        for rows in self._rows(x.shape[0]):
            d = delta.detach().requires_grad_(True)
            x_adv = apply_perturbation(x[rows], d, None if mask is None else mask[rows], self.value_range)
            logits = self._call(x_adv)
            objective = self.batch_objective(logits, y[rows], self._targets(x_adv.shape[0], x.device, y))
            loss = objective.loss(logits, slice(None))
            if objective.task != "segmentation":  # fooled samples stop pulling: the step serves the others
                loss = loss * (~objective.success(logits.detach(), slice(None))).to(loss.dtype)
            if not loss.requires_grad:  # every sample fooled: nothing to follow
                continue
            (g,) = torch.autograd.grad(loss.sum(), d, allow_unused=True)
            if g is not None:
                grad += torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        return grad

    def _step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "Linf":
            return (delta + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
        length = grad.double().norm()
        if length > 0:
            delta = delta + (self.alpha * grad.double() / length).to(delta.dtype)
        size = delta.double().norm()
        return delta if size <= self.eps else (delta.double() * (self.eps / size)).to(delta.dtype)

    @torch.no_grad()
    def _score(self, delta: torch.Tensor, batches: Callable[[], Iterator[FitBatch]]) -> Tuple[float, float]:
        """(share of fit samples fooled, mean loss) of ``delta``: the criterion that picks the kept pass."""
        fooled, total, n = 0.0, 0.0, 0
        for x, y, mask in batches():
            for rows in self._rows(x.shape[0]):
                x_adv = apply_perturbation(x[rows], delta, None if mask is None else mask[rows], self.value_range)
                logits = self._call(x_adv)
                objective = self.batch_objective(logits, y[rows], self._targets(x_adv.shape[0], x.device, y))
                total += float(objective.loss(logits, slice(None)).double().sum())
                if objective.task != "segmentation":
                    fooled += float(objective.success(logits, slice(None)).sum())
                n += x_adv.shape[0]
        return fooled / max(n, 1), total / max(n, 1)

    @staticmethod
    def _check_shape(x: torch.Tensor, delta: torch.Tensor, what: str) -> None:
        if tuple(x.shape[1:]) != tuple(delta.shape):
            raise ValueError(
                f"{what}: images of shape (C, *spatial) = {tuple(x.shape[1:])} do not match the universal "
                f"perturbation's {tuple(delta.shape)}; every image must have the shape it was fitted on."
            )

    # ---- apply ------------------------------------------------------------------------------------------------
    def _perturb(self, state: AttackState) -> AttackResult:
        delta = self.check_fitted(state.x)
        self._check_shape(state.x, delta, "`x`")
        x_adv = apply_perturbation(state.x, delta, state.mask, self.value_range)
        idx = torch.arange(state.x.shape[0], device=state.x.device)
        loss, success = self.query(state, x_adv, idx)
        if state.objective.targeted:  # an image already of the target class is no success of the perturbation
            success = success & (state.objective.labels != state.objective.targets)
        return state.result(x_adv, success, loss)
