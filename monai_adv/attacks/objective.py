# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Tasks, labels and the per-sample objective (loss to ascend, success criterion) of an attack."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch

from monai_adv.attacks import losses as L
from monai_adv.attacks.tasks import (  # noqa: F401  (re-exported while callers move to attacks.tasks)
    TASK_CHOICES as TASKS,
    hard_dice,
    infer_task,
    looks_like_probabilities,
    predict,
    prepare_labels,
)

__all__ = ["TASK_LOSSES", "Objective"]

TASK_LOSSES = {
    "classification": ("ce", "cw", "dlr"),
    "multilabel": ("ce", "cw"),
    "segmentation": ("ce", "cw", "dice"),
}
LOSS_ALIASES = {"cross_entropy": "ce", "bce": "ce", "margin": "cw", "cw_margin": "cw", "dice_loss": "dice"}


def choose_targets(
    mode: str, task: str, labels: torch.Tensor, clean_logits: torch.Tensor, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Target classes per sample for ``targeted="least_likely"`` or ``"random"`` (classification only)."""
    if task != "classification":
        raise ValueError(
            f'`targeted`="{mode}" is defined for classification only; for {task} pass explicit targets with `target=`.'
        )
    k = clean_logits.shape[1]
    if k <= 2:
        return 1 - labels
    if mode == "least_likely":
        return clean_logits.argmin(dim=1)
    offsets = [int(torch.randint(1, k, (1,), generator=g, device=g.device)) for g in generators]
    return (labels + torch.tensor(offsets, device=labels.device)) % k


class Objective:
    """Per-sample loss and success criterion of an attack on one batch.

    Args:
        task: "classification", "multilabel" or "segmentation".
        loss: "ce", "cw", "dlr" or "dice" (see ``TASK_LOSSES`` for what each task accepts).
        labels: true labels in the form of :func:`prepare_labels`.
        targets: target labels in the same form for a targeted attack, else None.
        clean_logits: the model's logits on the clean batch.
        kappa: confidence cap of the "cw" loss.
        seg_success_ratio: segmentation only. Untargeted, a sample is fooled when the Dice of its prediction
            falls below ``seg_success_ratio`` times its clean Dice; targeted, when ``1 - Dice(pred, target)``
            falls below ``seg_success_ratio`` times its clean value. Reaching Dice 0 (untargeted) or the
            target exactly always counts.
    """

    def __init__(
        self,
        task: str,
        loss: str,
        labels: torch.Tensor,
        targets: Optional[torch.Tensor],
        clean_logits: torch.Tensor,
        kappa: float = 0.0,
        seg_success_ratio: float = 0.5,
    ) -> None:
        self.task, self.loss_name = task, loss
        self.labels, self.targets = labels, targets
        self.targeted = targets is not None
        self.loss_targets: Optional[torch.Tensor] = None
        self.kappa, self.ratio = kappa, seg_success_ratio
        self.num_classes = clean_logits.shape[1]
        self._check_loss()
        self.clean_reference = None
        if task == "segmentation":
            self.clean_reference = self._seg_quality(predict(task, clean_logits), slice(None))

    def _check_loss(self) -> None:
        if self.loss_name not in TASK_LOSSES[self.task]:
            choices = TASK_LOSSES[self.task]
            raise ValueError(f"`loss`={self.loss_name!r} does not apply to {self.task}; use one of {choices}.")
        if self.loss_name == "dlr":
            needed = 4 if (self.targeted or self.loss_targets is not None) else 3
            if self.num_classes < needed:
                kind = "targeted DLR" if needed == 4 else "DLR"
                raise ValueError(
                    f'`loss`="dlr": {kind} needs at least {needed} classes, the model outputs {self.num_classes}; '
                    'use loss="ce" or loss="cw".'
                )

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
        other._check_loss()
        return other

    def loss(self, logits: torch.Tensor, idx) -> torch.Tensor:
        """Per-sample loss to ascend for the samples ``idx`` of the batch, given their logits."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        labels = self.labels[idx]
        pull = self.loss_targets if self.loss_targets is not None else self.targets
        targeted = pull is not None
        goal = pull[idx] if targeted else labels
        if self.loss_name == "cw":
            margin = {"classification": L.cw_margin, "multilabel": L.multilabel_margin}.get(
                self.task, L.segmentation_margin
            )
            return margin(logits, goal, self.kappa, targeted=targeted)
        if self.loss_name == "dlr":
            return L.targeted_dlr(logits, labels, goal) if targeted else L.dlr(logits, labels)
        if self.loss_name == "dice":
            value = L.soft_dice_loss(logits, goal)
        else:
            ce = {"classification": L.cross_entropy, "multilabel": L.multilabel_bce}
            value = ce.get(self.task, L.segmentation_cross_entropy)(logits, goal)
        # targeted: descend the loss towards the target
        return -value if targeted else value

    def success(self, logits: torch.Tensor, idx) -> torch.Tensor:
        """Per-sample bool: whether the logits of the samples ``idx`` satisfy the attack's goal."""
        pred = predict(self.task, logits)
        if self.task == "segmentation":
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
