# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The attack base class: what every attack shares (checks, model guard, budget, mask, bookkeeping, seeding)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import torch

from monai_adv.attacks.guard import active_model, model_dtype, model_state_guard
from monai_adv.attacks.objective import (
    LOSS_ALIASES,
    TASK_LOSSES,
    TASKS,
    Objective,
    choose_targets,
    infer_task,
    looks_like_probabilities,
    prepare_labels,
)
from monai_adv.attacks.projections import enforce_budget
from monai_adv.attacks.seeding import resolve_seed, sample_generators, sample_keys
from monai_adv.attacks.validation import (
    as_tensor_labels,
    check_choice,
    check_eps,
    check_input,
    check_logits,
    check_mask,
    check_norm,
    check_positive,
    check_value_range,
)

__all__ = ["Attack", "AttackResult", "AttackState", "BestIterate"]

TARGET_STREAM = 2**32  # random stream of the random targets, apart from the restart streams 0, 1, ...
ALL_LOSSES = tuple(sorted({loss for losses in TASK_LOSSES.values() for loss in losses}))


@dataclass
class AttackResult:
    """What an attack returns from :meth:`Attack.perturb`.

    Attributes:
        x_adv: the adversarial batch, same shape, dtype, device and type as the input (a MetaTensor stays one).
        success: per-sample bool, whether ``x_adv`` meets the attack's goal (misclassified, Dice dropped,
            target reached); None when the attack did not evaluate its final iterate (``best_iterate=False``).
        loss: per-sample attack loss at ``x_adv`` (None when not evaluated).
        clean_success: per-sample bool, whether the clean input already met the goal (e.g. misclassified).
        task: the task the attack ran as ("classification", "multilabel" or "segmentation").
        queries: per-sample number of model evaluations, for query-based attacks (None for gradient attacks).
    """

    x_adv: torch.Tensor
    success: Optional[torch.Tensor]
    loss: Optional[torch.Tensor]
    clean_success: torch.Tensor
    task: str
    queries: Optional[torch.Tensor] = None


@dataclass
class AttackState:
    """The prepared batch an attack works on (plain tensors, on the input's device)."""

    x: torch.Tensor
    mask: Optional[torch.Tensor]
    objective: Objective
    keys: List[bytes]
    seed: int
    clean_logits: torch.Tensor
    clean_loss: torch.Tensor
    clean_success: torch.Tensor
    x_with_grad: Optional[torch.Tensor] = None  # the input leaf of clean_logits' graph, when kept
    clean_pass_skipped: bool = False  # the clean fields describe the first point, x_with_grad (no clean pass)


