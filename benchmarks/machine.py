# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The machine a benchmark ran on, as its tables name it."""

from __future__ import annotations

import platform

__all__ = ["processor"]


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
