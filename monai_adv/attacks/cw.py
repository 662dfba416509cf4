# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The survey's "CW" attack: projected sign steps on the Carlini-Wagner margin loss (CW-L-inf)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from monai_adv.attacks.pgd import PGD

__all__ = ["CW"]


class CW(PGD):
    """PGD on the Carlini-Wagner margin loss ``min(max_{i != y} z_i - z_y, kappa)``.

    This is the "CW" of the benchmark protocol (Dong et al. 2024): 30 sign steps (L-inf) on the margin with
    confidence ``kappa`` = 50, the L-inf analogue of Carlini & Wagner's loss as used by Madry et al.; it is
    not the original L2 optimization-based CW attack. With ``early_stop`` the attack stops at the first
    misclassification; set ``early_stop=False`` to keep pushing each sample towards margin ``kappa``
    (high-confidence examples, e.g. for transfer).

    Args:
        model: the model under attack.
        steps: number of gradient steps.
        kappa: confidence: the margin stops rewarding the attack beyond ``kappa``.
        random_start: start from a random point of the ball instead of the clean input.
        kwargs: the other arguments of :class:`~monai_adv.attacks.PGD` and :class:`~monai_adv.attacks.Attack`
            (the loss is the margin).
    """

    name = "cw"
    fixed_arguments = ("loss",)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        steps: int = 30,
        kappa: float = 50.0,
        random_start: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, steps=steps, kappa=kappa, random_start=random_start, loss="cw", **kwargs)
