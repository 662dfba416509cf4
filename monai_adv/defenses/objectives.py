# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial training objectives: ``loss, outputs = defense(network, inputs, targets)``."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from monai_adv.attacks import FGSM, PGD, Attack, model_state_guard
from monai_adv.attacks.guard import model_dtype
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.projections import clip_to_range
from monai_adv.attacks.tasks import TASK_CHOICES, TASKS, infer_task, prepare_labels
from monai_adv.attacks.validation import (
    check_choice,
    check_eps,
    check_input,
    check_int,
    check_norm,
    check_value_range,
)

__all__ = ["Defense", "NaturalTraining", "PGDAT", "FastAT", "TRADES", "MART", "HAT", "survey_step"]

Outputs = Dict[str, Optional[torch.Tensor]]
# the benchmark's training attack: eps in {1, 2, 4, 8}/255 with step {0.5, 0.5, 1, 2}/255
_SURVEY_STEPS = {1: 0.5, 2: 0.5, 4: 1.0, 8: 2.0}


def survey_step(eps: float) -> float:
    """The benchmark's PGD step: 0.5/255 for eps 1 and 2/255, 1/255 for 4/255, 2/255 for 8/255; else eps / 4."""
    for budget, step in _SURVEY_STEPS.items():
        if abs(eps * 255 - budget) < 1e-6:
            return step / 255
    return eps / 4


