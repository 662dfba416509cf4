# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Fast gradient sign method (Goodfellow et al. 2015), and its random-start variant (Wong et al. 2020)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from monai_adv.attacks.pgd import PGD

__all__ = ["FGSM"]


class FGSM(PGD):
    """One gradient step of size ``alpha`` (default ``eps``) from the clean input or from a random start.

    ``x_adv = clip(x + eps * sign(grad))`` for L-inf, ``x + eps * grad / ||grad||_2`` for L2. With
    ``random_start=True`` and ``alpha=1.25 * eps`` it is the step used by fast adversarial training
    (Wong et al. 2020), projected back onto the eps-ball.

    Args:
        model: the model under attack.
        alpha: step size; default ``eps``.
        random_start: start from a random point of the ball.
        best_iterate: keep the start point when it is better than the step (default False: always the step).
        early_stop: leave samples misclassified clean untouched (default False: perturb every sample).
        kwargs: the other arguments of :class:`~monai_adv.attacks.PGD` and :class:`~monai_adv.attacks.Attack`
            (one step, one restart).
    """

    name = "fgsm"
    fixed_arguments = ("steps", "restarts")

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        alpha: Optional[float] = None,
        random_start: bool = False,
        best_iterate: bool = False,
        early_stop: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            steps=1,
            restarts=1,
            alpha=alpha,
            random_start=random_start,
            best_iterate=best_iterate,
            early_stop=early_stop,
            **kwargs,
        )
        if alpha is None:
            self.alpha = self.eps
