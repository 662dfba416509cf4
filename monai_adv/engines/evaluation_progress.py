# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The per-sample outcomes of a robustness evaluation on disk, written as the run goes, so a killed run resumes.

Layout of the folder::

    settings.json       the settings the outcomes depend on; a run with other settings is refused
    header.json         the resolved task and the model's number of outputs
    examples.pt         the samples kept for figures (rank 0)
    batches/*.pt        one file per evaluated batch: the per-sample rows of every cell (clean, attack x budget)

Every file is written atomically (a temporary file renamed into place): a killed run leaves whole files only, and
loses at most the batches in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Union

import torch

from monai_adv.atomic import write_atomic
from monai_adv.metrics.rows import Rows

__all__ = ["EvaluationProgress", "CellRows", "model_fingerprint"]

#: the rows of one cell of one batch: ``[attack name or None for the clean cell, eps or None, rows]``
CellRows = List[Any]


def model_fingerprint(model: Any) -> Optional[str]:
    """A digest of a module's state (every parameter's and buffer's name, dtype, shape and values); None for a
    callable that is not a module. Two models with the same digest compute the same function of the same code."""
    if not isinstance(model, torch.nn.Module):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _json_text(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"


class EvaluationProgress:
    """A folder holding an evaluation's per-sample outcomes, batch by batch.

    Args:
        folder: where the outcomes go (created if missing).
        settings: every setting the outcomes depend on (JSON-serialisable). A folder written with other settings is
            refused: its outcomes cannot be mixed with this run's.

    Raises:
        ValueError: the folder holds outcomes made with other settings, or outcomes without recorded settings.
    """

    def __init__(self, folder: Union[str, Path], settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.batches = self.folder / "batches"
        self.settings = json.loads(_json_text(dict(settings)))
        self._check_settings()

    def _check_settings(self) -> None:
        path = self.folder / "settings.json"
        if path.is_file():
            stored = self._read_json(path)
            differ = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            if differ:
                shown = "; ".join(f"{k}: stored {stored.get(k)!r}, now {self.settings.get(k)!r}" for k in differ)
                raise ValueError(
                    f"{self.folder} holds outcomes of an evaluation with other settings ({shown}); rerun with the "
                    "same settings to resume it, or use another folder (or delete this one) to start anew."
                )
        elif self.batches.is_dir() and any(self.batches.glob("*.pt")):
            raise ValueError(
                f"{self.folder} holds evaluation outcomes without a record of their settings (settings.json); use "
                "another folder (or delete this one)."
            )
        else:
            write_atomic(path, lambda tmp: tmp.write_text(_json_text(self.settings), encoding="utf-8"))

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is corrupt ({e}); delete it and rerun.") from None

    def _write_json(self, name: str, payload: Any) -> None:
        write_atomic(self.folder / name, lambda tmp: tmp.write_text(_json_text(payload), encoding="utf-8"))

    def header(self) -> Optional[Dict[str, Any]]:
        """``{"task": ..., "num_classes": ...}`` of the stored outcomes, or None before the first batch."""
        path = self.folder / "header.json"
        return self._read_json(path) if path.is_file() else None

    def save_header(self, task: str, num_classes: int) -> None:
        if self.header() is None:
            self._write_json("header.json", {"task": task, "num_classes": int(num_classes)})

    def examples(self) -> Dict[str, torch.Tensor]:
        """The stored samples for figures (empty when none)."""
        path = self.folder / "examples.pt"
        return self._load(path) if path.is_file() else {}

    def save_examples(self, examples: Mapping[str, torch.Tensor]) -> None:
        write_atomic(self.folder / "examples.pt", lambda tmp: torch.save(dict(examples), tmp))

    def fitted(self) -> Dict[str, Any]:
        """What the fitted attacks (universal perturbations, patches) were fitted to, stored by :meth:`save_fitted`
        (empty when nothing is stored)."""
        path = self.folder / "fitted.pt"
        return self._load(path) if path.is_file() else {}

    def save_fitted(self, fitted: Mapping[str, Any]) -> None:
        """Store the fitted tensors (host copies) and their fit records, ``{name: {"tensor": ..., "info": ...}}``."""
        payload = {k: {"tensor": v["tensor"].detach().cpu(), "info": dict(v["info"])} for k, v in fitted.items()}
        write_atomic(self.folder / "fitted.pt", lambda tmp: torch.save(payload, tmp))

    def save_batch(self, rank: int, index: torch.Tensor, cells: List[CellRows]) -> Path:
        """Write the rows of every cell of one batch (``index``: the batch's sample indices)."""
        first, last = int(index.min()), int(index.max())
        path = self.batches / f"{first:010d}-{last:010d}-{int(index.numel())}-rank{rank}.pt"
        return write_atomic(path, lambda tmp: torch.save({"index": index.cpu(), "cells": cells}, tmp))

    def load_batches(self) -> List[List[CellRows]]:
        """The cells of every stored batch (temporary files of a killed run are removed)."""
        if not self.batches.is_dir():
            return []
        for stale in self.batches.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
        return [self._load(path)["cells"] for path in sorted(self.batches.glob("*.pt"))]

    @staticmethod
    def done_indices(batches: List[List[CellRows]]) -> Set[int]:
        """The sample indices whose outcomes are stored (every cell of their batch was written at once)."""
        done: Set[int] = set()
        for cells in batches:
            rows: Rows = cells[0][2]
            done.update(int(i) for i in rows["index"].tolist())
        return done

    @staticmethod
    def _load(path: Path) -> Any:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file cut short by a full disk, or not ours
            raise ValueError(f"{path} is not readable ({e}); delete it to recompute its samples.") from None

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({os.fspath(self.folder)!r})"
