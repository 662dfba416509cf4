# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The small networks of the demo and the benchmark grid."""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet

__all__ = ["small_classifier"]


def small_classifier(in_channels: int = 1, num_classes: int = 2) -> torch.nn.Module:
    """A small MONAI ResNet for 2D images: 4 basic blocks, 8-64 channels, a stride-2 stem, no max pooling."""
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [8, 16, 32, 64],
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_stride=2,
        no_max_pool=True,
    )
