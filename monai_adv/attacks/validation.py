# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Argument checks shared by all attacks. Every error names the argument and the form it expects."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "check_eps",
    "check_positive",
    "check_int",
    "check_norm",
    "check_choice",
    "check_value_range",
    "check_input",
    "check_mask",
    "check_logits",
]

NORMS = {"linf": "Linf", "inf": "Linf", "l2": "L2", "2": "L2"}


def check_eps(eps: Any, name: str = "eps") -> float:
    """Return ``eps`` as a float after checking that it is a finite number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise TypeError(f"`{name}` must be a real number >= 0, got {type(eps).__name__}.")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {eps}.")
    return eps


def check_positive(value: Any, name: str) -> float:
    """Return ``value`` as a float after checking that it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a real number > 0, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return value


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking that it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an integer >= {minimum}, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}.")
    return int(value)


def check_norm(norm: Any) -> str:
    """Return the canonical norm name, "Linf" or "L2"."""
    key = str(norm).lower().replace("_", "")
    if isinstance(norm, float) and math.isinf(norm):
        key = "inf"
    if key not in NORMS:
        raise ValueError(f'`norm` must be "Linf" or "L2", got {norm!r}.')
    return NORMS[key]


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` lower-cased after checking it is one of ``choices``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}.")
    return value.lower()


def check_value_range(value_range: Any) -> Optional[Tuple[float, float]]:
    """Return ``value_range`` as ``(lo, hi)`` floats with ``lo < hi``, or None for unbounded intensities."""
    if value_range is None:
        return None
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise TypeError(f"`value_range` must be a pair (lo, hi) or None, got {value_range!r}.")
    lo, hi = value_range
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise ValueError(f"`value_range` must hold two finite numbers (lo, hi), got {value_range!r}.")
    if not float(lo) < float(hi):
        raise ValueError(f"`value_range` must satisfy lo < hi, got {value_range!r}.")
    return float(lo), float(hi)


def check_input(x: Any, value_range: Optional[Tuple[float, float]]) -> torch.Tensor:
    """Check the image batch ``x``: a floating tensor (N, C, *spatial) with 1-3 spatial dims, finite, in range."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a torch.Tensor of shape (N, C, *spatial), got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"`x` must be a floating-point tensor (e.g. float32 scaled to the value range), got {x.dtype}; "
            "convert it with `x.float()` and scale it first."
        )
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"`x` must have shape (N, C, *spatial) with 1, 2 or 3 spatial dims, got shape {tuple(x.shape)}; "
            "add the batch dim with `x[None]` for a single sample."
        )
    if x.shape[0] == 0:
        return x
    values = x.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("`x` contains NaN or Inf values.")
    if value_range is not None:
        lo, hi = value_range
        x_min, x_max = float(values.min()), float(values.max())
        if x_min < lo or x_max > hi:
            raise ValueError(
                f"`x` has values in [{x_min:.6g}, {x_max:.6g}], outside `value_range`=({lo:g}, {hi:g}); "
                "scale the images into the range, or pass value_range=None for unbounded intensities."
            )
    return x


def check_mask(mask: Any, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Return ``mask`` as a 0/1 tensor of x's dtype broadcast to ``x.shape``, or None.

    Accepted shapes: the shape of ``x``; any shape of the same ndim whose dims are 1 or equal to x's
    (e.g. (N, 1, *spatial) or (1, 1, *spatial)); or a shape without the batch dim, (C or 1, *spatial).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(mask)
        except Exception as e:
            raise TypeError(f"`mask` must be a tensor or array broadcastable to x {tuple(x.shape)}.") from e
    mask = mask.as_subclass(torch.Tensor) if type(mask) is not torch.Tensor else mask
    if mask.ndim == x.ndim - 1:
        mask = mask.unsqueeze(0)
    ok = mask.ndim == x.ndim and all(m in (1, s) for m, s in zip(mask.shape, x.shape))
    if not ok:
        raise ValueError(
            f"`mask` of shape {tuple(mask.shape)} does not match x of shape {tuple(x.shape)}; expected "
            "(N, C|1, *spatial), (1, C|1, *spatial) or (C|1, *spatial) with the same spatial size as x."
        )
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise ValueError("`mask` contains NaN or Inf values.")
    return (mask.to(device=x.device) != 0).to(x.dtype).expand(x.shape)


def as_index_labels(y: torch.Tensor, name: str) -> torch.Tensor:
    """Return integer-valued labels as int64, raising if float labels are not whole numbers."""
    if y.dtype == torch.bool:
        return y.long()
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise ValueError(f"`{name}` must hold integer class indices, got non-integer values.")
    elif y.is_complex():
        raise TypeError(f"`{name}` must be an integer tensor of class indices, got {y.dtype}.")
    return y.long()


def as_tensor_labels(y: Union[torch.Tensor, Sequence, Any], name: str, device: torch.device) -> torch.Tensor:
    """Convert labels (tensor, numpy array or sequence) to a plain tensor on ``device``."""
    if y is None:
        raise ValueError(f"`{name}` is required.")
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception as e:
            raise TypeError(f"`{name}` must be a tensor or array, got {type(y).__name__}.") from e
    if type(y) is not torch.Tensor:
        y = y.as_subclass(torch.Tensor)
    return y.detach().to(device)


def check_logits(logits: torch.Tensor, what: str = "the clean input") -> torch.Tensor:
    """Raise if the model's logits are not finite: NaN or Inf logits have no prediction and no gradient.

    A network with NaN weights (a diverged training run, a broken checkpoint) returns NaN logits, whose argmax
    would silently count as class 0; that must be an error, never a score.
    """
    bad = ~torch.isfinite(logits.detach()).flatten(1).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero()[:, 0].tolist()
        shown = ", ".join(str(i) for i in rows[:8]) + (", ..." if len(rows) > 8 else "")
        raise ValueError(
            f"The model returned NaN or Inf logits on {what} for {len(rows)} of {logits.shape[0]} sample(s) "
            f"(rows {shown}): check the network's weights (a diverged run or a broken checkpoint) and its input."
        )
    return logits
