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
from monai_adv.attacks.validation import as_index_labels

__all__ = ["TASKS", "TASK_LOSSES", "infer_task", "prepare_labels", "predict", "hard_dice", "Objective"]

TASKS = ("auto", "classification", "multilabel", "segmentation")
TASK_LOSSES = {
    "classification": ("ce", "cw", "dlr"),
    "multilabel": ("ce", "cw"),
    "segmentation": ("ce", "cw", "dice"),
}
LOSS_ALIASES = {"cross_entropy": "ce", "bce": "ce", "margin": "cw", "cw_margin": "cw", "dice_loss": "dice"}


def infer_task(task: str, logits: torch.Tensor, y: torch.Tensor) -> str:
    """Resolve ``task="auto"`` from the logits' and labels' shapes, and check an explicit task against them."""
    if logits.ndim < 2:
        raise ValueError(f"The model must return logits of shape (N, K[, *spatial]), got {tuple(logits.shape)}.")
    if task == "auto":
        if logits.ndim > 2:
            return "segmentation"
        if y.ndim == 2 and y.shape[1] == logits.shape[1] and logits.shape[1] > 1:
            return "multilabel"
        return "classification"
    if task == "segmentation" and logits.ndim == 2:
        raise ValueError(
            f'`task`="segmentation" needs logits (N, K, *spatial), the model returns {tuple(logits.shape)}.'
        )
    if task in ("classification", "multilabel") and logits.ndim != 2:
        raise ValueError(f'`task`="{task}" needs logits (N, K), the model returns {tuple(logits.shape)}.')
    return task


def prepare_labels(task: str, y: torch.Tensor, logits: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Check labels against the task and the logits, and return them in the form the losses use.

    Returns:
        classification: int64 (N,) class indices; multilabel: float (N, K) multi-hot;
        segmentation: int64 (N, *spatial) index map.
    """
    n, k = logits.shape[0], logits.shape[1]
    if y.shape[:1] != (n,):
        raise ValueError(f"`{name}` must have one entry per sample (batch size {n}), got shape {tuple(y.shape)}.")
    if task == "classification":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"`{name}` must be class indices of shape (N,) for classification, got shape {tuple(y.shape)}; "
                'pass task="multilabel" for multi-hot labels.'
            )
        y = as_index_labels(y, name)
        top = max(k, 2)
        if bool(((y < 0) | (y >= top)).any()):
            raise ValueError(f"`{name}` holds class indices outside [0, {top - 1}] (the model has {k} outputs).")
        return y
    if task == "multilabel":
        if y.shape != (n, k):
            raise ValueError(f"`{name}` must be multi-hot labels of shape (N, K) = {(n, k)}, got {tuple(y.shape)}.")
        y = y.to(logits.dtype) if (y.is_floating_point() or y.dtype == torch.bool) else y.to(torch.float32)
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"`{name}` multi-hot labels must hold only 0 and 1.")
        return y.to(logits.dtype)
    spatial = tuple(logits.shape[2:])
    if y.ndim != logits.ndim or tuple(y.shape[2:]) != spatial or y.shape[1] not in (1, k):
        raise ValueError(
            f"`{name}` must be a label map (N, 1, *spatial) or one-hot (N, K, *spatial) matching the logits "
            f"{tuple(logits.shape)}, got {tuple(y.shape)}."
        )
    if y.shape[1] == 1:
        labels = as_index_labels(y[:, 0], name)
        top = max(k, 2)
        if bool(((labels < 0) | (labels >= top)).any()):
            raise ValueError(f"`{name}` label map holds values outside [0, {top - 1}] (the model has {k} channels).")
        return labels
    if not bool(((y == 0) | (y == 1)).all()) or not bool((y.sum(dim=1) == 1).all()):
        raise ValueError(f"`{name}` one-hot label map must hold 0/1 values with exactly one 1 per voxel.")
    return y.argmax(dim=1)


def predict(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Hard prediction: class indices (classification, segmentation) or multi-hot (multilabel)."""
    if task == "multilabel":
        return (logits > 0).to(logits.dtype)
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    if logits.ndim == 2:
        return logits.argmax(dim=1)
    # per-voxel argmax over the channels as K elementwise passes: much faster on CPU than a strided
    # argmax over dim 1, with the same tie rule (the first maximal channel wins)
    pred = torch.zeros_like(logits[:, 0], dtype=torch.long)
    best = logits[:, 0]
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        pred = torch.where(better, c, pred)
        best = torch.maximum(best, logits[:, c])
    return pred


def hard_dice(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample Dice of index maps (N, *spatial), averaged over the foreground classes present.

    A class absent from both prediction and label is left out of the mean; a sample with no foreground
    in either scores 1. ``num_classes`` is the model's channel count (1 means binary foreground).
    """
    pred, labels = pred.flatten(1), labels.flatten(1)
    total = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    count = torch.zeros_like(total)
    for c in range(1, max(num_classes, 2)):
        p, g = pred == c, labels == c
        denom = (p.sum(dim=1) + g.sum(dim=1)).double()
        present = denom > 0
        total += torch.where(present, 2 * (p & g).sum(dim=1).double() / denom.clamp_min(1), 0.0)
        count += present.double()
    return torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total))


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


def looks_like_probabilities(task: str, logits: torch.Tensor) -> bool:
    """Whether the model output looks like probabilities (softmax or sigmoid) rather than logits."""
    if logits.numel() == 0 or bool(logits.min() < 0) or bool(logits.max() > 1):
        return False
    if task in ("classification", "segmentation") and logits.shape[1] > 1:
        return bool(torch.allclose(logits.sum(dim=1), torch.ones_like(logits[:, 0]), atol=1e-3))
    # sigmoid outputs: a handful of small logits can all fall in [0, 1] by chance, so ask for enough values
    return logits.numel() >= 16


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
