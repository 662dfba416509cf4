# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Certified robustness by randomized smoothing: classification, multi-label and 2D/3D segmentation.

A certificate is a probabilistic guarantee: with probability at least ``1 - alpha`` over the noise draws, the
smoothed network's prediction is constant within an L2 radius, in the units of the network's input.

Pure PyTorch, numpy and scipy: nothing here imports MONAI or ignite.
"""

from monai_adv.certify.certificates import ABSTAIN, Certificate
from monai_adv.certify.sampling import SMOOTHING_TASKS, VoteCounter
from monai_adv.certify.segmentation import SegmentationCertificate, certified_dice
from monai_adv.certify.smoothing import RandomizedSmoothing
from monai_adv.certify.statistics import CORRECTIONS

__all__ = [
    "ABSTAIN",
    "CORRECTIONS",
    "Certificate",
    "RandomizedSmoothing",
    "SMOOTHING_TASKS",
    "SegmentationCertificate",
    "VoteCounter",
    "certified_dice",
]
