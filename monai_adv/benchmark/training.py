# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Train a network with a defense (NAT, PGD-AT, fast-AT, N-FGSM, free-AT, TRADES, MART, HAT, AWP) through
RobustTrainer."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from monai.data import DataLoader
from monai.utils import optional_import, set_determinism

from monai_adv.benchmark.progress import attach_progress
from monai_adv.defenses import make_defense
from monai_adv.devices import resolve_device
from monai_adv.engines import RobustTrainer

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["TRAINING_METHODS", "train_with_defense"]

#: the survey's training methods, by the names :func:`monai_adv.defenses.make_defense` knows; "free_at" replays
#: every batch 4 times (four optimizer steps per batch) for the same number of epochs as the others
TRAINING_METHODS = ("nat", "pgd_at", "fast_at", "n_fgsm", "free_at", "trades", "mart", "hat", "awp")


def train_with_defense(
    network: torch.nn.Module,
    method: str,
    train_data: Sequence[Dict[str, Any]],
    eps: float = 8 / 255,
    epochs: int = 6,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    helper: Optional[torch.nn.Module] = None,
    defense_kwargs: Optional[Dict[str, Any]] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: bool = False,
    description: Optional[str] = None,
) -> torch.nn.Module:
    """Train ``network`` in place with the defense ``method`` at budget ``eps`` and return it in eval mode.

    The run is deterministic for a given ``seed`` on the CPU (data order, initial random state). ``network`` (and
    HAT's ``helper``) are moved to ``device``.

    Args:
        network: the network to train.
        method: one of :data:`TRAINING_METHODS`: "nat", "pgd_at", "fast_at", "n_fgsm", "free_at", "trades", "mart",
            "hat" or "awp".
        train_data: a dataset of dicts with "image" and "label".
        eps: the training budget (ignored by "nat"); PGD-based defenses use 10 steps of the survey's step.
        epochs, batch_size, learning_rate: Adam optimisation.
        seed: seed of the data order and of the random state.
        helper: HAT's helper model (a naturally trained network), required by "hat".
        defense_kwargs: further arguments of the defense (e.g. ``{"beta": 6.0}`` for TRADES).
        device: where to train ("cpu", "cuda", "cuda:1", ...); None: ``cuda`` when available, else ``cpu``.
        progress: show a progress bar with an ETA.
        description: the progress bar's label.
    """
    device = resolve_device(device)
    key = method.strip().lower().replace("-", "_")
    kwargs: Dict[str, Any] = dict(defense_kwargs or {})
    if key != "nat":
        kwargs.setdefault("eps", eps)
    if key in ("pgd_at", "trades", "mart", "hat", "awp"):
        kwargs.setdefault("steps", 10)
    if key == "hat":
        if helper is None:
            raise ValueError('`helper` (a naturally trained model) is required for method="hat".')
        kwargs["helper"] = helper.to(device).eval()
    defense = make_defense(key, **kwargs)
    set_determinism(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=generator)
    network.to(device)
    trainer = RobustTrainer(
        device=device,
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), learning_rate),
        defense=defense,
    )
    attach_progress(trainer, Events.ITERATION_COMPLETED, epochs * len(loader), description or f"train {key}", progress)
    trainer.run()
    set_determinism(seed=None)
    return network.eval()
