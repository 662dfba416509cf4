# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Metrics a user adds to an evaluation (any MONAI ``CumulativeIterationMetric`` or ignite ``Metric``), computed on
the hard predictions of each evaluation cell with a fresh copy per cell."""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import min_version, optional_import

from monai_adv.metrics.rows import Rows, concat_rows

IgniteMetric, _has_ignite = optional_import("ignite.metrics", "0.4.11", min_version, "Metric")
IgniteMetricHandler, _has_handler = optional_import("monai.handlers.ignite_metric", name="IgniteMetricHandler")

__all__ = ["AdditionalMetrics", "RESERVED_METRIC_NAMES", "check_additional_metrics", "one_hot_inputs"]

#: names an additional metric may not take: the task metrics and the other entries of a report cell
RESERVED_METRIC_NAMES = frozenset(
    {"accuracy", "recall", "precision", "f1", "auc", "dice", "iou", "seconds", "success_rate"}
)


def check_additional_metrics(metrics: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Check the ``additional_metrics`` of an evaluation and return them as ``{name: metric}``.

    A MONAI ignite handler wrapping a metric (e.g. ``monai.handlers.HausdorffDistance``) is replaced by the
    MONAI metric it wraps (its ``metric_fn``), so that it needs no engine of its own.

    Raises:
        TypeError: ``metrics`` is not a mapping, or a value is neither a MONAI ``CumulativeIterationMetric`` nor an
            ignite ``Metric``.
        ValueError: a name is empty, holds "/", or is one of :data:`RESERVED_METRIC_NAMES`; or a MONAI metric is
            built with ``get_not_nans=True`` (its aggregate is then a pair).
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f'`additional_metrics` must be a mapping of names to metrics, e.g. {{"hd95": '
            f"HausdorffDistanceMetric(percentile=95)}}, got {type(metrics).__name__}."
        )
    checked: Dict[str, Any] = {}
    for name, metric in metrics.items():
        if not isinstance(name, str) or not name or "/" in name or "#" in name:
            raise ValueError(f"`additional_metrics` names must be non-empty strings without '/' or '#', got {name!r}.")
        if name in RESERVED_METRIC_NAMES:
            raise ValueError(
                f"`additional_metrics` name {name!r} is taken by a built-in entry of the report "
                f"({', '.join(sorted(RESERVED_METRIC_NAMES))}); choose another name."
            )
        if _has_handler and isinstance(metric, IgniteMetricHandler):
            metric = metric.metric_fn
        is_ignite = _has_ignite and isinstance(metric, IgniteMetric)
        if not isinstance(metric, CumulativeIterationMetric) and not is_ignite:
            raise TypeError(
                f"`additional_metrics[{name!r}]` must be a MONAI CumulativeIterationMetric (e.g. "
                f"HausdorffDistanceMetric) or an ignite Metric, got {type(metric).__name__}."
            )
        if not is_ignite and getattr(metric, "get_not_nans", False):
            raise ValueError(f"`additional_metrics[{name!r}]`: build the metric with get_not_nans=False.")
        checked[name] = metric
    return checked


def _one_hot(index_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(index_map.long(), num_classes).movedim(-1, 1).float()


def one_hot_inputs(
    task: str, predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(y_pred, y)`` as MONAI's metrics take them, from hard predictions and labels prepared by
    :func:`monai_adv.attacks.tasks.prepare_labels`.

    classification: one-hot (N, K) prediction and label; segmentation: one-hot (N, K, *spatial) prediction and label
    map; multilabel: the multi-hot (N, K) prediction and label as they are. K is the model's number of outputs, 2
    for a single-logit (binary) model (channel 0 is the background or class 0).
    """
    if task == "multilabel":
        return predictions.detach().float(), labels.detach().float()
    k = max(int(num_classes), 2)
    return _one_hot(predictions.detach(), k), _one_hot(labels.detach(), k)


def _reduce(value: Any) -> float:
    """One number: a single value as it is; several (e.g. ``reduction="none"``) by their mean over finite values."""
    if isinstance(value, torch.Tensor):
        values = value.detach().double().cpu().flatten()
    else:
        values = torch.as_tensor(np.asarray(value, dtype=np.float64)).flatten()
    if values.numel() == 1:
        return float(values[0])
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else math.nan


#: samples fed to an ignite metric at a time when it is computed from rows
_IGNITE_CHUNK = 256


