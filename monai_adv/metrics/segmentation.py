# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Segmentation metrics (Dice, IoU) on clean or adversarial predictions."""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from monai.metrics import compute_dice, compute_iou

from monai_adv.metrics.rows import RowMetrics, Rows

__all__ = ["SegmentationMetrics"]


class SegmentationMetrics(RowMetrics):
    """Mean Dice and mean IoU over samples and foreground classes, with MONAI's ``compute_dice`` and ``compute_iou``
    (``include_background=False``; a class empty in both label and prediction is left out of the mean).

    A batch's rows are the per-sample, per-class Dice and IoU (N, K - 1).

    Args:
        num_classes: classes of the label maps including the background (2 for a binary, single-channel model).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = max(int(num_classes), 2)

    def rows(self, logits: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> Rows:
        """Rows of a batch: label maps (N, *spatial) of class indices, predictions likewise (``logits`` unused)."""
        del logits
        onehot_p, onehot_y = self._onehot(predictions), self._onehot(labels)
        dice = compute_dice(onehot_p, onehot_y, include_background=False, ignore_empty=True)
        iou = compute_iou(onehot_p, onehot_y, include_background=False, ignore_empty=True)
        return {"dice": dice.cpu(), "iou": iou.cpu()}

    def _onehot(self, index_map: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(index_map.detach().long(), self.num_classes)
        return onehot.movedim(-1, 1).float()

    @staticmethod
    def _mean(values: torch.Tensor) -> float:
        values = values.double().flatten()
        values = values[~torch.isnan(values)]
        return float(values.mean()) if values.numel() else float("nan")

    def compute_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        return {"dice": self._mean(rows["dice"]), "iou": self._mean(rows["iou"])}

    def per_class_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """Per foreground class: the mean Dice over the samples where the class is in the label or the prediction
        (None when it is in none); ``support`` counts those samples."""
        dice = rows["dice"].double()
        seen = ~torch.isnan(dice)
        values = [self._mean(dice[:, k]) if bool(seen[:, k].any()) else None for k in range(dice.shape[1])]
        return {
            "metric": "dice",
            "classes": list(range(1, dice.shape[1] + 1)),
            "values": values,
            "support": [int(n) for n in seen.sum(dim=0)],
        }
