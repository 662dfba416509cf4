# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Transfer attacks: craft adversarial examples on a surrogate model, score them on the target model."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from monai_adv.attacks.base import Attack, AttackState
from monai_adv.attacks.registry import attack_arguments, make_attack

__all__ = ["TransferAttack"]


class TransferAttack(Attack):
    """Craft with a ``source`` attack on a surrogate model, then score the examples on ``model`` (the target).

    This is the surrogate/target protocol of the benchmark: the target model is only evaluated, never
    differentiated, so it may be any callable returning logits (a black box). ``perturb`` returns the
    surrogate's adversarial batch with ``success``, ``loss`` and ``clean_success`` measured on the target; the
    source attack's own result (on the surrogate) is ``result.details["source"]``.

    Args:
        model: the target model the examples are scored on.
        source: the attack on the surrogate: an attack built on it, e.g. ``PGD(surrogate, eps=4 / 255)`` (its
            budget, norm, range, task and seed are this attack's), or a registered name, built on ``surrogate``
            with this attack's arguments and ``source_kwargs``. High-confidence examples transfer better:
            ``CW(surrogate, kappa=50, early_stop=False)`` keeps pushing past the surrogate's decision boundary.
        surrogate: the model the examples are crafted on, when ``source`` is a name; default the target itself
            (then the result equals the white-box source attack's: a check of the protocol, not a transfer).
        source_kwargs: the source attack's own arguments, when ``source`` is a name (e.g. ``{"steps": 20}``).
        kwargs: the other arguments of :class:`~monai_adv.attacks.Attack`, when ``source`` is a name.

    Example::

        transfer = TransferAttack(target, PGD(surrogate, eps=8 / 255, steps=20, early_stop=False))
        transfer = make_attack("transfer", target, source="pgd", surrogate=surrogate, eps=8 / 255)
        result = transfer.perturb(x, y)
        robust_accuracy = 1 - result.success.float().mean()
    """

    name = "transfer"
    fixed_arguments = ("early_stop",)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        source: Union[Attack, str] = "pgd",
        surrogate: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        source_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(source, Attack):
            if surrogate is not None or source_kwargs or kwargs:
                raise ValueError(
                    "`source` is a built attack: configure it (its model is the surrogate); `surrogate`, "
                    f"`source_kwargs` and {sorted(kwargs)} apply only when `source` is a name."
                )
            kwargs = {k: v for k, v in source.settings().items() if k not in self.fixed_arguments}
            if kwargs["loss"] == "dlr":  # the target may have fewer classes: score with the cross-entropy
                kwargs.update(loss="ce", loss_kwargs=None)
        elif isinstance(source, str):
            surrogate = model if surrogate is None else surrogate
            given = {k: v for k, v in kwargs.items() if k in attack_arguments(source)}
            source = make_attack(source, surrogate, **given, **(source_kwargs or {}))
        else:
            raise TypeError(f"`source` must be an attack or an attack name, got {type(source).__name__}.")
        if source.targeted == "least_likely":
            raise ValueError(
                '`source` with targeted="least_likely" picks targets from the surrogate\'s outputs, which the target '
                'model does not share; pass explicit targets (targeted=True) or targeted="random".'
            )
        super().__init__(model, **kwargs)
        self.source = source

    def __repr__(self) -> str:
        return f"TransferAttack({self.source!r} -> {type(self.model).__name__})"

    @property
    def per_sample_details(self) -> Tuple[str, ...]:  # the details of the source's result in ``details["source"]``
        return tuple(self.source.per_sample_details)

    def _perturb(self, state: AttackState):
        crafted = self.source.perturb(state.x_input, state.y, state.mask, state.target, state.loss_mask)
        x_adv = crafted.x_adv.as_subclass(torch.Tensor)
        with torch.inference_mode():
            logits = self.call_model(x_adv.to(state.x.dtype))
            loss, success = state.objective.loss(logits, slice(None)), state.objective.success(logits, slice(None))
        return state.result(x_adv, success, loss.double(), source=crafted)