def _unwrap(network: Callable) -> Callable:
    """The module inside DistributedDataParallel/DataParallel: attacks must not run through the DDP wrapper."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


class Defense:
    """Base of the training objectives. Subclasses implement :meth:`objective`.

    Args:
        eps: budget of the training attack, in the units of ``value_range``.
        steps: attack steps (10 in the benchmark).
        alpha: attack step; default the benchmark's step for ``eps`` (see :func:`survey_step`).
        norm: "Linf" or "L2".
        value_range: ``(lo, hi)`` of the images, or None.
        task: "auto", "classification", "multilabel" or "segmentation".
        loss: the training (and attack) loss: "ce" (cross-entropy; BCE for multi-label) or "dice" (segmentation).

    A defense may train on each minibatch several times: :class:`~monai_adv.engines.RobustTrainer` runs the loss,
    the backward pass and the optimizer step ``replays`` times on the same batch (1 for every defense but free
    adversarial training, :class:`~monai_adv.defenses.FreeAT`) and calls :meth:`after_backward` after each
    backward pass.
    """

    name = "defense"
    tasks: Sequence[str] = TASKS
    #: optimizer steps per minibatch: RobustTrainer replays each batch this many times
    replays: int = 1

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 10,
        alpha: Optional[float] = None,
        norm: str = "Linf",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        task: str = "auto",
        loss: str = "ce",
    ) -> None:
        self.eps = check_eps(eps)
        self.steps = check_int(steps, "steps")
        self.alpha = survey_step(self.eps) if alpha is None else check_eps(alpha, "alpha")
        self.norm = check_norm(norm)
        self.value_range = check_value_range(value_range)
        if self.value_range is not None and self.eps > self.value_range[1] - self.value_range[0]:
            raise ValueError(
                f"`eps`={self.eps:g} is larger than the whole `value_range` {self.value_range}: give eps in the units "
                "of the images (e.g. 8 / 255 for images in [0, 1])."
            )
        self.task = check_choice(task, "task", TASK_CHOICES)
        self.loss = check_choice(loss, "loss", ("ce", "dice"))
        self._check_task_and_loss()
        self.seed: Optional[int] = None  # the current call's attack seed (see __call__)

    def _check_task_and_loss(self) -> None:
        """Reject at construction a ``task`` or ``loss`` this defense fixes otherwise (TRADES, MART and HAT are
        cross-entropy objectives on class logits), instead of failing or ignoring it at the first batch."""
        if self.task != "auto" and self.task not in self.tasks:
            raise ValueError(f"The {self.name} defense supports {tuple(self.tasks)}, not {self.task}.")
        if self.loss != "ce" and "segmentation" not in self.tasks:
            raise ValueError(
                f"The {self.name} defense is a cross-entropy objective for classification: `loss`={self.loss!r} "
                "is not supported (Dice training: pgd_at or fast_at)."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g})"

    def __call__(
        self, network: Callable, inputs: torch.Tensor, targets: torch.Tensor, seed: Optional[int] = None
    ) -> Tuple[torch.Tensor, Outputs]:
        """Return the training loss (differentiable w.r.t. the network's parameters) and the logits:
        ``{"clean": logits on inputs or None, "adversarial": logits on the adversarial inputs or None}``.

        Every defense checks ``inputs`` as the attacks do (a floating tensor (N, C, *spatial), finite, inside
        ``value_range``) and computes in the network's dtype (a float64 or float16 batch is cast to it).
        ``seed`` seeds the training attack's random start (None: PyTorch's global generator);
        :class:`~monai_adv.engines.RobustTrainer` passes one per iteration when it is given a ``seed``.
        """
        self.seed = seed
        return self.objective(network, self._check_inputs(network, inputs), targets)

    def _check_inputs(self, network: Callable, inputs: torch.Tensor) -> torch.Tensor:
        check_input(inputs, self.value_range)
        dtype = model_dtype(network)
        return inputs if dtype is None or inputs.dtype == dtype else inputs.to(dtype)

    def objective(self, network, inputs, targets) -> Tuple[torch.Tensor, Outputs]:
        raise NotImplementedError

    def after_backward(self) -> None:
        """Called by :class:`~monai_adv.engines.RobustTrainer` after each backward pass of the loss (before the
        optimizer step), for defenses that read the gradients of that pass (e.g. :class:`~monai_adv.defenses.FreeAT`
        updates its perturbation from the input gradient). Nothing by default."""

    # ---- helpers ----
    def _criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean training loss of logits against targets, for the task."""
        task = infer_task(self.task, logits.detach(), targets)
        if task not in self.tasks:
            raise ValueError(f"The {self.name} defense supports {tuple(self.tasks)}, not {task}.")
        labels = prepare_labels(task, targets, logits.detach(), "targets")
        return Objective(task, labels, clean_logits=logits.detach(), loss=self.loss).loss(logits, slice(None)).mean()

    def _check_classification(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        task = infer_task(self.task, logits.detach(), targets)
        if task != "classification":
            raise ValueError(f"The {self.name} defense is defined for classification, not {task}.")
        labels = prepare_labels(task, targets, logits.detach(), "targets")
        if logits.shape[1] == 1:
            raise ValueError(f"The {self.name} defense needs class logits (N, K >= 2), got a single logit.")
        return labels

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        """The attack that makes this defense's training examples on ``network`` (None: no attack).

        It is an ordinary attack of :mod:`monai_adv.attacks` (per-sample random streams from ``seed``, the exact
        budget, a ``mask`` when called with one), run on the network's eval view; a DDP or DataParallel wrapper is
        unwrapped so that no collective is started outside training.
        """
        return self._training_attack(PGD, network, seed, steps=self.steps)

    def _training_attack(self, cls: Type[Attack], network: Callable, seed: Optional[int], **overrides: Any) -> Attack:
        """``cls`` on the network with this defense's budget, step, norm, range, task and loss, as training runs it:
        from a random start, on every sample, returning the last iterate."""
        settings = {"eps": self.eps, "alpha": self.alpha, "norm": self.norm, "loss": self.loss, "task": self.task}
        settings.update(value_range=self.value_range, random_start=True, best_iterate=False, early_stop=False)
        return cls(_unwrap(network), seed=seed, **{**settings, **overrides})

    def _adversarial(self, network, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training examples of this call (the inner attack seeded with this call's seed)."""
        return self.inner_attack(network, self.seed)(inputs.detach(), targets)


class NaturalTraining(Defense):
    """Natural training (NAT): the task loss on clean inputs, no attack."""

    name = "nat"

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        return None

    def objective(self, network, inputs, targets):
        logits = network(inputs)
        return self._criterion(logits, targets), {"clean": logits, "adversarial": None}


class PGDAT(Defense):
    """PGD adversarial training (Madry et al. 2018): the task loss on PGD examples (random start, last iterate).

    For classification (CE), multi-label (BCE) and segmentation (CE or Dice, 2D and 3D).
    """

    name = "pgd_at"

    def objective(self, network, inputs, targets):
        logits = network(self._adversarial(network, inputs, targets))
        return self._criterion(logits, targets), {"clean": None, "adversarial": logits}


class FastAT(Defense):
    """Fast adversarial training (Wong et al. 2020): one FGSM step of ``alpha`` (default 1.25 eps) from a
    uniform random start, projected onto the eps-ball."""

    name = "fast_at"

    def __init__(
        self, eps: float = 8 / 255, alpha: Optional[float] = None, steps: Optional[int] = None, **kwargs
    ) -> None:
        """``steps`` is accepted so that one set of defense arguments serves every defense (the bundles'
        ``defense_kwargs``); fast-AT always takes one step, and any other value is ignored with a warning."""
        if steps is not None and check_int(steps, "steps") != 1:
            warnings.warn(f"fast_at takes one FGSM step: `steps`={steps} is ignored.", UserWarning, stacklevel=2)
        super().__init__(eps=eps, steps=1, alpha=1.25 * eps if alpha is None else alpha, **kwargs)

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        return self._training_attack(FGSM, network, seed)

    def objective(self, network, inputs, targets):
        logits = network(self._adversarial(network, inputs, targets))
        return self._criterion(logits, targets), {"clean": None, "adversarial": logits}


class TRADES(Defense):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x_adv) || f(x))``, x_adv maximizing the KL term.

    Classification only. ``beta=0`` is natural training.
    """

    name = "trades"
    tasks = ("classification",)

    def __init__(self, beta: float = 6.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = check_eps(beta, "beta")

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        """TRADES' inner maximization: sign steps on ``KL(f(x) || f(x'))`` (the "kl" loss, which reads the clean
        prediction) from ``x + 0.001 N(0, 1)``, projected onto the eps-ball and the value range."""
        return self._training_attack(PGD, network, seed, steps=self.steps, loss="kl", start_sigma=0.001)

    def _kl_term(self, logits_adv: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")

    def objective(self, network, inputs, targets):
        logits = network(inputs)
        labels = self._check_classification(logits, targets)
        natural = F.cross_entropy(logits, labels)
        if self.beta == 0:
            return natural, {"clean": logits, "adversarial": None}
        logits_adv = network(self._adversarial(network, inputs, labels))
        kl = self._kl_term(logits_adv, logits)
        return natural + self.beta * kl, {"clean": logits, "adversarial": logits_adv, "natural": natural, "kl": kl}


class MART(Defense):
    """MART (Wang et al. 2020): boosted CE on PGD examples plus ``beta`` times a KL term weighted by how
    badly each clean sample is classified (``1 - p_y(x)``). Classification only."""

    name = "mart"
    tasks = ("classification",)

    def __init__(self, beta: float = 6.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = check_eps(beta, "beta")

    def objective(self, network, inputs, targets):
        x_adv = self._adversarial(network, inputs, targets)
        logits, logits_adv = network(inputs), network(x_adv)
        labels = self._check_classification(logits, targets)
        probs_adv = F.softmax(logits_adv, dim=1)
        # the most likely wrong class on the adversarial input
        wrong = probs_adv.scatter(1, labels[:, None], -1.0).argmax(dim=1)
        boosted = F.cross_entropy(logits_adv, labels) + F.nll_loss(torch.log(1.0001 - probs_adv + 1e-12), wrong)
        probs = F.softmax(logits, dim=1)
        true_prob = probs.gather(1, labels[:, None])[:, 0]
        kl = F.kl_div(torch.log(probs_adv + 1e-12), probs, reduction="none").sum(dim=1)
        robust = (kl * (1.0000001 - true_prob)).mean()
        terms = {"boosted_ce": boosted, "weighted_kl": robust}
        return boosted + self.beta * robust, {"clean": logits, "adversarial": logits_adv, **terms}


class HAT(TRADES):
    """Helper-based adversarial training (Rade & Moosavi-Dezfooli 2022): TRADES plus ``gamma`` times the CE of
    helper examples ``x + h (x_adv - x)`` labelled by a naturally trained helper network's prediction on x_adv.

    Args:
        helper: the naturally trained (NAT) network that labels the helper examples; required.
        h: how far past the adversarial example the helper example lies.
        gamma: weight of the helper term.
        beta: weight of the TRADES term.
    """

    name = "hat"

    def __init__(
        self, helper: Optional[Callable] = None, h: float = 3.5, gamma: float = 1.0, beta: float = 3.0, **kwargs
    ) -> None:
        if helper is None or not callable(helper):
            raise ValueError("HAT needs `helper`: a naturally trained network that labels the helper examples.")
        super().__init__(beta=beta, **kwargs)
        self.helper, self.h, self.gamma = helper, check_eps(h, "h"), check_eps(gamma, "gamma")

    def objective(self, network, inputs, targets):
        logits = network(inputs)
        labels = self._check_classification(logits, targets)
        x_adv = self._adversarial(network, inputs, labels)
        x_helper = clip_to_range(inputs + self.h * (x_adv - inputs), self.value_range).detach()
        with model_state_guard(self.helper) as helper, torch.no_grad():
            helper_labels = helper(x_adv.to(model_dtype(self.helper) or x_adv.dtype)).argmax(dim=1)
        logits_adv = network(x_adv)
        natural, kl = F.cross_entropy(logits, labels), self._kl_term(logits_adv, logits)
        helper_ce = F.cross_entropy(network(x_helper), helper_labels)
        loss = natural + self.beta * kl + self.gamma * helper_ce
        return loss, {"clean": logits, "adversarial": logits_adv, "natural": natural, "kl": kl, "helper": helper_ce}
