# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0


"""Checks of the command line's arguments that run before anything heavy is imported (no torch, no MONAI)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from monai_adv.budgets import check_distinct_budgets
from monai_adv.devices import DEVICE_FORM, default_device, resolve_device

__all__ = [
    "CommandError",
    "parse_eps",
    "parse_value_range",
    "parse_patch_sizes",
    "parse_component",
    "check_count",
    "check_out_folder",
    "check_model",
    "check_data",
    "check_surrogate",
    "check_device",
    "default_device",
]

DATA_KINDS = ("demo", "demo3d", "medmnist", "csv", "nifti")


class CommandError(Exception):
    """A mistake in the command's input: shown as one line, without a traceback (unless ``--debug``)."""


def parse_eps(text: str, value_range: Optional[Sequence[float]] = (0.0, 1.0)) -> List[float]:
    """Budgets from "1/255,2/255,0.03": fractions or decimals, comma-separated, finite, >= 0, each given once.

    A budget larger than the whole ``value_range`` (or, unbounded, than float32 can hold) is refused: it is a
    unit mistake (e.g. 8 instead of 8/255), not a threat model.
    """
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "/" in part:
                num, den = part.split("/")
                values.append(float(num) / float(den))
            else:
                values.append(float(part))
        except (ValueError, ZeroDivisionError, OverflowError):
            raise CommandError(f"--eps: expected budgets such as '1/255,2/255' or '0.01,0.03', got {text!r}") from None
        value = values[-1]
        if not math.isfinite(value) or value < 0:
            raise CommandError(f"--eps: budgets must be finite numbers >= 0, got {part}")
        width = 3.4e38 if value_range is None else float(value_range[1]) - float(value_range[0])
        if value > width:
            raise CommandError(
                f"--eps: the budget {part} is larger than the whole intensity range ({width:g}); give budgets in "
                "the units of the images, e.g. 8/255 for images in [0, 1]"
            )
    try:
        check_distinct_budgets(values, value_range)
    except ValueError as e:
        raise CommandError(f"--eps: {e}") from None
    return values


def parse_patch_sizes(text: str) -> List[float]:
    """Patch sizes from "0.01,0.05" (fractions of the image area, or volume in 3D, in (0, 1)) or "8,16" (sides in
    voxels, whole numbers >= 1), each given once."""
    sizes: List[float] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            size = int(part) if part.isdigit() else float(part)
        except ValueError:
            raise CommandError(
                f"--patch-sizes: expected fractions of the image such as '0.01,0.05' or sides in voxels such as "
                f"'8,16', got {text!r}"
            ) from None
        valid = size >= 1 if isinstance(size, int) else math.isfinite(size) and 0 < size < 1
        if not valid:
            raise CommandError(f"--patch-sizes: {part} is neither a fraction in (0, 1) nor a side >= 1 in voxels")
        if size in sizes:
            raise CommandError(f"--patch-sizes: {part} is given twice")
        sizes.append(size)
    return sizes


def parse_component(text: str, flag: str) -> Tuple[str, Dict[str, Any]]:
    """A component and its settings from "name" or "name:key=value,key=value" (values: ints, floats or words),
    e.g. "median:kernel_size=5" for ``--purifier``."""
    name, _, rest = text.partition(":")
    name = name.strip().lower().replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise CommandError(f"{flag}: expected NAME or NAME:key=value,..., got {text!r}")
    settings: Dict[str, Any] = {}
    for part in (p.strip() for p in rest.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key.strip()):
            raise CommandError(f"{flag}: expected key=value settings after the colon, got {part!r} in {text!r}")
        settings[key.strip()] = _setting(value.strip())
    return name, settings


def _setting(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def check_count(value: Optional[int], flag: str) -> Optional[int]:
    """A sample or epoch count: None (the default) or an integer >= 1."""
    if value is not None and value < 1:
        raise CommandError(f"{flag}: expected a number >= 1, got {value}")
    return value


def check_out_folder(path: Path, flag: str = "--out") -> Path:
    """An output folder: a folder or a path that does not exist yet, never an existing file."""
    if path.exists() and not path.is_dir():
        raise CommandError(f"{flag}: {path} is an existing file, not a folder; give a folder for the outputs")
    return path


def parse_value_range(text: str) -> Optional[Tuple[float, float]]:
    """'lo,hi' (finite, lo < hi) or 'none'."""
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise CommandError(f"--value-range: expected 'lo,hi' (e.g. '0,1') or 'none', got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CommandError(f"--value-range: expected finite numbers with lo < hi, got {text!r}")
    return lo, hi


def check_model(bundle: Optional[Path], checkpoint: Optional[Path], network: Optional[str], prefix: str = "--") -> None:
    """A model given as ``--bundle DIR`` or as ``--checkpoint FILE --network SPEC``, whose files exist."""
    if bundle is not None:
        if not Path(bundle).is_dir():
            raise CommandError(f"bundle folder not found: {bundle}")
        return
    if checkpoint is None or network is None:
        raise CommandError(f"give {prefix}bundle DIR, or {prefix}checkpoint FILE with {prefix}network SPEC")
    if not Path(checkpoint).is_file():
        raise CommandError(f"checkpoint not found: {checkpoint}")
    _check_network(network, prefix + "network")


def _check_network(spec: str, flag: str) -> None:
    if spec != "demo" and spec.endswith(".json") and not spec.lstrip().startswith("{") and not Path(spec).is_file():
        raise CommandError(f"{flag}: file not found: {spec}")


def check_surrogate(checkpoint: Optional[Path], network: Optional[str]) -> None:
    """The transfer setting's surrogate: both of its flags or neither, its checkpoint existing."""
    if checkpoint is None and network is None:
        return
    if checkpoint is None or network is None:
        raise CommandError("the transfer setting needs both --surrogate-checkpoint and --surrogate-network")
    if not Path(checkpoint).is_file():
        raise CommandError(f"surrogate checkpoint not found: {checkpoint}")
    _check_network(network, "--surrogate-network")


def check_data(spec: str, kinds: Sequence[str] = DATA_KINDS) -> None:
    """The syntax of a ``--data`` specification (``kind[:arg]``) and the existence of the file or folder it names."""
    kind, _, arg = spec.partition(":")
    if kind not in kinds:
        raise CommandError(f"--data: expected one of {', '.join(k + ':' for k in kinds)}..., got {spec!r}")
    if kind in ("demo", "demo3d"):
        return
    if not arg:
        raise CommandError(f"--data {spec}: give a path after the colon, e.g. {kind}:<path>")
    path = Path(arg)
    if kind == "nifti" and not (path / "images").is_dir():
        raise CommandError(f"--data: no folder {path / 'images'} (nifti: takes FOLDER/images and FOLDER/labels)")
    if kind in ("medmnist", "csv") and not path.is_file():
        raise CommandError(f"--data: {'MedMNIST file' if kind == 'medmnist' else 'CSV manifest'} not found: {path}")


def check_device(text: Optional[str], flag: str = "--device") -> str:
    """A ``--device``: "cpu", "cuda" or "cuda:N", a device this machine has; None (not given): :func:`default_device`.

    The form is checked first, without torch; torch is imported only to ask whether the CUDA device exists.
    """
    if text is None:
        return default_device()
    value = text.strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise CommandError(f"{flag}: expected {DEVICE_FORM}, got {text!r}")
    try:
        resolve_device(value, flag)
    except ValueError as e:
        raise CommandError(str(e)) from None
    return value
