# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial weight perturbation (Wu et al. 2020) on top of PGD-AT or TRADES, without touching the weights."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from monai_adv.attacks import PGD, Attack
from monai_adv.attacks.tasks import TASKS
from monai_adv.attacks.validation import check_choice, check_eps
from monai_adv.defenses.objectives import Defense, Outputs

__all__ = ["AWP"]

_BASES = ("pgd_at", "trades")
_EPS = 1e-20  # the paper's guard against a zero gradient


class AWP(Defense):
    """Adversarial weight perturbation (Wu, Xia & Wang, NeurIPS 2020, "Adversarial weight perturbation helps
    robust generalization"): adversarial training whose loss is taken at adversarially perturbed weights
    ``w + v``, a double perturbation of inputs and weights that flattens the weight loss landscape and narrows
    the robust generalization gap (less robust overfitting).

    Per batch:

    1. the base defense's adversarial example ``x_adv`` (PGD-AT: PGD on the task loss; TRADES: PGD on the KL
       divergence from the clean prediction), on the network's eval view, as the base defense computes it;
    2. the weight perturbation ``v`` that increases the base loss at ``x_adv`` (PGD-AT: the task loss at
       ``x_adv``; TRADES: ``CE(f(x), y) + beta KL(f(x_adv) || f(x))``), from one gradient step at the current
       weights ``w``, layer-wise relative: ``v_l = gamma * ||w_l|| * g_l / ||g_l||`` with ``g_l`` the gradient
       of the base loss w.r.t. the weight tensor ``w_l``, for every weight tensor of two or more dimensions
       (convolution and linear kernels, ...). Biases and normalization layers (one-dimensional) are not
       perturbed, as in the paper's code, which rescales one SGD step of a copy of the network on the negated
       loss in the same way. This pass runs in the network's own mode (train mode under the trainer, as the
       paper's proxy) on copies of its buffers: the running statistics of normalization layers are not updated
       by it;
    3. the training loss: the base loss with the weights ``w + v``.

    The weights are **never modified in place**: steps 2 and 3 call the network through
    ``torch.func.functional_call`` with the tensors ``w`` (detached) and ``w + v`` (``v`` constant) in place of
    its parameters. The gradient of the returned loss w.r.t. ``w`` is thus the gradient at ``w + v``, which the
    optimizer applies to ``w``: exactly the paper's "perturb, step, restore" update, with no restore to forget,
    and the ordinary ``loss.backward()`` / ``optimizer.step()`` (or :class:`~monai_adv.engines.RobustTrainer`)
    does the update. The returned logits (``"adversarial"``, and TRADES' ``"clean"``) are those at ``w + v``.

    Cost per batch: the base defense's attack (``steps`` forward and backward passes), one forward and backward
    pass for ``v`` and the training pass (TRADES: two network calls for each).

    ``base="pgd_at"`` serves classification (CE), multi-label (BCE) and segmentation (CE or Dice, 2D and 3D);
    ``base="trades"`` classification only. The network must be an ``nn.Module`` (or a module holding it, such as
    the trainer's inferer wrapper). DistributedDataParallel and DataParallel are refused with an error: the
    functional call would have to run on the wrapped module, outside the wrapper that synchronizes the
    gradients across ranks, and the ranks would silently drift apart. Train with AWP on one device.

    Args:
        base: the adversarial training the weight perturbation is added to: "pgd_at" (default) or "trades".
        gamma: the relative size of the weight perturbation per layer, ``||v_l|| / ||w_l||`` (>= 0); default
            5e-3, the paper's. 0 is the base defense. It applies from the first batch: the paper code's option
            of a warm-up of natural or base training first is left to the training loop (e.g. a run of the base
            defense, then one of AWP from its weights).
        beta: TRADES' weight of the KL term (default 6.0); only with ``base="trades"``.
        kwargs: ``eps``, ``steps``, ``alpha``, ``norm``, ``value_range``, ``task``, ``loss`` of
            :class:`~monai_adv.defenses.Defense` (the base defense's attack).
    """

    name = "awp"
    tasks = TASKS

    def __init__(self, base: str = "pgd_at", gamma: float = 5e-3, beta: Optional[float] = None, **kwargs: Any):
        self.base = check_choice(base, "base", _BASES)
        if self.base == "trades":
            self.tasks = ("classification",)
        elif beta is not None:
            raise ValueError("`beta` weighs TRADES' KL term: give it with base='trades'.")
        super().__init__(**kwargs)
        self.gamma = check_eps(gamma, "gamma")
        self.beta = check_eps(6.0 if beta is None else beta, "beta")

    def __repr__(self) -> str:
        extra = f", beta={self.beta:g}" if self.base == "trades" else ""
        return (
            f"{type(self).__name__}(base={self.base!r}, gamma={self.gamma:g}, eps={self.eps:g}, steps={self.steps}, "
            f"alpha={self.alpha:g}{extra})"
        )

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        """The base defense's attack: PGD on the task loss (pgd_at), or TRADES' PGD on the KL divergence from the
        clean prediction, from ``x + 0.001 N(0, 1)``."""
        if self.base == "trades":
            return self._training_attack(PGD, network, seed, steps=self.steps, loss="kl", start_sigma=0.001)
        return self._training_attack(PGD, network, seed, steps=self.steps)

    def _module(self, network: Callable) -> nn.Module:
        if not isinstance(network, nn.Module):
            raise TypeError(f"AWP perturbs the weights of an nn.Module, got {type(network).__name__}.")
        if any(isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)) for m in network.modules()):
            raise ValueError(
                "AWP does not support DistributedDataParallel or DataParallel: its loss calls the network with "
                "perturbed weights through torch.func.functional_call, which would bypass the wrapper's gradient "
                "synchronization. Train with AWP on one device."
            )
        return network

    def _base_loss(
        self, call: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, x_adv: torch.Tensor, targets
    ) -> Tuple[torch.Tensor, Outputs]:
        """The base defense's loss with the network called as ``call``."""
        if self.base == "pgd_at":
            logits_adv = call(x_adv)
            return self._criterion(logits_adv, targets), {"clean": None, "adversarial": logits_adv}
        logits = call(inputs)
        labels = self._check_classification(logits, targets)
        logits_adv = call(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, labels) + self.beta * kl, {"clean": logits, "adversarial": logits_adv}

    @staticmethod
    def perturbed_names(network: nn.Module) -> Tuple[str, ...]:
        """The parameters AWP perturbs: the trainable weight tensors of two or more dimensions."""
        return tuple(
            name
            for name, p in network.named_parameters()
            if p.requires_grad and p.ndim > 1 and "weight" in name.rsplit(".", 1)[-1]
        )

    def weight_perturbation(
        self, network: nn.Module, inputs: torch.Tensor, x_adv: torch.Tensor, targets: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """The weight perturbation ``{name: v_l}`` of the batch, constant tensors: ``v_l = gamma * ||w_l|| * g_l /
        ||g_l||`` for the parameters of :meth:`perturbed_names`, ``g_l`` the gradient of the base loss at the
        current weights (a parameter without gradient gets none). The parameters and buffers are left untouched.

        Args:
            network: the network (an ``nn.Module``), in the mode the loss is computed in.
            inputs: the clean batch (N, C, *spatial).
            x_adv: its adversarial example (:meth:`inner_attack`).
            targets: the labels of the batch.
        """
        module = self._module(network)
        names = self.perturbed_names(module)
        if self.gamma == 0 or not names:
            return {}
        state = {name: p.detach() for name, p in module.named_parameters()}
        leaves = {name: state[name].requires_grad_(True) for name in names}
        state.update({name: b.clone() for name, b in module.named_buffers()})  # running statistics left alone
        with torch.enable_grad():
            loss, _ = self._base_loss(lambda x: functional_call(module, state, (x,)), inputs, x_adv, targets)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        perturbation = {}
        with torch.no_grad():
            for (name, w), g in zip(leaves.items(), grads):
                if g is not None:
                    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                    perturbation[name] = (self.gamma * w.norm() / (g.norm() + _EPS)) * g
        return perturbation

    def objective(self, network, inputs, targets):
        module = self._module(network)
        x_adv = self._adversarial(module, inputs, targets).detach()
        perturbation = self.weight_perturbation(module, inputs, x_adv, targets)
        weights = {name: p + perturbation[name] if name in perturbation else p for name, p in module.named_parameters()}
        return self._base_loss(lambda x: functional_call(module, weights, (x,)), inputs, x_adv, targets)