class AdditionalMetrics:
    """Fresh copies of user metrics for one evaluation cell, fed with one-hot predictions and labels.

    Every metric gets ``y_pred`` and ``y`` from :func:`one_hot_inputs`. A MONAI ``CumulativeIterationMetric`` keeps
    per-sample values: a batch's rows are the values it computes on the batch (``metric(y_pred=y_pred, y=y)``), and
    its result is ``aggregate()`` over the rows of all samples. An ignite ``Metric`` needs the predictions
    themselves: a batch's rows are the hard predictions and labels (class indices, multi-hot vectors or label maps;
    for segmentation that is one label map per sample and cell, so prefer MONAI metrics there), fed back with
    ``update((y_pred, y))`` in sample order and read with ``compute()``. A result of one value is recorded as it
    is; a result of several values (e.g. ``reduction="none"``: one per sample and class) is reduced by its mean over
    the finite values; a list of results (e.g. ``ConfusionMatrixMetric`` with several ``metric_name``) gives one
    entry per result, ``"<name>_<metric_name>"``.

    Args:
        metrics: ``{name: metric}`` (see :func:`check_additional_metrics`); each is deep-copied and reset, the
            originals are never used.
        task: "classification", "multilabel" or "segmentation".
        num_classes: the model's outputs.
    """

    def __init__(self, metrics: Mapping[str, Any], task: str, num_classes: int) -> None:
        self.task = task
        self.num_classes = int(num_classes)
        self.metrics: Dict[str, Any] = {}
        for name, metric in check_additional_metrics(metrics).items():
            fresh = copy.deepcopy(metric)
            fresh.reset()
            self.metrics[name] = fresh
        self._parts: List[Rows] = []

    def __len__(self) -> int:
        return len(self.metrics)

    @property
    def _uses_ignite(self) -> bool:
        return any(not isinstance(m, CumulativeIterationMetric) for m in self.metrics.values())

    def rows(self, predictions: torch.Tensor, labels: torch.Tensor) -> Rows:
        """The rows of a batch: hard predictions and labels as :func:`monai_adv.metrics.sample_outcome` and
        :func:`monai_adv.attacks.tasks.prepare_labels` give them."""
        if not self.metrics:
            return {}
        y_pred, y = one_hot_inputs(self.task, predictions, labels, self.num_classes)
        rows: Rows = {}
        for name, metric in self.metrics.items():
            if not isinstance(metric, CumulativeIterationMetric):
                continue
            metric.reset()
            metric(y_pred=y_pred, y=y)
            values = metric.get_buffer()
            metric.reset()
            for i, value in enumerate(values if isinstance(values, list) else [values]):
                rows[f"{name}#{i}"] = value.detach().cpu()
        if self._uses_ignite:
            rows["#pred"], rows["#label"] = predictions.detach().cpu(), labels.detach().cpu()
        return rows

    def compute_rows(self, rows: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """``{name: value}`` of every metric over the samples whose rows are given (NaN where undefined)."""
        out: Dict[str, float] = {}
        for name, metric in self.metrics.items():
            metric.reset()
            if isinstance(metric, CumulativeIterationMetric):
                parts = [rows[key] for key in sorted((k for k in rows if k.startswith(f"{name}#")), key=_part)]
                metric.extend(*parts)
                result = metric.aggregate()
            else:
                for start in range(0, rows["#pred"].shape[0], _IGNITE_CHUNK):
                    pred, label = (rows[key][start : start + _IGNITE_CHUNK] for key in ("#pred", "#label"))
                    metric.update(one_hot_inputs(self.task, pred, label, self.num_classes))
                result = metric.compute()
            metric.reset()
            out.update(self._entries(name, result, metric))
        return out

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch (see :meth:`rows`)."""
        if self.metrics:
            self._parts.append(self.rows(predictions, labels))

    def compute(self) -> Dict[str, float]:
        """``{name: value}`` over every batch added (see :meth:`compute_rows`)."""
        if self.metrics and not self._parts:
            raise RuntimeError("No batch was added to the metrics.")
        return self.compute_rows(concat_rows(self._parts)) if self.metrics else {}

    @staticmethod
    def _entries(name: str, result: Any, metric: Any) -> Dict[str, float]:
        if isinstance(result, Mapping):
            return {f"{name}_{key}": _reduce(value) for key, value in result.items()}
        if isinstance(result, (list, tuple)):
            if len(result) == 1:
                return {name: _reduce(result[0])}
            sub = getattr(metric, "metric_name", None)
            keys = list(sub) if isinstance(sub, (list, tuple)) and len(sub) == len(result) else range(len(result))
            return {f"{name}_{key}": _reduce(value) for key, value in zip(keys, result)}
        return {name: _reduce(result)}


def _part(key: str) -> int:
    return int(key.rsplit("#", 1)[1])
