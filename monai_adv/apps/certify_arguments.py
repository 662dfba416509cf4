# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Checks of ``monai-adv certify``'s flags, run before anything heavy is imported (no torch, no MONAI)."""

from __future__ import annotations

import math
from typing import List, Optional

from monai_adv.apps.arguments import CommandError

__all__ = ["check_smoothing", "parse_radii"]


def check_smoothing(sigma: float, n0: int, n: int, alpha: float) -> None:
    """``--sigma`` finite and > 0, ``--n0`` and ``--n`` >= 1 with n0 <= n, ``--alpha`` in (0, 1)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise CommandError(f"--sigma: expected the noise standard deviation, a finite number > 0, got {sigma:g}")
    if n0 < 1:
        raise CommandError(f"--n0: expected a number of noise draws >= 1, got {n0}")
    if n < 1:
        raise CommandError(f"--n: expected a number of noise draws >= 1, got {n}")
    if n0 > n:
        raise CommandError(f"--n0: the selection draws ({n0}) must not exceed the estimation draws --n ({n})")
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise CommandError(f"--alpha: expected an error level in (0, 1), e.g. 0.001, got {alpha:g}")


def parse_radii(text: Optional[str], sigma: float) -> List[float]:
    """Radii from "0,0.1,0.25" (finite, >= 0, at least one; sorted, each once); None gives 0 to 4 sigma in steps
    of sigma / 2."""
    if text is None:
        return [round(sigma * k / 2, 12) for k in range(9)]
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise CommandError(f"--radii: expected L2 radii (input units) such as '0,0.25,0.5', got {text!r}") from None
        if not (math.isfinite(value) and value >= 0):
            raise CommandError(f"--radii: radii must be finite numbers >= 0, got {part}")
        values.append(value)
    if not values:
        raise CommandError(f"--radii: give at least one radius, e.g. '0,0.25,0.5', got {text!r}")
    return sorted(set(values))
