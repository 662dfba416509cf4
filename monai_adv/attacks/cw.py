# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The survey's "CW" attack: projected sign steps on the Carlini-Wagner margin loss (CW-L-inf)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

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
        model: the model under attack (see :class:`~monai_adv.attacks.base.Attack`).
        eps: budget (>= 0).
        steps: number of gradient steps.
        alpha: step size; default ``eps / 4``.
        kappa: confidence: the margin stops rewarding the attack beyond ``kappa``.
        norm: "Linf" or "L2".
        value_range: ``(lo, hi)`` or None.
        random_start: start from a random point of the ball instead of the clean input.
        restarts: number of random restarts.
        targeted: False, True, "least_likely" or "random".
        task: "auto", "classification", "multilabel" or "segmentation".
        seg_success_ratio: segmentation goal (see :class:`~monai_adv.attacks.base.Attack`).
        best_iterate: return each sample's best iterate (default) or the last.
        early_stop: stop attacking a sample once it is misclassified.
        seed: seed of the per-sample random starts.
    """

    name = "cw"

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        steps: int = 30,
        alpha: Optional[float] = None,
        kappa: float = 50.0,
        norm: str = "Linf",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        random_start: bool = False,
        restarts: int = 1,
        targeted: Union[bool, str] = False,
        task: str = "auto",
        seg_success_ratio: float = 0.5,
        best_iterate: bool = True,
        early_stop: bool = True,
        seed: Optional[int] = 0,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            steps=steps,
            alpha=alpha,
            norm=norm,
            loss="cw",
            value_range=value_range,
            random_start=random_start,
            restarts=restarts,
            targeted=targeted,
            task=task,
            kappa=kappa,
            seg_success_ratio=seg_success_ratio,
            best_iterate=best_iterate,
            early_stop=early_stop,
            seed=seed,
        )
