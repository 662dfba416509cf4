# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""An ignite handler that puts adversarial examples into the batches of any MONAI trainer or evaluator."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence

import torch
from monai.utils import min_version, optional_import

from monai_adv.attacks import Attack, make_attack

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["AdversarialBatchHandler"]


class AdversarialBatchHandler:
    """At ``ITERATION_STARTED``, replace the images of ``engine.state.batch`` (all, or a ``ratio`` of them) by
    adversarial examples against the engine's network (or ``network``).

    Attached to a ``SupervisedTrainer`` it gives simple adversarial training to an existing pipeline; attached to
    a ``SupervisedEvaluator`` its metrics become robust metrics, so that a ``CheckpointSaver`` on the evaluator's
    key metric keeps the most robust model. All arguments are JSON-friendly for a bundle config::

        "+train#handlers": [{"_target_": "monai_adv.handlers.AdversarialBatchHandler",
                             "attack": "pgd", "attack_kwargs": {"eps": 0.0078, "steps": 10}}]

    Args:
        attack: a registered attack name, or an :class:`~monai_adv.attacks.Attack` (its model is replaced by the
            engine's network at each call).
        attack_kwargs: keyword arguments of a named attack. ``early_stop`` defaults to False (every chosen sample
            is perturbed). ``seed`` defaults to None (PyTorch's global generator); an int seeds each iteration's
            attack, and the samples ``ratio`` chooses, from it and the iteration count, so a resumed run draws
            what the uninterrupted run drew.
        ratio: fraction of each batch replaced (1.0: the whole batch), chosen at random per iteration.
        image_key, label_key: keys of the images and labels in the batch dict.
        network: the network to attack; default ``engine.network`` at each iteration.
    """

    def __init__(
        self,
        attack: Any = "pgd",
        attack_kwargs: Optional[Dict[str, Any]] = None,
        ratio: float = 1.0,
        image_key: str = "image",
        label_key: str = "label",
        network: Optional[Callable] = None,
    ) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"`ratio` must be in (0, 1], got {ratio!r}.")
        if not isinstance(attack, (str, Attack)):
            raise TypeError(f"`attack` must be an attack name or an Attack instance, got {type(attack).__name__}.")
        self.attack, self.ratio = attack, float(ratio)
        if attack_kwargs is not None and not isinstance(attack_kwargs, Mapping):
            raise TypeError(f"`attack_kwargs` must be a dict of keyword arguments, got {type(attack_kwargs).__name__}.")
        if attack_kwargs and isinstance(attack, Attack):
            raise ValueError("`attack_kwargs` only applies when `attack` is a name; configure the Attack instance.")
        if attack_kwargs and "model" in attack_kwargs:
            raise ValueError(
                "`attack_kwargs` must not hold `model`: the handler attacks `network` (default the engine's network)."
            )
        self.attack_kwargs = {"early_stop": False, "seed": None, **(attack_kwargs or {})}
        self.image_key, self.label_key, self.network = image_key, label_key, network
        if isinstance(attack, str):
            make_attack(attack, lambda x: x, **self.attack_kwargs)  # fail now on a bad name or argument

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def _attack(self, network: Callable, iteration: int) -> Attack:
        if isinstance(self.attack, Attack):
            attack = copy.copy(self.attack)  # the caller's instance is left as it was
            attack.model = network
            return attack
        return make_attack(self.attack, network, **{**self.attack_kwargs, "seed": self._iteration_seed(iteration)})

    def _iteration_seed(self, iteration: int) -> Optional[int]:
        """The seed of this iteration (attack and chosen samples): a function of ``seed`` and the iteration only."""
        seed = self.attack_kwargs["seed"]
        return None if seed is None else (int(seed) * 1_000_003 + iteration) % (2**31 - 1)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        if not isinstance(batch, dict):
            raise TypeError(
                f"The batch must be a dict with {self.image_key!r} and {self.label_key!r}, got {type(batch).__name__}."
            )
        for key in (self.image_key, self.label_key):
            if key not in batch:
                raise KeyError(f"The batch has no {key!r} (keys: {list(batch)}).")
        images, labels = batch[self.image_key], batch[self.label_key]
        network = self.network if self.network is not None else engine.network
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            # attack the module: a DDP forward outside training would start collectives the other ranks never join
            network = network.module
        device = getattr(engine.state, "device", None) or images.device
        iteration = int(engine.state.iteration)
        chosen = self._chosen(images.shape[0], self._iteration_seed(iteration))
        x = images[chosen].to(device)
        y = (
            labels[chosen].to(device)
            if isinstance(labels, torch.Tensor)
            else torch.as_tensor(labels)[chosen].to(device)
        )
        x_adv = self._attack(network, iteration)(x, y).to(images.device)
        out = images.clone()
        out[chosen] = x_adv
        batch = dict(batch)
        batch[self.image_key] = out
        engine.state.batch = batch

    def _chosen(self, n: int, seed: Optional[int]) -> Sequence[int]:
        if self.ratio >= 1.0:
            return torch.arange(n)
        k = max(1, int(round(self.ratio * n)))
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=generator)[:k].sort().values
