# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Accumulated segmentation metrics (Dice, IoU) on clean or adversarial predictions."""

from __future__ import annotations

from typing import Dict

import torch
from monai.metrics import DiceMetric, MeanIoU

__all__ = ["SegmentationMetrics"]


class SegmentationMetrics:
    """Mean Dice and mean IoU over samples and foreground classes, with MONAI's ``DiceMetric`` and ``MeanIoU``
    (``include_background=False``; a class empty in both label and prediction is left out of the mean).

    Args:
        num_classes: classes of the label maps including the background (2 for a binary, single-channel model).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = max(int(num_classes), 2)
        self._dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        self._iou = MeanIoU(include_background=False, reduction="none", ignore_empty=True)
        self._batches = 0

    def reset(self) -> None:
        self._dice.reset()
        self._iou.reset()
        self._batches = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> None:
        """Add a batch: label maps (N, *spatial) of class indices, predictions likewise (``logits`` unused)."""
        del logits
        onehot_p = self._onehot(predictions)
        onehot_y = self._onehot(labels)
        self._dice(y_pred=onehot_p, y=onehot_y)
        self._iou(y_pred=onehot_p, y=onehot_y)
        self._batches += 1

    def _onehot(self, index_map: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(index_map.detach().long().cpu(), self.num_classes)
        return onehot.movedim(-1, 1).float()

    @staticmethod
    def _mean(values: torch.Tensor) -> float:
        values = values.double().flatten()
        values = values[~torch.isnan(values)]
        return float(values.mean()) if values.numel() else float("nan")

    def compute(self) -> Dict[str, float]:
        if not self._batches:
            raise RuntimeError("No batch was added to the metrics.")
        return {"dice": self._mean(self._dice.get_buffer()), "iou": self._mean(self._iou.get_buffer())}
