# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Several processes under ``torchrun``: one process group per run (NCCL on GPUs, gloo on CPU), each rank on its
own device, and an orderly end (every rank done, the group destroyed while the interpreter is fully alive)."""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Union

import torch
import torch.distributed as dist

__all__ = ["RunContext", "distributed_run", "launched_by_torchrun", "all_gather_objects"]


@dataclass(frozen=True)
class RunContext:
    """Where this process stands in the run.

    Attributes:
        rank: this process's rank (0 in a single-process run).
        world_size: the number of processes (1 in a single-process run).
        device: the device this process computes on (``cuda:<LOCAL_RANK>`` for a CUDA run under torchrun).
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's outputs (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank_device(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this rank's GPU (``LOCAL_RANK``); an explicit index is kept."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextmanager
def distributed_run(device: Union[str, torch.device]) -> Iterator[RunContext]:
    """Join the process group of a ``torchrun`` launch for the duration of a run, or run alone.

    Under ``torchrun`` with more than one process, a process group is started with the backend the device needs
    (``nccl`` for CUDA, ``gloo`` otherwise); a CUDA device without an index becomes ``cuda:<LOCAL_RANK>`` and is
    made the current device (NCCL collectives use it). On exit, every rank waits for the others, the objects of
    the run are freed, and the group is destroyed, so no process is torn down while a peer still talks to it.
    A group the caller started before is used as it is and left running.

    Args:
        device: the device of the run ("cuda", "cuda:1", "cpu", ...).

    Yields:
        the :class:`RunContext` of this process.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        yield RunContext(dist.get_rank(), dist.get_world_size(), _rank_device(device))
        return
    if not launched_by_torchrun():
        yield RunContext(0, 1, device)
        return
    device = _rank_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield RunContext(dist.get_rank(), dist.get_world_size(), device)
        dist.barrier()
    finally:
        gc.collect()  # engines and DDP wrappers hold the group: free them before it goes
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when no process group is running).

    The objects are pickled; keep them on the host (CPU tensors), so the gather costs no device memory.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: List[Optional[Any]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
