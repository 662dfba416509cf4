# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0


"""Budgets as people write them ("4/255"), and the check that no two budgets of a run share a label.

Pure Python (no torch), so that the command line can check its arguments before loading anything heavy.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

__all__ = ["eps_label", "check_distinct_budgets"]


def eps_label(eps: float, value_range: Optional[Sequence[float]] = (0.0, 1.0)) -> str:
    """A budget as people write it: "4/255" for whole multiples of 1/255 on a unit range, else "0.05"."""
    if value_range is not None and math.isclose(float(value_range[1]) - float(value_range[0]), 1.0):
        scaled = eps * 255
        if eps > 0 and abs(scaled - round(scaled)) < 1e-6:
            return f"{int(round(scaled))}/255"
    return f"{eps:g}"


def check_distinct_budgets(eps: Sequence[float], value_range: Optional[Sequence[float]] = (0.0, 1.0)) -> None:
    """Raise if two budgets are equal or are shown with the same label (their results would overwrite each other)."""
    seen: Dict[str, float] = {}
    for value in eps:
        label = eps_label(value, value_range)
        if label in seen:
            raise ValueError(
                f"`eps` holds two budgets shown as {label!r} ({seen[label]!r} and {value!r}): their results would "
                "share one column and overwrite each other; give each budget once."
            )
        seen[label] = value
