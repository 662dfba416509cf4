# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Robustness metrics: clean and robust accuracy, macro recall/precision/F1, ROC-AUC, Dice and IoU under attack,
per-sample worst case across attacks, perturbation norms, and user metrics (MONAI or ignite) on every cell."""

from __future__ import annotations

from typing import Union

from monai_adv.metrics.additional import (
    RESERVED_METRIC_NAMES,
    AdditionalMetrics,
    check_additional_metrics,
    one_hot_inputs,
)
from monai_adv.metrics.classification import ClassificationMetrics, class_probabilities
from monai_adv.metrics.per_sample import SampleOutcome, perturbation_norms, sample_outcome, worst_case_index
from monai_adv.metrics.segmentation import SegmentationMetrics

__all__ = [
    "AdditionalMetrics",
    "ClassificationMetrics",
    "PRIMARY_METRIC",
    "RESERVED_METRIC_NAMES",
    "SampleOutcome",
    "SegmentationMetrics",
    "check_additional_metrics",
    "class_probabilities",
    "make_task_metrics",
    "one_hot_inputs",
    "perturbation_norms",
    "sample_outcome",
    "worst_case_index",
]

#: the headline metric of each task: robust accuracy, or robust Dice for segmentation
PRIMARY_METRIC = {"classification": "accuracy", "multilabel": "accuracy", "segmentation": "dice"}


def make_task_metrics(task: str, num_classes: int) -> Union[ClassificationMetrics, SegmentationMetrics]:
    """The metric accumulator of a task ("classification", "multilabel" or "segmentation")."""
    if task == "segmentation":
        return SegmentationMetrics(num_classes)
    return ClassificationMetrics(task, num_classes)
