# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""An ignite handler that puts adversarial examples into the batches of any MONAI trainer or evaluator."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch
from monai.inferers import SimpleInferer
from monai.transforms import Randomizable
from monai.utils import min_version, optional_import

from monai_adv.attacks import Attack, InfererModel, attack_arguments, make_attack

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["AdversarialBatchHandler"]

_MAX_SEED = 2**31 - 1  # the attacks take any int; the iteration seeds stay in this range


class AdversarialBatchHandler(Randomizable):
    """At ``ITERATION_STARTED``, replace the images of ``engine.state.batch`` (all, or a ``ratio`` of them) by
    adversarial examples against the engine's network (or ``network``), run the way the engine runs it.

    Attached to a ``SupervisedTrainer`` it gives simple adversarial training to an existing pipeline; attached to
    a ``SupervisedEvaluator`` its metrics become robust metrics, so that a ``CheckpointSaver`` on the evaluator's
    key metric keeps the most robust model. All arguments are JSON-friendly for a bundle config::

        "+train#handlers": [{"_target_": "monai_adv.handlers.AdversarialBatchHandler",
                             "attack": "pgd", "attack_kwargs": {"eps": 0.0078, "steps": 10}}]

    The attack runs through the engine's inferer: when ``engine.inferer`` is not a plain ``SimpleInferer`` (e.g.
    a ``SlidingWindowInferer``), the handler attacks ``InfererModel(network, engine.inferer)``, so the gradients
    are those of the windows the engine computes its loss or metrics on. A ``DistributedDataParallel`` or
    ``DataParallel`` network is attacked through its module (an attack must not start collectives).

    Randomness follows MONAI's :class:`~monai.transforms.Randomizable`: the samples ``ratio`` chooses and, when
    no ``seed`` is given, each iteration's attack seed are drawn from ``self.R``, a ``numpy.random.RandomState``
    that :meth:`set_random_state` seeds (``handler.set_random_state(seed=0)``; it returns the handler). By
    default ``self.R`` is seeded from PyTorch's global generator at construction, as MONAI's ``DataLoader`` seeds
    its transforms, so ``monai.utils.set_determinism(seed)`` before building the handler fixes its draws too. A
    ``seed`` in ``attack_kwargs`` takes precedence: each iteration's attack seed and chosen samples are then a
    function of that seed and the iteration count only, so a run resumed from a checkpoint draws what the
    uninterrupted run drew (``self.R`` is not used).

    Args:
        attack: a registered attack name, or an :class:`~monai_adv.attacks.Attack`. An instance is never changed:
            each iteration attacks with a copy whose model is the engine's network (and whose seed, when the
            instance has ``seed=None``, is drawn from ``self.R``).
        attack_kwargs: keyword arguments of a named attack. ``early_stop`` defaults to False (every chosen sample
            is perturbed) for the attacks that take it. ``seed`` defaults to None (drawn from ``self.R`` per
            iteration); an int seeds each iteration's attack, and the samples ``ratio`` chooses, from it and the
            iteration count.
        ratio: fraction of each batch replaced (1.0: the whole batch), chosen at random per iteration.
        image_key: key of the images in the batch dict.
        label_key: key of the labels in the batch dict.
        network: the network to attack; default ``engine.network`` at each iteration. It is run through the
            engine's inferer like the engine's own network.
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
        self.attack_kwargs = {"seed": None, **(attack_kwargs or {})}
        if isinstance(attack, str) and "early_stop" in attack_arguments(attack):  # (AutoAttack takes none)
            self.attack_kwargs.setdefault("early_stop", False)
        self.image_key, self.label_key, self.network = image_key, label_key, network
        if isinstance(attack, str):
            make_attack(attack, lambda x: x, **self.attack_kwargs)  # fail now on a bad name or argument
        # seeded from PyTorch's global generator, as monai.data.DataLoader seeds its Randomizable transforms
        self.set_random_state(seed=int(torch.empty((), dtype=torch.int64).random_().item()))
        self._chosen: Optional[torch.Tensor] = None
        self._seed: Optional[int] = None

    def attach(self, engine: Engine) -> None:
        """Run at every ``ITERATION_STARTED`` of ``engine`` (attaching the same handler again adds nothing)."""
        if not engine.has_event_handler(self, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def randomize(self, data: int) -> None:
        """Draw this iteration's chosen samples (of ``data`` samples) and attack seed from ``self.R``."""
        self._chosen = None
        if self.ratio < 1.0:
            self._chosen = torch.as_tensor(np.sort(self.R.permutation(data)[: self._num_chosen(data)]))
        self._seed = int(self.R.randint(_MAX_SEED))

    def _num_chosen(self, n: int) -> int:
        return max(1, int(round(self.ratio * n)))

    def _attack(self, model: Callable, seed: Optional[int]) -> Attack:
        if isinstance(self.attack, Attack):
            attack = copy.copy(self.attack)  # the caller's instance is left as it was
            attack.model = model
            if attack.seed is None:
                attack.seed = seed
            return attack
        return make_attack(self.attack, model, **{**self.attack_kwargs, "seed": seed})

    def _iteration_seed(self, iteration: int) -> Optional[int]:
        """The seed of this iteration (attack and chosen samples): a function of ``seed`` and the iteration only."""
        seed = self.attack_kwargs["seed"]
        return None if seed is None else (int(seed) * 1_000_003 + iteration) % _MAX_SEED

    @staticmethod
    def _model(network: Callable, engine: Engine) -> Callable:
        """The network as the engine runs it: through its inferer unless that is a plain ``SimpleInferer``."""
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            # attack the module: a DDP forward outside training would start collectives the other ranks never join
            network = network.module
        inferer = getattr(engine, "inferer", None)
        if inferer is None or type(inferer) is SimpleInferer:
            return network
        return InfererModel(network, inferer)

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
        n = images.shape[0]
        seed = self._iteration_seed(int(engine.state.iteration))
        if seed is None:
            self.randomize(n)
            chosen, seed = self._chosen, self._seed
        else:  # resume-safe: a function of the user's seed and the iteration only
            chosen = None
            if self.ratio < 1.0:
                generator = torch.Generator().manual_seed(seed)
                chosen = torch.randperm(n, generator=generator)[: self._num_chosen(n)].sort().values
        if chosen is None:
            chosen = torch.arange(n)
        network = self.network if self.network is not None else engine.network
        device = getattr(engine.state, "device", None) or images.device
        x = images[chosen].to(device)
        y = (
            labels[chosen].to(device)
            if isinstance(labels, torch.Tensor)
            else torch.as_tensor(labels)[chosen].to(device)
        )
        x_adv = self._attack(self._model(network, engine), seed)(x, y).to(images.device)
        out = images.clone()
        out[chosen] = x_adv
        batch = dict(batch)
        batch[self.image_key] = out
        engine.state.batch = batch
