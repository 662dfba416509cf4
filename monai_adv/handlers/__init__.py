# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""ignite handlers that add attacks and adversarial training to existing MONAI trainers and evaluators, and the
helpers that log robust metrics with MONAI's TensorBoard and MLflow handlers."""

from monai_adv.handlers.adversarial_batch import AdversarialBatchHandler
from monai_adv.handlers.tracking import (
    OutputAverage,
    iteration_scalars,
    tracking_metrics,
    tracking_name,
    training_metrics,
)

__all__ = [
    "AdversarialBatchHandler",
    "OutputAverage",
    "iteration_scalars",
    "tracking_metrics",
    "tracking_name",
    "training_metrics",
]
