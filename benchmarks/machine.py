# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The machine a benchmark ran on, as its tables name it."""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

__all__ = ["load_average", "machine_with_device", "processor"]


def processor() -> str:
    """The processor's model name where the system tells it, with the architecture."""
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            name = f"{models[0]} ({platform.machine()})"
    except OSError:
        pass
    return name


def machine_with_device(device: str) -> str:
    """The processor and its core count, and the GPU's name when ``device`` is a CUDA device that is present."""
    text = f"{processor()}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def load_average() -> Optional[float]:
    """The system's one-minute load average (None where the system does not tell it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
