# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Fast gradient sign method (Goodfellow et al. 2015), and its random-start variant (Wong et al. 2020)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from monai_adv.attacks.pgd import PGD

__all__ = ["FGSM"]


class FGSM(PGD):
    """One gradient step of size ``alpha`` (default ``eps``) from the clean input or from a random start.

    ``x_adv = clip(x + eps * sign(grad))`` for L-inf, ``x + eps * grad / ||grad||_2`` for L2. With
    ``random_start=True`` and ``alpha=1.25 * eps`` it is the step used by fast adversarial training
    (Wong et al. 2020), projected back onto the eps-ball.

    Args:
        model: the model under attack (see :class:`~monai_adv.attacks.base.Attack`).
        eps: budget (>= 0).
        norm: "Linf" or "L2".
        loss: "ce", "cw", "dlr" or "dice".
        value_range: ``(lo, hi)`` or None.
        targeted: False, True, "least_likely" or "random".
        task: "auto", "classification", "multilabel" or "segmentation".
        random_start: start from a random point of the ball.
        alpha: step size; default ``eps``.
        kappa: confidence cap of the "cw" loss.
        seg_success_ratio: segmentation goal (see :class:`~monai_adv.attacks.base.Attack`).
        best_iterate: keep the start point when it is better than the step (default False: always the step).
        early_stop: leave samples misclassified clean untouched (default False: perturb every sample).
        seed: seed of the per-sample random starts.
    """

    name = "fgsm"

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        norm: str = "Linf",
        loss: str = "ce",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        targeted: Union[bool, str] = False,
        task: str = "auto",
        random_start: bool = False,
        alpha: Optional[float] = None,
        kappa: float = 0.0,
        seg_success_ratio: float = 0.5,
        best_iterate: bool = False,
        early_stop: bool = False,
        seed: Optional[int] = 0,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            steps=1,
            alpha=alpha,
            norm=norm,
            loss=loss,
            value_range=value_range,
            random_start=random_start,
            restarts=1,
            targeted=targeted,
            task=task,
            kappa=kappa,
            seg_success_ratio=seg_success_ratio,
            best_iterate=best_iterate,
            early_stop=early_stop,
            seed=seed,
        )
        if alpha is None:
            self.alpha = self.eps
