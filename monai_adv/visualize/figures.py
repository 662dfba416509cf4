# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Figures that never touch the global pyplot state, rendered off-screen and written to PNG atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monai_adv.atomic import write_atomic

__all__ = ["new_figure", "save_figure"]

PathLike = Union[str, "os.PathLike[str]"]


def new_figure(width: float, height: float) -> Figure:
    """A stand-alone figure with a constrained layout, drawn by the non-interactive Agg canvas.

    Args:
        width: width in inches.
        height: height in inches.
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically: to a temporary file in the same folder, then renamed.

    A reader never sees a half-written file, and an existing file is only replaced once the new one is complete.
    Missing parent folders are created.

    Args:
        fig: the figure to write.
        path: destination file.
        dpi: resolution in dots per inch.

    Returns:
        the path written.
    """
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
