# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The tables of a report, kept as data so that the Markdown summary and ``report.html`` show the same numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Set, Tuple, Union

__all__ = ["Table", "format_value"]

Cell = Union[str, float, int, None]


def format_value(value: Optional[float]) -> str:
    """A metric as shown in every table: three decimals, ``n/a`` when undefined."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


@dataclass
class Table:
    """A captioned table of text cells, with the numbers behind its metric cells.

    Attributes:
        caption: what the table shows, in words.
        header: the column names.
        rows: the cells as shown.
        values: per cell, the metric value it shows (None for text cells), e.g. for shading.
        strong: the ``(row, column)`` cells to read first (the number to quote, the worst case).
        highlighted: the rows to set apart (the worst case over the attacks).
    """

    caption: str
    header: List[str]
    rows: List[List[str]] = field(default_factory=list)
    values: List[List[Optional[float]]] = field(default_factory=list)
    strong: Set[Tuple[int, int]] = field(default_factory=set)
    highlighted: Set[int] = field(default_factory=set)

    def add(self, cells: Sequence[Cell], strong: Sequence[int] = (), highlight: bool = False) -> None:
        """Add a row: text cells are shown as given, numbers (and None) as metrics (:func:`format_value`);
        ``strong`` lists the columns to set in bold, ``highlight`` sets the whole row apart."""
        if len(cells) != len(self.header):
            raise ValueError(f"A row of {len(cells)} cells does not fit the {len(self.header)} columns {self.header}.")
        index = len(self.rows)
        self.rows.append([c if isinstance(c, str) else format_value(c) for c in cells])
        self.values.append([None if isinstance(c, str) or c is None else float(c) for c in cells])
        self.strong.update((index, column) for column in strong)
        if highlight:
            self.highlighted.add(index)

    def cell_is_strong(self, row: int, column: int) -> bool:
        return (row, column) in self.strong

    def markdown(self) -> str:
        """The caption, a blank line and the table in Markdown (strong cells in bold)."""
        lines = [self.caption, "", "| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        for r, row in enumerate(self.rows):
            cells = [f"**{c}**" if (r, k) in self.strong and c else c for k, c in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
