# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import torch

from monai_adv.atomic import DiskFullError, write_atomic

__all__ = [
    "DiskFullError",
    "write_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "save_state_dict_atomic",
]


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Union[str, Path], payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (NaN is not valid JSON: it is refused)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def save_state_dict_atomic(path: Union[str, Path], state_dict: Any) -> Path:
    """``torch.save`` to ``path`` atomically (load it back with ``torch.load(path, weights_only=True)``)."""
    return write_atomic(path, lambda tmp: torch.save(state_dict, tmp))
