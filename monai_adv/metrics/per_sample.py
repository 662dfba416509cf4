# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-sample outcomes of a prediction, the per-sample worst case across attacks, and perturbation norms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from monai_adv.attacks.tasks import hard_dice, predict

__all__ = ["SampleOutcome", "sample_outcome", "worst_case_index", "perturbation_norms"]


@dataclass
class SampleOutcome:
    """What a model's output says about each sample of a batch.

    Attributes:
        predictions: class indices (N,), multi-hot (N, K) or label maps (N, *spatial).
        correct: per-sample bool: right class; all labels right (multi-label); for segmentation always False
            (segmentation has no per-sample "correct"; use ``quality``).
        quality: per-sample float64, higher is better: the logit margin of the true class over the best other
            (classification), the smallest signed margin over the labels (multi-label), or the Dice with the
            label map averaged over the foreground classes (segmentation).
    """

    predictions: torch.Tensor
    correct: torch.Tensor
    quality: torch.Tensor


def sample_outcome(task: str, logits: torch.Tensor, labels: torch.Tensor) -> SampleOutcome:
    """Per-sample outcome of ``logits`` for labels prepared as the attacks prepare them (see
    :func:`monai_adv.attacks.tasks.prepare_labels`)."""
    logits = logits.detach().as_subclass(torch.Tensor)
    pred = predict(task, logits)
    if task == "segmentation":
        quality = hard_dice(pred, labels, logits.shape[1])
        return SampleOutcome(pred, torch.zeros_like(quality, dtype=torch.bool), quality)
    z = logits.double()
    if task == "multilabel":
        signs = 2 * labels.double() - 1
        return SampleOutcome(pred, (pred == labels).all(dim=1), (signs * z).min(dim=1).values)
    if z.shape[1] == 1:
        margin = (2 * labels.double() - 1) * z[:, 0]
    else:
        true = z.gather(1, labels.long()[:, None])[:, 0]
        others = z.scatter(1, labels.long()[:, None], float("-inf"))
        margin = true - others.max(dim=1).values
    return SampleOutcome(pred, pred == labels, margin)


def worst_case_index(outcomes: Sequence[SampleOutcome]) -> torch.Tensor:
    """Per sample, the index of the worst outcome: a wrong prediction beats a right one, then the lowest quality
    wins (the first on ties)."""
    if not outcomes:
        raise ValueError("`outcomes` must hold at least one outcome.")
    correct = torch.stack([o.correct for o in outcomes])  # (A, N)
    quality = torch.stack([o.quality for o in outcomes])
    wrong = ~correct
    worst_wrong = torch.where(wrong, quality, torch.full_like(quality, float("inf"))).argmin(dim=0)
    return torch.where(wrong.any(dim=0), worst_wrong, quality.argmin(dim=0))


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per-sample L-inf and L2 norms of ``x_adv - x``: a float64 tensor (N, 2)."""
    delta = x_adv.detach().as_subclass(torch.Tensor).double() - x.detach().as_subclass(torch.Tensor).double()
    delta = delta.flatten(1)
    return torch.stack([delta.abs().amax(dim=1), delta.norm(dim=1)], dim=1)
