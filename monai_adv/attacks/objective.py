# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The objective of an attack on one batch: the per-sample loss it ascends and the goal that counts as success.

A loss is a function ``loss(logits, y, **context) -> (N,)`` that grows as the attack progresses. It receives
the keywords of ``context`` it names in its signature (all of them if it takes ``**context``):

- ``target``: the labels a targeted attack pulls towards (None when untargeted);
- ``mask``: where voxel losses are averaged (N, *spatial), or None for everywhere (segmentation);
- ``clean_logits``: the model's logits on the clean inputs;
- ``kappa``: the attack's confidence cap;
- ``task``: "classification", "multilabel" or "segmentation".

The named losses ("ce", "cw", "dlr", "dice", "kl"; for segmentation also "masked_ce", "balanced_ce", "js" and
"masked_spherical", the losses of :class:`~monai_adv.attacks.SegmentationEnsemble`) are such functions, one per task;
a user's callable is used the same way. Subclass :class:`Objective` to change the success criterion as well.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from monai_adv.attacks import losses as L
from monai_adv.attacks.tasks import TASKS, hard_dice, predict

__all__ = [
    "Objective",
    "NAMED_LOSSES",
    "TASK_LOSSES",
    "LOSS_ALIASES",
    "check_loss",
    "loss_context_names",
    "reads_clean_logits",
]

LossFunction = Callable[..., torch.Tensor]
CONTEXT = ("target", "mask", "clean_logits", "kappa", "task")


