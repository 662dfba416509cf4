# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Metrics kept as per-sample rows, so that the rows of several batches, processes or runs make one result.

Every metric of an evaluation turns a batch into rows (host tensors whose first dimension is the sample) and
computes its values from the rows of all samples at once. Rows can be saved, gathered across processes and put back
in sample order, and the result does not depend on how the samples were batched, sharded or resumed.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch

__all__ = ["Rows", "RowMetrics", "concat_rows", "select_rows"]

#: per-sample host tensors of one or more samples, the sample first: ``{"pred": (N,), "scores": (N, K), ...}``
Rows = Dict[str, torch.Tensor]


def concat_rows(parts: Sequence[Mapping[str, torch.Tensor]]) -> Rows:
    """The rows of several batches as one (keys of the first batch; every batch must have the same keys)."""
    if not parts:
        return {}
    keys = list(parts[0])
    for part in parts[1:]:
        if list(part) != keys:
            raise ValueError(f"Rows with different entries cannot be joined: {keys} and {list(part)}.")
    return {key: torch.cat([part[key] for part in parts]) for key in keys}


def select_rows(rows: Mapping[str, torch.Tensor], index: torch.Tensor) -> Rows:
    """The rows at ``index`` (a long tensor of row positions), in that order."""
    return {key: value[index] for key, value in rows.items()}


class RowMetrics:
    """Base of the metrics kept as per-sample rows.

    Subclasses implement :meth:`rows` (a batch -> its rows) and :meth:`compute_rows` (the rows of all samples ->
    ``{name: value}``). :meth:`update` and :meth:`compute` accumulate batches in one process.
    """

    def __init__(self) -> None:
        self._parts: list = []

    def reset(self) -> None:
        self._parts = []

    def rows(self, logits: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> Rows:
        """The rows of a batch: logits (N, K, ...), labels and hard predictions as the task gives them."""
        raise NotImplementedError(f"Subclasses of {self.__class__.__name__} must implement rows().")

    def compute_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """The metric values of the samples whose rows are given."""
        raise NotImplementedError(f"Subclasses of {self.__class__.__name__} must implement compute_rows().")

    def per_class_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """Per class: ``{"metric": name, "classes": [class index, ...], "values": [value or None, ...],
        "support": [samples, ...]}`` for the samples whose rows are given."""
        raise NotImplementedError(f"Subclasses of {self.__class__.__name__} must implement per_class_rows().")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> None:
        """Add a batch."""
        self._parts.append(self.rows(logits, labels, predictions))

    def compute(self) -> Dict[str, float]:
        """The values over every batch added since the last reset."""
        if not self._parts:
            raise RuntimeError("No batch was added to the metrics.")
        return self.compute_rows(concat_rows(self._parts))
