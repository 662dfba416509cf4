# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Transfer attacks: craft adversarial examples on a surrogate model, score them on a target model."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from monai_adv.attacks.base import Attack, AttackResult
from monai_adv.attacks.scoring import score_examples

__all__ = ["TransferAttack"]


class TransferAttack:
    """Craft with ``attack`` on its (surrogate) model, then score the examples on ``target_model``.

    This is the surrogate/target protocol of the benchmark: the target model is only evaluated, never
    differentiated, so it may be any callable returning logits (a black box). ``perturb`` returns the
    surrogate's adversarial batch with ``success`` and ``clean_success`` measured on the target; the
    surrogate's own result is kept in ``last_source_result``.

    Args:
        attack: an attack built on the surrogate model, e.g. ``PGD(surrogate, eps=4 / 255, steps=20)``.
            High-confidence examples transfer better: ``CW(surrogate, kappa=50, early_stop=False)`` keeps
            pushing past the surrogate's decision boundary.
        target_model: the model the examples are scored on.

    Example::

        transfer = TransferAttack(PGD(surrogate, eps=8 / 255, steps=20, early_stop=False), target)
        result = transfer.perturb(x, y)
        robust_accuracy = 1 - result.success.float().mean()
    """

    def __init__(self, attack: Attack, target_model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if not isinstance(attack, Attack):
            raise TypeError(f"`attack` must be a monai_adv attack built on the surrogate, got {type(attack).__name__}.")
        if attack.targeted == "least_likely":
            raise ValueError(
                '`attack` with targeted="least_likely" picks targets from the surrogate\'s outputs, which the target '
                'model does not share; pass explicit targets (targeted=True) or targeted="random".'
            )
        self.attack = attack
        self.target_model = target_model
        self.last_source_result: Optional[AttackResult] = None

    def __repr__(self) -> str:
        return f"TransferAttack({self.attack!r} -> {type(self.target_model).__name__})"

    def __call__(self, x: torch.Tensor, y: Any, mask: Optional[Any] = None, target: Optional[Any] = None):
        return self.perturb(x, y, mask=mask, target=target).x_adv

    def perturb(
        self, x: torch.Tensor, y: Any, mask: Optional[Any] = None, target: Optional[Any] = None
    ) -> AttackResult:
        """Craft on the surrogate, score on the target. Arguments as :meth:`Attack.perturb`."""
        self.last_source_result = self.attack.perturb(x, y, mask=mask, target=target)
        return score_examples(self.attack, self.target_model, x, self.last_source_result.x_adv, y, mask, target)