def _descend_to_target(value: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    # a targeted attack descends the loss towards the target: ascend its negation
    return value if target is None else -value


def _ce_classification(logits, y, target=None):
    return _descend_to_target(L.cross_entropy(logits, y if target is None else target), target)


def _ce_multilabel(logits, y, target=None):
    return _descend_to_target(L.multilabel_bce(logits, y if target is None else target), target)


def _ce_segmentation(logits, y, target=None, mask=None):
    return _descend_to_target(L.segmentation_cross_entropy(logits, y if target is None else target, mask), target)


def _cw_classification(logits, y, target=None, kappa=0.0):
    return L.cw_margin(logits, y if target is None else target, kappa, targeted=target is not None)


def _cw_multilabel(logits, y, target=None, kappa=0.0):
    return L.multilabel_margin(logits, y if target is None else target, kappa, targeted=target is not None)


def _cw_segmentation(logits, y, target=None, kappa=0.0, mask=None):
    return L.segmentation_margin(logits, y if target is None else target, kappa, target is not None, mask)


def _dlr(logits, y, target=None):
    return L.dlr(logits, y) if target is None else L.targeted_dlr(logits, y, target)


def _dice(logits, y, target=None, mask=None, include_background: bool = False, smooth: float = 1e-5):
    goal = y if target is None else target
    return _descend_to_target(L.soft_dice_loss(logits, goal, mask, include_background, smooth), target)


def _kl(logits, y, clean_logits):
    return L.kl_divergence(logits, clean_logits)


def _masked_ce(logits, y, target=None, mask=None):
    goal = y if target is None else target
    return _descend_to_target(L.masked_cross_entropy(logits, goal, mask, targeted=target is not None), target)


def _balanced_ce(logits, y, target=None, mask=None, masked: bool = True):
    goal = y if target is None else target
    value = L.balanced_cross_entropy(logits, goal, mask, masked=masked, targeted=target is not None)
    return _descend_to_target(value, target)


def _js(logits, y, target=None, mask=None):
    return _descend_to_target(L.jensen_shannon(logits, y if target is None else target, mask), target)


def _masked_spherical(logits, y, target=None, mask=None, floor: float = 1.0):
    goal = y if target is None else target
    value = L.masked_spherical(logits, goal, mask, floor=floor, targeted=target is not None)
    return _descend_to_target(value, target)


#: the named losses: name -> {task: loss function}
NAMED_LOSSES: Dict[str, Dict[str, LossFunction]] = {
    "ce": {"classification": _ce_classification, "multilabel": _ce_multilabel, "segmentation": _ce_segmentation},
    "cw": {"classification": _cw_classification, "multilabel": _cw_multilabel, "segmentation": _cw_segmentation},
    "dlr": {"classification": _dlr},
    "dice": {"segmentation": _dice},
    "kl": {"classification": _kl},
    # the segmentation attack ensemble's losses (monai_adv.attacks.SegmentationEnsemble)
    "masked_ce": {"segmentation": _masked_ce},
    "balanced_ce": {"segmentation": _balanced_ce},
    "js": {"segmentation": _js},
    "masked_spherical": {"segmentation": _masked_spherical},
}
TASK_LOSSES = {task: tuple(name for name, per_task in NAMED_LOSSES.items() if task in per_task) for task in TASKS}
LOSS_ALIASES = {"cross_entropy": "ce", "bce": "ce", "margin": "cw", "cw_margin": "cw", "dice_loss": "dice"}


def _parameters(function: Callable) -> Optional[Tuple[Tuple[str, ...], bool]]:
    """(keyword names, takes **kwargs) of ``function``, or None when its signature cannot be read."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    names = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def loss_context_names(function: Callable) -> Tuple[str, ...]:
    """The context keywords a loss function takes (all of them when it takes ``**context``)."""
    params = _parameters(function)
    if params is None or params[1]:
        return CONTEXT
    return tuple(name for name in CONTEXT if name in params[0])


def check_loss(
    loss: Union[str, LossFunction], loss_kwargs: Optional[Mapping[str, Any]] = None
) -> Tuple[Union[str, LossFunction], Dict[str, Any]]:
    """Check ``loss`` (a name or a callable ``(logits, y, **context)``) and its options; return them normalized.

    Raises:
        ValueError: for an unknown name, or options the loss does not take.
        TypeError: for a loss that is neither a name nor a callable taking ``(logits, y)``.
    """
    if isinstance(loss, str):
        key = LOSS_ALIASES.get(loss.lower(), loss.lower())
        if key not in NAMED_LOSSES:
            raise ValueError(
                f"`loss` must be one of {sorted(NAMED_LOSSES)} or a callable (logits, y, **context), got {loss!r}."
            )
        functions = list(NAMED_LOSSES[key].values())
    elif callable(loss):
        params = _parameters(loss)
        if params is not None and len([n for n in params[0] if n not in CONTEXT]) < 2 and not params[1]:
            raise TypeError("A callable `loss` must take the logits and the labels: `loss(logits, y, **context)`.")
        key, functions = loss, [loss]
    else:
        raise TypeError(f"`loss` must be a loss name or a callable (logits, y, **context), got {type(loss).__name__}.")
    options = dict(loss_kwargs or {})
    if not isinstance(loss_kwargs, (Mapping, type(None))):
        raise TypeError(f"`loss_kwargs` must be a dict of the loss's options, got {type(loss_kwargs).__name__}.")
    taken = set()
    for function in functions:
        params = _parameters(function)
        if params is None or params[1]:
            taken = None
            break
        taken |= set(params[0][2:]) - set(CONTEXT)
    if taken is not None and set(options) - taken:
        raise ValueError(
            f"`loss_kwargs` {sorted(set(options) - taken)} are not options of the loss {key!r}; "
            f"it takes {sorted(taken) or 'none'}."
        )
    return key, options


def reads_clean_logits(loss: Union[str, LossFunction]) -> bool:
    """Whether a loss (a name or a callable) reads the clean logits, for any task."""
    if isinstance(loss, str):
        functions = NAMED_LOSSES[LOSS_ALIASES.get(loss, loss)].values()
    else:
        functions = [loss]
    return any("clean_logits" in loss_context_names(f) for f in functions)


class Objective:
    """Per-sample loss and success criterion of an attack on one batch. Subclass it to change either, and pass
    the subclass as the attack's ``objective=``; the attack builds one per batch with these arguments.

    The attack ascends :meth:`loss` (a targeted named loss is negated: the attack descends it towards the target)
    and keeps, per sample, the best point: one that meets :meth:`success`, else the one with the highest loss.

    Args:
        task: "classification", "multilabel" or "segmentation".
        labels: true labels in the form of :func:`~monai_adv.attacks.tasks.prepare_labels`.
        targets: target labels in the same form for a targeted attack, else None.
        clean_logits: the model's logits on the clean batch; None when the attack skipped the clean pass (then
            neither a loss that reads them nor the segmentation goal is available).
        loss: a name of :data:`NAMED_LOSSES` or a callable ``(logits, y, **context) -> (N,)`` (see the module).
        kappa: confidence cap of the "cw" loss (and ``kappa`` of the context).
        seg_success_ratio: segmentation only. Untargeted, a sample is fooled when the Dice of its prediction
            falls below ``seg_success_ratio`` times its clean Dice; targeted, when ``1 - Dice(pred, target)``
            falls below ``seg_success_ratio`` times its clean value. Reaching Dice 0 (untargeted) or the
            target exactly always counts.
        loss_mask: segmentation only: per-sample voxels (N, *spatial) over which voxel losses are averaged;
            None for all voxels. The success criterion still reads the whole map.
        loss_kwargs: options of the loss, e.g. ``{"include_background": True, "smooth": 0.0}`` for "dice".
        num_classes: the model's outputs; default ``clean_logits.shape[1]``.
    """

    def __init__(
        self,
        task: str,
        labels: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        clean_logits: Optional[torch.Tensor] = None,
        loss: Union[str, LossFunction] = "ce",
        kappa: float = 0.0,
        seg_success_ratio: float = 0.5,
        loss_mask: Optional[torch.Tensor] = None,
        loss_kwargs: Optional[Mapping[str, Any]] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        if clean_logits is None and num_classes is None:
            raise ValueError("`num_classes` is required when `clean_logits` is None.")
        self.task, self.labels, self.targets = task, labels, targets
        self.targeted = targets is not None
        self.loss_targets: Optional[torch.Tensor] = None
        self.clean_logits = clean_logits
        self.kappa, self.ratio = kappa, seg_success_ratio
        self.num_classes = int(clean_logits.shape[1] if num_classes is None else num_classes)
        if loss_mask is not None and task != "segmentation":
            raise ValueError(f"A loss mask restricts voxel losses of segmentation; the task is {task}.")
        self.loss_mask = loss_mask
        self.loss_name, self.loss_kwargs = check_loss(loss, loss_kwargs)
        self._function = self._loss_function()
        self._context = loss_context_names(self._function)
        self.clean_reference = None
        if task == "segmentation" and clean_logits is not None:
            self.clean_reference = self._seg_quality(predict(task, clean_logits), slice(None))

    @property
    def reads_clean_logits(self) -> bool:
        """Whether the loss reads the clean logits (the attack must then run the clean pass)."""
        return "clean_logits" in self._context

    def _loss_function(self) -> LossFunction:
        if not isinstance(self.loss_name, str):
            return self.loss_name
        per_task = NAMED_LOSSES[self.loss_name]
        if self.task not in per_task:
            choices = tuple(n for n, f in NAMED_LOSSES.items() if self.task in f)
            raise ValueError(f"`loss`={self.loss_name!r} does not apply to {self.task}; use one of {choices}.")
        if self.loss_name == "dlr":
            needed = 4 if (self.targeted or self.loss_targets is not None) else 3
            if max(self.num_classes, 2) < needed:
                kind = "targeted DLR" if needed == 4 else "DLR"
                raise ValueError(
                    f'`loss`="dlr": {kind} needs at least {needed} classes, the model outputs {self.num_classes}; '
                    'use loss="ce" or loss="cw".'
                )
        return per_task[self.task]

    def _seg_quality(self, pred: torch.Tensor, idx) -> torch.Tensor:
        if self.targeted:
            return 1.0 - hard_dice(pred, self.targets[idx], self.num_classes)
        return hard_dice(pred, self.labels[idx], self.num_classes)

    def with_loss_targets(self, loss_targets: torch.Tensor, loss: Optional[str] = None) -> Objective:
        """A copy whose loss pulls towards ``loss_targets`` while success stays this objective's goal.

        This is APGD-T's objective (Croce & Hein 2020): a targeted loss, an untargeted success criterion.
        """
        other = copy.copy(self)
        other.loss_targets = loss_targets
        if loss is not None:
            other.loss_name = loss
        other._function = other._loss_function()
        other._context = loss_context_names(other._function)
        return other

    def loss(self, logits: torch.Tensor, idx) -> torch.Tensor:
        """Per-sample loss to ascend for the samples ``idx`` of the batch, given their logits."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        context = {name: self._context_value(name, idx) for name in self._context}  # only what the loss reads
        value = self._function(logits, self.labels[idx], **context, **self.loss_kwargs)
        if not isinstance(value, torch.Tensor) or value.shape != (logits.shape[0],):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`loss` must return one value per sample, shape ({logits.shape[0]},), got {shape}.")
        return value

    def _context_value(self, name: str, idx) -> Any:
        """The context keyword ``name`` for the samples ``idx`` (see the module's docstring)."""
        if name == "target":
            pull = self.loss_targets if self.loss_targets is not None else self.targets
            return None if pull is None else pull[idx]
        if name == "mask":
            return None if self.loss_mask is None else self.loss_mask[idx]
        if name == "clean_logits":
            if self.clean_logits is None:
                raise RuntimeError("The loss reads the clean logits, but the attack skipped the clean pass.")
            return self.clean_logits[idx]
        return self.kappa if name == "kappa" else self.task

    def success(self, logits: torch.Tensor, idx) -> torch.Tensor:
        """Per-sample bool: whether the logits of the samples ``idx`` satisfy the attack's goal."""
        pred = predict(self.task, logits)
        if self.task == "segmentation":
            if self.clean_reference is None:
                raise RuntimeError("The segmentation goal is relative to the clean Dice: run the clean pass.")
            quality = self._seg_quality(pred, idx)
            # untargeted: quality is the Dice with the labels; targeted: the distance 1 - Dice to the target
            return (quality < self.ratio * self.clean_reference[idx]) | (quality == 0)
        if self.task == "multilabel":
            if self.targeted:
                return (pred == self.targets[idx]).all(dim=1)
            return (pred != self.labels[idx]).any(dim=1)
        if self.targeted:
            return pred == self.targets[idx]
        return pred != self.labels[idx]
