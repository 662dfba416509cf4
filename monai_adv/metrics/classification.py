# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Classification metrics (binary, multi-class, multi-label) on clean or adversarial predictions."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping

import numpy as np
import torch
from monai.metrics import compute_roc_auc, get_confusion_matrix

from monai_adv.metrics.rows import RowMetrics, Rows

__all__ = ["ClassificationMetrics", "class_probabilities"]


def class_probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Scores per class (N, K) from logits: softmax for multi-class, sigmoid for multi-label and single-logit
    binary outputs (which become two columns, P(0) and P(1))."""
    logits = logits.detach().float()
    if task == "multilabel":
        return torch.sigmoid(logits)
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p1, p1], dim=1)
    return torch.softmax(logits, dim=1)


class ClassificationMetrics(RowMetrics):
    """Accuracy, macro recall/precision/F1 and ROC-AUC of a set of samples.

    - accuracy: fraction of samples classified correctly; for multi-label, all labels right (exact match),
      the success criterion of the attacks.
    - recall, precision, f1: macro averages over the classes (labels) seen in the ground truth or the
      predictions; a class never predicted has precision 0 (the usual ``zero_division=0`` convention).
      The per-class counts come from MONAI's ``get_confusion_matrix``.
    - auc: ROC-AUC (MONAI's ``compute_roc_auc``): binary, macro one-vs-rest for multi-class, mean AUROC over
      labels for multi-label; classes whose ground truth holds one value only are left out; NaN when none is left.

    A batch's rows are the class scores (N, K), the one-hot (multi-hot) label and prediction (N, K).

    Args:
        task: "classification" or "multilabel".
        num_classes: classes (labels) of the task; 2 for a single-logit binary model.
    """

    def __init__(self, task: str, num_classes: int) -> None:
        super().__init__()
        if task not in ("classification", "multilabel"):
            raise ValueError(f'`task` must be "classification" or "multilabel", got {task!r}.')
        self.task = task
        self.num_classes = max(int(num_classes), 2) if task == "classification" else int(num_classes)

    def rows(self, logits: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> Rows:
        """Rows of a batch: logits (N, K), labels as class indices (N,) or multi-hot (N, K), predictions likewise."""
        scores = class_probabilities(self.task, logits).cpu()
        labels, predictions = labels.detach().cpu(), predictions.detach().cpu()
        if self.task == "classification":
            labels = torch.nn.functional.one_hot(labels.long(), self.num_classes)
            predictions = torch.nn.functional.one_hot(predictions.long(), self.num_classes)
        return {"scores": scores, "label": labels.to(torch.uint8), "pred": predictions.to(torch.uint8)}

    def compute_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        onehot_y, onehot_p = rows["label"].float(), rows["pred"].float()
        correct = (onehot_p == onehot_y).all(dim=1)
        counts = get_confusion_matrix(onehot_p, onehot_y, include_background=True).sum(dim=0).double()  # (K, 4)
        tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 3]
        seen = (tp + fp + fn) > 0
        recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), 0.0)
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), 0.0)
        f1 = torch.where(seen, 2 * tp / (2 * tp + fp + fn).clamp_min(1), 0.0)
        macro = {
            name: float(v[seen].mean()) if bool(seen.any()) else float("nan")
            for name, v in (("recall", recall), ("precision", precision), ("f1", f1))
        }
        return {"accuracy": float(correct.double().mean()), **macro, "auc": self._auc(rows["scores"], onehot_y)}

    def per_class_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """Per class (label): the recall, i.e. the share of the class's samples (positives of the label) predicted
        right, the accuracy restricted to that class; None for a class without samples."""
        onehot_y, onehot_p = rows["label"].bool(), rows["pred"].bool()
        support = onehot_y.sum(dim=0)
        hits = (onehot_y & onehot_p).sum(dim=0)
        values = [float(h) / float(n) if int(n) else None for h, n in zip(hits, support)]
        return {
            "metric": "recall",
            "classes": list(range(onehot_y.shape[1])),
            "values": values,
            "support": [int(n) for n in support],
        }

    def _auc(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        if self.task == "classification" and self.num_classes == 2:
            scores, labels = scores[:, 1:], labels[:, 1:]
        values = []
        for k in range(labels.shape[1]):
            if labels[:, k].unique().numel() < 2:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values.append(float(compute_roc_auc(scores[:, k], labels[:, k])))
        return float(np.mean(values)) if values else float("nan")
