# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""N-FGSM (de Jorge et al. 2022): single-step adversarial training from a large noise, without projection."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch

from monai_adv.attacks import FGSM, Attack
from monai_adv.attacks.projections import ascent_step, clip_to_range, random_start
from monai_adv.attacks.validation import check_eps, check_int, check_positive
from monai_adv.defenses.objectives import Defense

__all__ = ["NFGSM", "NoisyFGSM"]


class NoisyFGSM(FGSM):
    """The N-FGSM example as an attack: ``clip(x + eta + alpha * sign(grad at x + eta))`` with ``eta`` uniform in
    the ball of radius ``noise`` (per coordinate for L-inf), not projected back onto any ball.

    ``eps`` is the reach of the example, ``noise + alpha``: the attack's exact-budget guarantee then only corrects
    rounding, and the example lies up to ``noise + alpha`` from ``x`` (in the norm), inside ``value_range``. The
    noise is drawn from each sample's own random stream (stream 0 of the attack's ``seed``, as every random start),
    so a sample's example does not depend on the rest of its batch. Built by :class:`NFGSM`; with a random start
    (required), no early exit and the last iterate, ``attack(x, y)`` costs one forward and one backward pass.

    Args:
        model: the model under attack.
        noise: the radius of the noise ``eta`` (``k * eps`` in N-FGSM).
        alpha: the step.
        kwargs: the other arguments of :class:`~monai_adv.attacks.FGSM` (``eps`` is the reach ``noise + alpha``).
    """

    name = "n_fgsm"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], noise: float, alpha: float, **kwargs: Any):
        super().__init__(model, alpha=alpha, **kwargs)
        self.noise = check_eps(noise, "noise")
        if self.noise + self.alpha > self.eps * (1 + 1e-6):
            raise ValueError(
                f"`eps`={self.eps:g} must be the reach of the example, `noise` + `alpha` = {self.noise + self.alpha:g}."
            )

    def _random_point(self, x0: torch.Tensor, mask: Optional[torch.Tensor], generators) -> torch.Tensor:
        return clip_to_range(x0 + random_start(x0, self.noise, self.norm, mask, generators), self.value_range)

    def _step(self, x_adv: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, mask: Optional[torch.Tensor]):
        if mask is not None:
            grad = grad * mask
        return clip_to_range(ascent_step(x_adv, grad, self.alpha, self.norm), self.value_range)


class NFGSM(Defense):
    """N-FGSM (de Jorge et al., NeurIPS 2022, "Make some noise: reliable and efficient single-step adversarial
    training"): the task loss on ``x_adv = clip(x + eta + alpha * sign(grad_x L(x + eta)))`` with strong noise
    ``eta ~ U(-k eps, k eps)`` per element and **no projection** back onto the eps-ball.

    Fast adversarial training (:class:`~monai_adv.defenses.FastAT`) clips its single FGSM step back to the
    eps-ball; at larger budgets it suffers catastrophic overfitting (robustness to multi-step attacks collapses
    within an epoch). De Jorge et al. show that a larger noise (``k = 2``) around the clean point, with a step of
    ``alpha = eps`` and no clipping of the perturbation, avoids it at the cost of FGSM, without the
    regularizers (GradAlign) that double the cost. The training examples then lie up to ``(k + 1) eps`` from
    ``x`` (in the L-inf norm), further than the eps of the evaluation, by design; they are only clipped to
    ``value_range``.

    Cost per batch: one forward and one backward pass for the example (the gradient at ``x + eta``) and the
    training pass. The example is computed on the network's eval view, as every training attack of
    :mod:`monai_adv.defenses` (:class:`NoisyFGSM`, an attack of :mod:`monai_adv.attacks`); each sample's noise
    comes from its own random stream, keyed by its content and the call's ``seed`` (None: PyTorch's global
    generator), so it does not depend on the rest of the batch, and :class:`~monai_adv.engines.RobustTrainer` with
    a ``seed`` draws the same noise when a run is resumed.

    For classification (CE), multi-label (BCE) and segmentation (CE or Dice, 2D and 3D), as PGD-AT. With
    ``norm="L2"`` the noise is uniform in the L2 ball of radius ``k eps`` and the step is a normalized-gradient
    step of ``alpha`` (the paper studies L-inf). It returns the logits on ``x_adv`` as the ``"adversarial"``
    output and no clean logits.

    Args:
        eps: the budget the network is trained for, in the units of ``value_range``.
        alpha: the step; default ``eps`` (the paper's).
        k: the noise radius in units of ``eps`` (>= 0); default 2 (the paper's). ``k = 0`` is FGSM from ``x``.
        steps: accepted so that one set of defense arguments serves every defense; N-FGSM takes one step, and
            any other value is ignored with a warning.
        kwargs: ``norm``, ``value_range``, ``task``, ``loss`` of :class:`~monai_adv.defenses.Defense`.
    """

    name = "n_fgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: Optional[float] = None,
        k: float = 2.0,
        steps: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if steps is not None and check_int(steps, "steps") != 1:
            warnings.warn(f"n_fgsm takes one FGSM step: `steps`={steps} is ignored.", UserWarning, stacklevel=2)
        eps = check_eps(eps)
        alpha = eps if alpha is None else check_positive(alpha, "alpha")
        super().__init__(eps=eps, steps=1, alpha=alpha, **kwargs)
        self.k = check_eps(k, "k")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, alpha={self.alpha:g}, k={self.k:g}, norm={self.norm!r})"

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        """The N-FGSM example maker (:class:`NoisyFGSM`): noise of radius ``k eps``, one step of ``alpha``."""
        noise = self.k * self.eps
        # alpha is 0 only with eps 0: the reach is then 0 and the attack returns the clean input
        return self._training_attack(
            NoisyFGSM, network, seed, eps=noise + self.alpha, noise=noise, alpha=self.alpha or None
        )

    def objective(self, network, inputs, targets):
        logits = network(self._adversarial(network, inputs, targets))
        return self._criterion(logits, targets), {"clean": None, "adversarial": logits}
