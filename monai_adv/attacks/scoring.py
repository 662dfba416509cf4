# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Score given adversarial examples with an attack's goal on a model."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from monai_adv.attacks.base import Attack, AttackResult, AttackState

__all__ = ["score_examples"]


class _Scorer(Attack):
    """Evaluates given examples: one clean and one adversarial forward pass, no gradients."""

    def __init__(self, model: Callable, like: Attack, x_adv: torch.Tensor) -> None:
        settings = {**like.settings(), "early_stop": False, "max_batch": None}  # x_adv is the whole batch
        if like.loss == "dlr":  # the scored model may have fewer classes: score with the cross-entropy
            settings.update(loss="ce", loss_kwargs=None)
        super().__init__(model, **settings)
        self.x_adv = x_adv.detach().as_subclass(torch.Tensor)

    def _perturb(self, state: AttackState):
        x_adv = self.x_adv.to(state.x.device, state.x.dtype)
        everyone = slice(None)
        with torch.inference_mode():
            logits = self.call_model(x_adv)
            loss, success = state.objective.loss(logits, everyone).double(), state.objective.success(logits, everyone)
        return state.result(x_adv, success, loss)


def score_examples(
    like: Attack,
    model: Callable,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: Any,
    mask: Optional[Any] = None,
    target: Optional[Any] = None,
) -> AttackResult:
    """Evaluate ``x_adv`` (crafted from ``x``) on ``model`` with the goal of the attack ``like`` (its task,
    success criterion, targets and budget). Returns an :class:`AttackResult` with ``x_adv`` (within the budget),
    per-sample ``success`` and ``loss`` on ``model``, and ``clean_success`` of ``x``.
    """
    return _Scorer(model, like, x_adv).perturb(x, y, mask=mask, target=target)
