# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Transfer attacks: craft adversarial examples on a surrogate model, score them on a target model."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from monai_adv.attacks.base import Attack, AttackResult, AttackState

__all__ = ["TransferAttack"]


class _ScoreOnTarget(Attack):
    """Scores given adversarial examples on the target model: one clean and one adversarial forward pass."""

    def __init__(self, target_model: Callable, source: Attack) -> None:
        super().__init__(
            target_model,
            eps=source.eps,
            norm=source.norm,
            loss=source.loss if source.loss != "dlr" else "ce",
            value_range=source.value_range,
            targeted=source.targeted,
            task=source.task,
            kappa=source.kappa,
            seg_success_ratio=source.seg_success_ratio,
            early_stop=False,
            seed=source.seed,
        )
        self.crafted: Optional[torch.Tensor] = None

    def _perturb(self, state: AttackState):
        x_adv = self.crafted.to(state.x.device, state.x.dtype)
        everyone = slice(None)
        with torch.no_grad():
            logits = self.forward(x_adv)
            return x_adv, state.objective.success(logits, everyone), state.objective.loss(logits, everyone).double()


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
        self._scorer = _ScoreOnTarget(target_model, attack)
        self.last_source_result: Optional[AttackResult] = None

    @property
    def target_model(self) -> Callable:
        return self._scorer.model

    def __repr__(self) -> str:
        return f"TransferAttack({self.attack!r} -> {type(self.target_model).__name__})"

    def __call__(self, x: torch.Tensor, y: Any, mask: Optional[Any] = None, target: Optional[Any] = None):
        return self.perturb(x, y, mask=mask, target=target).x_adv

    def perturb(
        self, x: torch.Tensor, y: Any, mask: Optional[Any] = None, target: Optional[Any] = None
    ) -> AttackResult:
        """Craft on the surrogate, score on the target. Arguments as :meth:`Attack.perturb`."""
        self.last_source_result = self.attack.perturb(x, y, mask=mask, target=target)
        crafted = self.last_source_result.x_adv
        self._scorer.crafted = crafted.detach().as_subclass(torch.Tensor)
        try:
            return self._scorer.perturb(x, y, mask=mask, target=target)
        finally:
            self._scorer.crafted = None
