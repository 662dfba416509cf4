# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Progress bars with an ETA for long ignite runs (training epochs, attack suites)."""

from __future__ import annotations

from typing import Any

from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")
tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["attach_progress"]


def attach_progress(engine: Any, event: Any, total: int, description: str, enabled: bool = True) -> None:
    """Show a progress bar (with elapsed time and ETA) that advances on ``event`` and closes when the run ends.

    Args:
        engine: an ignite engine (a MONAI trainer or evaluator).
        event: the event that counts one step, e.g. ``Events.ITERATION_COMPLETED`` or
            ``RobustnessEvents.ATTACK_COMPLETED``.
        total: the steps of the whole run.
        description: the bar's label.
        enabled: False attaches nothing (quiet runs, tests).
    """
    if not enabled or not has_tqdm:
        return
    state = {"bar": None}

    def _start(_engine: Any) -> None:
        state["bar"] = tqdm(total=total, desc=description, unit="step", leave=True, dynamic_ncols=True)

    def _step(_engine: Any) -> None:
        if state["bar"] is not None:
            state["bar"].update(1)

    def _close(_engine: Any) -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    engine.add_event_handler(Events.STARTED, _start)
    engine.add_event_handler(event, _step)
    engine.add_event_handler(Events.COMPLETED, _close)
    engine.add_event_handler(Events.TERMINATE, _close)
