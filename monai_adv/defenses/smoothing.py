# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Training for randomized smoothing: Gaussian data augmentation at the sigma the model will be certified at."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from monai_adv.attacks import Attack
from monai_adv.attacks.seeding import resolve_seed, sample_generators, sample_keys
from monai_adv.attacks.validation import check_positive
from monai_adv.defenses.objectives import Defense

__all__ = ["GaussianAugmentation", "NOISE_STREAM", "check_sigma", "gaussian_noise"]

#: the per-sample random stream the training noise is drawn from (copy j of the noise: stream NOISE_STREAM + j; see
#: :mod:`monai_adv.attacks.seeding`)
NOISE_STREAM = 1000


def check_sigma(sigma: float, value_range: Optional[Sequence[float]]) -> float:
    """``sigma`` as a float after checking it is finite, > 0 and not more than 10 times the whole value range
    (a unit mistake, e.g. 64 instead of 0.25)."""
    sigma = check_positive(sigma, "sigma")
    if value_range is not None and sigma > 10 * (value_range[1] - value_range[0]):
        raise ValueError(
            f"`sigma`={sigma:g} is more than 10 times the whole `value_range` {tuple(value_range)}: give sigma in the "
            "units of the images (e.g. 0.25 for images in [0, 1])."
        )
    return sigma


def gaussian_noise(
    inputs: torch.Tensor,
    sigma: float,
    seed: Optional[int] = None,
    copy: Union[int, Sequence[int]] = 0,
    keys: Optional[Sequence[bytes]] = None,
) -> torch.Tensor:
    """``sigma`` times standard normal noise shaped as ``inputs`` (N, C, *spatial), in its dtype and on its device,
    each sample's from its own stream: keyed by its content (``keys``, default :func:`sample_keys` of ``inputs``),
    ``seed`` (None: a fresh seed from PyTorch's global generator) and the stream ``NOISE_STREAM + copy`` (``copy``
    numbers independent noise copies: one for the batch, or one per sample)."""
    x = inputs.detach().as_subclass(torch.Tensor)
    if x.shape[0] == 0:
        return torch.zeros_like(x)
    keys = sample_keys(x) if keys is None else list(keys)
    copies = [int(copy)] * x.shape[0] if isinstance(copy, int) else [int(c) for c in copy]
    if len(copies) != x.shape[0] or len(keys) != x.shape[0]:
        raise ValueError(f"`copy` and `keys` must be one per sample of `inputs` ({x.shape[0]}).")
    seed = resolve_seed(seed)
    generators = [sample_generators([k], seed, NOISE_STREAM + c, x.device)[0] for k, c in zip(keys, copies)]
    draws = [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=torch.float32) for g in generators]
    return (torch.stack(draws) * sigma).to(x.dtype)


class GaussianAugmentation(Defense):
    """Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019): the task loss on ``x + N(0, sigma^2 I)``.

    A network is certified by randomized smoothing (:mod:`monai_adv.certify`) through its predictions on noisy
    copies of the input; trained on clean images only it sees such copies for the first time at certification
    and its smoothed classifier abstains or errs. Training on noisy inputs at the ``sigma`` of the certification
    is Cohen et al.'s recipe. The noise is added in the network's input space and **not clipped** to
    ``value_range``, exactly as randomized smoothing adds it (clipping would train on another distribution than
    the one the certificate is about); ``value_range`` only checks that the clean inputs are images of that range.

    Every sample's noise comes from its own random stream (keyed by its content, the call's ``seed`` and
    :data:`NOISE_STREAM`, as the attacks' random starts): it does not depend on the other samples of the batch,
    and :class:`~monai_adv.engines.RobustTrainer` with a ``seed`` draws the same noise when a run is resumed.

    For classification (CE), multi-label (BCE) and segmentation (CE or Dice, 2D and 3D). It returns the logits
    of the noisy inputs as the ``"adversarial"`` output (the inputs the network is trained on; RobustTrainer
    reports their accuracy as ``adversarial_accuracy``) and no clean logits.

    Args:
        sigma: standard deviation of the noise, in the units of the images (e.g. 0.25 for images in [0, 1]);
            use the sigma the model will be certified at.
        value_range: ``(lo, hi)`` of the clean images, or None (e.g. z-scored CT).
        task: "auto", "classification", "multilabel" or "segmentation".
        loss: "ce" (cross-entropy; BCE for multi-label) or "dice" (segmentation).
        eps, steps, alpha, norm: not used (there is no attack); giving one is an error, so that an adversarial
            training configuration switched to this defense does not silently lose its budget.

    Example::

        defense = make_defense("gaussian_aug", sigma=0.25)
        trainer = RobustTrainer(..., defense=defense, seed=0)
    """

    name = "gaussian_aug"

    def __init__(
        self,
        sigma: float = 0.25,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        task: str = "auto",
        loss: str = "ce",
        eps: Optional[float] = None,
        steps: Optional[int] = None,
        alpha: Optional[float] = None,
        norm: Optional[str] = None,
    ) -> None:
        given = [k for k, v in {"eps": eps, "steps": steps, "alpha": alpha, "norm": norm}.items() if v is not None]
        if given:
            raise TypeError(
                f"The {self.name} defense trains on Gaussian noise and runs no attack: it takes `sigma`, not {given} "
                f"(e.g. make_defense('{self.name}', sigma=0.25); in a bundle: "
                f"--defense {self.name} --defense_kwargs \"{{'sigma': 0.25}}\")."
            )
        super().__init__(eps=0.0, steps=1, alpha=0.0, value_range=value_range, task=task, loss=loss)
        self.sigma = check_sigma(sigma, self.value_range)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma:g})"

    def inner_attack(self, network: Callable, seed: Optional[int] = None) -> Optional[Attack]:
        return None

    def noise(self, inputs: torch.Tensor, seed: Optional[int] = None) -> torch.Tensor:
        """The training noise of ``inputs`` for ``seed`` (see :func:`gaussian_noise`)."""
        return gaussian_noise(inputs, self.sigma, seed)

    def objective(self, network, inputs, targets):
        logits = network(inputs + self.noise(inputs, self.seed))
        return self._criterion(logits, targets), {"clean": None, "adversarial": logits}
