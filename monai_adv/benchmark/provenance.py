# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Where a report's numbers come from: package versions, seed, device, command line, platform and time."""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

__all__ = ["PACKAGES", "run_provenance", "command_line", "device_description"]

#: the distributions whose versions a report records (those that can change its numbers)
PACKAGES = ("monai-adv", "torch", "monai", "pytorch-ignite", "numpy", "scipy")


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command that made the run, shell-quoted: ``monai-adv evaluate ...`` for the command line tool, else
    the Python script and its arguments (``sys.argv`` when ``argv`` is None)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0]).name
    if program == "__main__.py":  # python -m <package>
        program = f"python -m {Path(argv[0]).parent.name}"
    return " ".join([program] + [shlex.quote(str(a)) for a in argv[1:]])


def device_description(device: Union[str, torch.device, None]) -> str:
    """``cpu``, or ``cuda:0 (<GPU name>)`` for a CUDA device."""
    if device is None:
        return "unknown"
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def run_provenance(
    seed: Optional[int] = None, device: Union[str, torch.device, None] = None, argv: Optional[Sequence[str]] = None
) -> Dict[str, Any]:
    """The report's ``provenance`` section: the versions of Python and of :data:`PACKAGES` (those installed), the
    seed, the device, the command line (:func:`command_line`), the platform and the time (UTC, ISO 8601)."""
    versions = {"python": platform.python_version()}
    versions.update({name: v for name in PACKAGES if (v := _version(name)) is not None})
    return {
        "versions": versions,
        "seed": seed,
        "device": device_description(device),
        "command": command_line(argv),
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
