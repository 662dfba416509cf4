# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The device a run uses when none is given, and the check of a given one.

Importing this module does not import torch (the command line checks its arguments before anything heavy loads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Union

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_FORM", "default_device", "host_state_dict", "resolve_device"]

#: the device names the command line takes
DEVICE_FORM = "cpu, cuda or cuda:N (e.g. cuda:0)"


def default_device() -> str:
    """``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``: the device of every run that names none."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: Optional[Union[str, torch.device]] = None, name: str = "`device`") -> torch.device:
    """``device`` as a ``torch.device`` (None: :func:`default_device`), refused with a ``ValueError`` naming
    ``name`` when torch cannot parse it or when it is a CUDA device this machine does not have."""
    import torch

    if device is None:
        return torch.device(default_device())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected {DEVICE_FORM}, got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name} {device}: CUDA is not available on this machine (torch.cuda.is_available() is False); use cpu"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"{name} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; expected "
                f"{DEVICE_FORM} with N < {count}"
            )
    return resolved


def host_state_dict(module: torch.nn.Module) -> Dict[str, Any]:
    """``module.state_dict()`` with every tensor copied to the host (CPU), for a file that loads on any machine;
    the state dict's version metadata is kept."""
    state = module.state_dict()
    host = type(state)((key, value.detach().cpu()) for key, value in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        host._metadata = metadata
    return host
