# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Tasks and their labels: task names, resolving ``task="auto"``, preparing labels, the prediction rule.

One place for what every layer reads the same way: the attacks, the trainer, the metrics and the command line.
"""

from __future__ import annotations

from typing import Sequence

import torch

from monai_adv.attacks.validation import as_index_labels
from monai_adv.task_names import TASK_CHOICES, TASKS

__all__ = [
    "TASKS",
    "TASK_CHOICES",
    "as_two_logits",
    "choose_targets",
    "hard_dice",
    "infer_task",
    "looks_like_probabilities",
    "predict",
    "prepare_labels",
    "rank_other_classes",
]


def as_two_logits(logits: torch.Tensor) -> torch.Tensor:
    """A single binary logit z (N, 1, ...) as the equivalent two-class logits [0, z]; other logits as they are."""
    if logits.shape[1] != 1:
        return logits
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


def rank_other_classes(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample (N, K), the classes other than ``labels`` ordered by their logit, most likely first.

    A single binary logit is read as the two logits [0, z]. The label's own class comes last.
    """
    logits = as_two_logits(logits.detach().float())
    return logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)


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


def looks_like_probabilities(task: str, logits: torch.Tensor) -> bool:
    """Whether the model output looks like probabilities (softmax or sigmoid) rather than logits."""
    if logits.numel() == 0 or bool(logits.min() < 0) or bool(logits.max() > 1):
        return False
    if task in ("classification", "segmentation") and logits.shape[1] > 1:
        return bool(torch.allclose(logits.sum(dim=1), torch.ones_like(logits[:, 0]), atol=1e-3))
    # sigmoid outputs: a handful of small logits can all fall in [0, 1] by chance, so ask for enough values
    return logits.numel() >= 16


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