class BestIterate:
    """Per-sample best point so far: one that meets the goal beats one that does not, then the higher loss wins.

    Starts from the clean input, which counts only if it already meets the goal (its loss is -inf).
    """

    def __init__(self, x: torch.Tensor, clean_success: torch.Tensor) -> None:
        self.x = x.clone()
        self.success = clean_success.clone()
        self.loss = torch.full((x.shape[0],), float("-inf"), dtype=torch.float64, device=x.device)

    def update(self, idx: torch.Tensor, x_new: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        """Offer new points for the samples ``idx`` of the batch; return which of them were taken."""
        old_success = self.success[idx]
        better = (success & ~old_success) | ((success == old_success) & (loss > self.loss[idx]))
        if bool(better.any()):
            rows = idx[better]
            self.x[rows] = x_new[better].to(self.x.dtype)
            self.loss[rows] = loss[better].to(self.loss.dtype)
            self.success[rows] = success[better]
        return better

    def overwrite(self, idx: torch.Tensor, x_new: torch.Tensor) -> None:
        """Take the points as they are (last-iterate mode)."""
        self.x[idx] = x_new.to(self.x.dtype)


class Attack:
    """Base class of all attacks: ``x_adv = attack(x, y)``.

    Subclasses implement :meth:`_perturb`. The base class checks arguments, guards the model's state,
    runs the clean forward pass, resolves the task, labels and targets, seeds per-sample random streams,
    enforces the eps-ball, value range and mask exactly, and returns a tensor of the input's type.

    Args:
        model: a callable returning logits: an ``nn.Module`` (guarded: run in eval mode, left exactly as found),
            or any differentiable function such as a closure over a MONAI inferer. Wrap a network and an inferer
            in :class:`monai_adv.attacks.InfererModel` to have the network guarded too.
        eps: perturbation budget (>= 0) in the norm ``norm``, in the units of ``value_range``.
        norm: "Linf" or "L2".
        loss: the loss the attack ascends: "ce" (cross-entropy; BCE for multi-label and single-logit outputs),
            "cw" (Carlini-Wagner margin capped at ``kappa``), "dlr" (classification, >= 3 classes; targeted
            needs >= 4), "dice" (segmentation soft Dice loss).
        value_range: ``(lo, hi)`` the images live in (default (0, 1)), or None for unbounded intensities
            (z-scored MRI, CT in HU).
        targeted: False; True (pass ``target=`` when calling); "least_likely" or "random" (a target chosen
            per sample among the other classes, classification only).
        task: "auto" (from the shapes of logits and labels), "classification", "multilabel" or "segmentation".
        kappa: confidence cap of the "cw" loss.
        seg_success_ratio: segmentation goal: the Dice of the prediction falls below this fraction of the
            clean Dice (targeted: the distance 1 - Dice to the target falls below this fraction of its clean value).
        early_stop: stop attacking a sample once it meets the goal, and skip samples that already fail clean.
        seed: seed of the per-sample random streams (random starts, random targets); None draws one from
            PyTorch's global generator at each call.
    """

    #: name used by :func:`monai_adv.attacks.make_attack`
    name = "attack"

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        norm: str = "Linf",
        loss: str = "ce",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        targeted: Union[bool, str] = False,
        task: str = "auto",
        kappa: float = 0.0,
        seg_success_ratio: float = 0.5,
        early_stop: bool = True,
        seed: Optional[int] = 0,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning logits, got {type(model).__name__}.")
        self.model = model
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        loss_name = loss.lower() if isinstance(loss, str) else loss
        self.loss = check_choice(LOSS_ALIASES.get(loss_name, loss_name), "loss", ALL_LOSSES)
        self.value_range = check_value_range(value_range)
        if isinstance(targeted, str):
            targeted = check_choice(targeted, "targeted", ("least_likely", "random"))
        elif not isinstance(targeted, bool):
            raise TypeError(f'`targeted` must be False, True, "least_likely" or "random", got {targeted!r}.')
        self.targeted = targeted
        self.task = check_choice(task, "task", TASKS)
        self.kappa = check_eps(kappa, "kappa")
        self.seg_success_ratio = check_positive(seg_success_ratio, "seg_success_ratio")
        if self.seg_success_ratio > 1:
            raise ValueError(f"`seg_success_ratio` must be in (0, 1], got {seg_success_ratio}.")
        self.early_stop = bool(early_stop)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}.")
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, loss={self.loss!r})"

    def __call__(self, x: torch.Tensor, y: Any, mask: Optional[Any] = None, target: Optional[Any] = None):
        """Return the adversarial batch for ``x`` (N, C, *spatial) with labels ``y``; see :meth:`perturb`.

        The same ``x_adv`` as ``perturb(...).x_adv``. Asked for ``x_adv`` alone, an attack whose run never reads
        the clean prediction (e.g. PGD as adversarial training uses it: random start, no early exit, last
        iterate) skips the clean forward pass, which only :meth:`perturb`'s per-sample outcomes need.
        """
        return self._attack(x, y, mask, target, need_clean=False).x_adv

    def perturb(
        self, x: torch.Tensor, y: Any, mask: Optional[Any] = None, target: Optional[Any] = None
    ) -> AttackResult:
        """Attack a batch and return the adversarial batch with per-sample outcomes.

        Args:
            x: images (N, C, *spatial) with 1-3 spatial dims, floating point, inside ``value_range``.
            y: labels: class indices (N,); multi-hot (N, K); a label map (N, 1, *spatial) or one-hot
                (N, K, *spatial) for segmentation.
            mask: optional region of interest broadcastable to ``x``; only voxels where it is non-zero change.
            target: target labels in the form of ``y``, required when ``targeted=True``.
        """
        return self._attack(x, y, mask, target, need_clean=True)

    def _attack(self, x: torch.Tensor, y: Any, mask: Optional[Any], target: Optional[Any], need_clean: bool):
        x = check_input(x, self.value_range)
        if self.targeted is True and target is None:
            raise ValueError("`target` is required when the attack is built with targeted=True.")
        if target is not None and self.targeted is not True:
            raise ValueError("`target` was given but the attack is untargeted; build it with targeted=True.")
        n = x.shape[0]
        if n == 0:
            empty = torch.zeros(0, dtype=torch.bool, device=x.device)
            return AttackResult(x.detach().clone(), empty, torch.zeros(0, device=x.device), empty, self.task)
        with torch.inference_mode(False):
            x_orig = x.detach().as_subclass(torch.Tensor)
            x_plain = x_orig.to(model_dtype(self.model) or x_orig.dtype).clone()
            mask_t = check_mask(mask, x_plain)
            y_t = as_tensor_labels(y, "y", x_plain.device)
            target_t = None if target is None else as_tensor_labels(target, "target", x_plain.device)
            with model_state_guard(self.model), torch.enable_grad():
                state = self._prepare(x_plain, y_t, target_t, mask_t, need_clean)
                x_adv, success, loss, *queries = self._perturb(state)
            # the budget holds exactly in the input's dtype, whatever dtype the network computed in
            mask_t = None if mask_t is None else mask_t.to(x_orig.dtype)
            x_adv = enforce_budget(
                x_orig, x_adv.detach().to(x_orig.dtype), self.eps, self.norm, mask_t, self.value_range
            )
        return AttackResult(_like_input(x, x_adv), success, loss, state.clean_success, state.objective.task, *queries)

    # ---- hooks for subclasses ------------------------------------------------------------------------------
    def _clean_pass_needs_grad(self) -> bool:
        """Whether the clean forward pass should keep its graph (when the first step starts at the clean input)."""
        return False

    def _first_point_without_clean_pass(
        self, x: torch.Tensor, mask: Optional[torch.Tensor], keys: List[bytes], seed: int
    ) -> Optional[torch.Tensor]:
        """The first point the attack evaluates, when its run never reads the clean prediction; else None.

        When it returns a point and only ``x_adv`` is asked for, that point's forward pass (kept with its graph
        for the first gradient) takes the clean pass's place; the state's clean fields then describe it.
        """
        return None

    def _objective_loss(self, num_classes: int) -> str:
        """The loss of the batch's objective, given the model's number of outputs (a hook for substitutions)."""
        return self.loss

    def _perturb(self, state: AttackState):
        """Return ``(x_adv, success or None, loss or None[, queries])`` for the prepared batch."""
        raise NotImplementedError

    # ---- shared machinery ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Call the model and check that it returns a logits tensor for the whole batch."""
        out = active_model(self.model)(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"`model` must return a tensor of logits, got {type(out).__name__}; wrap a model with several "
                "outputs in a function that returns the logits."
            )
        if out.ndim < 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"`model` must return logits (N, K[, *spatial]) for a batch of {x.shape[0]}, got {tuple(out.shape)}."
            )
        if not out.is_floating_point():
            raise TypeError(
                f"`model` must return floating-point logits, got {out.dtype}; integer or boolean outputs (e.g. class "
                "predictions) carry no gradient and cannot be scored as logits."
            )
        return out.as_subclass(torch.Tensor) if type(out) is not torch.Tensor else out

    def input_gradient(self, loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gradient of the summed per-sample loss with respect to the input only (never the parameters)."""
        message = (
            "The model's output is not differentiable with respect to its input: is it run under "
            "torch.no_grad() or does it detach its input? Attacks need input gradients."
        )
        if not loss.requires_grad:
            raise RuntimeError(message)
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        if grad is None:
            raise RuntimeError(message)
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def query(self, state: AttackState, x: torch.Tensor, idx: torch.Tensor):
        """One model evaluation without gradients: per-sample loss (float64) and success of ``x`` for ``idx``.

        It runs under ``torch.inference_mode`` (no autograd bookkeeping at all); its outputs only feed
        comparisons and copies, never a graph.
        """
        with torch.inference_mode():
            logits = self.forward(x)
            return state.objective.loss(logits, idx).double(), state.objective.success(logits, idx)

    def generators(self, state: AttackState, idx: torch.Tensor, stream: int) -> List[torch.Generator]:
        """Per-sample generators for the samples ``idx`` and a stream number (e.g. restart index)."""
        keys = [state.keys[i] for i in idx.tolist()]
        return sample_generators(keys, state.seed, stream, state.x.device)

    def _prepare(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        need_clean: bool = True,
    ) -> AttackState:
        keys = sample_keys(x)
        seed = resolve_seed(self.seed)
        first = None if need_clean else self._first_point_without_clean_pass(x, mask, keys, seed)
        keep_graph = first is not None or self._clean_pass_needs_grad()
        if keep_graph:  # the first step's pass: its graph gives the first gradient
            x_with_grad = (x.clone() if first is None else first.detach()).requires_grad_(True)
            clean_logits = self.forward(x_with_grad)
        else:
            x_with_grad = None
            with torch.inference_mode():
                clean_logits = self.forward(x)
            clean_logits = clean_logits.clone()  # a normal tensor: later steps may index it under autograd
        detached = clean_logits.detach()
        check_logits(detached)
        task = infer_task(self.task, detached, y)
        labels = prepare_labels(task, y, detached, "y")
        if looks_like_probabilities(task, detached):
            warnings.warn(
                "The model's outputs look like probabilities (all in [0, 1]); attacks expect logits. Remove the "
                "final softmax/sigmoid, or the attack may be weakened by vanishing gradients.",
                UserWarning,
                stacklevel=3,
            )
        targets = None
        if target is not None:
            targets = prepare_labels(task, target, detached, "target")
        elif isinstance(self.targeted, str):
            gens = sample_generators(keys, seed, TARGET_STREAM, x.device) if self.targeted == "random" else []
            targets = choose_targets(self.targeted, task, labels, detached, gens)
        loss = self._objective_loss(detached.shape[1])
        objective = Objective(task, loss, labels, targets, detached, self.kappa, self.seg_success_ratio)
        everyone = slice(None)
        with torch.no_grad():
            clean_loss = objective.loss(detached, everyone)
            clean_success = objective.success(detached, everyone)
        return AttackState(
            x=x,
            mask=mask,
            objective=objective,
            keys=keys,
            seed=seed,
            clean_logits=clean_logits,
            clean_loss=clean_loss,
            clean_success=clean_success,
            x_with_grad=x_with_grad,
            clean_pass_skipped=first is not None,
        )


def _like_input(x_in: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Return ``x_adv`` as the type of ``x_in``: a tensor subclass such as MetaTensor keeps its metadata."""
    if type(x_in) is torch.Tensor:
        return x_adv
    out = x_in.detach().clone()
    with torch.no_grad():
        out.copy_(x_adv)
    return out
