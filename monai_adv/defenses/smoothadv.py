# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""SmoothAdv (Salman et al. 2019): adversarial training of the smoothed soft classifier, built on our L2 PGD."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_adv.attacks import PGD, Attack
from monai_adv.attacks.validation import check_int
from monai_adv.defenses.objectives import Defense, _unwrap
from monai_adv.defenses.smoothing import check_sigma, gaussian_noise

__all__ = ["SmoothAdv", "SmoothedSoftClassifier"]


class SmoothedSoftClassifier(nn.Module):
    """The soft smoothed classifier of a network over fixed noise copies, as log-probabilities:
    ``log (1/m) sum_j softmax(network(x + noise_j))``.

    Its outputs are valid logits (they are already log-normalised), so the cross-entropy of an attack on it is
    SmoothAdv's objective ``-log (1/m) sum_j softmax(network(x + noise_j))_y``. The noise is fixed for one batch
    (Salman et al. reuse the same m noise vectors at every attack step): ``x`` must have the batch's shape.

    Args:
        network: the classifier (logits (N, K)).
        noise: (m, N, C, *spatial): m noise copies of the batch.
    """

    def __init__(self, network: Callable, noise: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies = self.noise.shape[0]
        if tuple(x.shape) != tuple(self.noise.shape[1:]):
            raise ValueError(
                f"The soft classifier holds noise for inputs {tuple(self.noise.shape[1:])}, got {tuple(x.shape)}."
            )
        noisy = (x.unsqueeze(0) + self.noise.to(x.dtype)).reshape(copies * x.shape[0], *x.shape[1:])
        logits = self.network(noisy)
        if logits.ndim != 2:
            raise ValueError(
                f"SmoothAdv is defined for classification (logits (N, K)), got outputs of shape {tuple(logits.shape)}."
            )
        probs = F.softmax(logits.float(), dim=1).reshape(copies, x.shape[0], -1).mean(dim=0)
        return torch.log(probs.clamp_min(1e-20)).to(logits.dtype)


class SmoothAdv(Defense):
    """SmoothAdv (Salman et al., NeurIPS 2019, "Provably robust deep learning via adversarially trained smoothed
    classifiers"): train on adversarial examples of the smoothed soft classifier, with Gaussian noise.

    Per batch: draw ``m`` noise copies ``noise_j ~ N(0, sigma^2 I)`` per sample (the sample's own streams, as
    :class:`~monai_adv.defenses.GaussianAugmentation`); run L2 PGD (``steps`` normalised-gradient steps of
    ``alpha``, default ``2 eps / steps``, from x without a random start, projected onto the eps-ball and
    ``value_range``) on the cross-entropy of the soft smoothed classifier :class:`SmoothedSoftClassifier` with
    those copies; train on the cross-entropy of the network at ``x_adv + noise_j`` for every copy (the same noise,
    as in the paper's "SmoothAdv_PGD"). The attack is an ordinary :class:`~monai_adv.attacks.PGD` of
    :mod:`monai_adv.attacks` (eval view of the network, exact budget, no host synchronisation).

    Classification only. ``eps`` is an L2 budget in input units (the paper uses 0.25 to 2 on CIFAR-10 at
    sigma 0.12 to 1); the noise is not clipped to ``value_range``, the adversarial point is. The ``"adversarial"``
    output is the soft smoothed classifier's log-probabilities at ``x_adv`` (N, K), no clean logits.

    Args:
        sigma: the noise standard deviation (input units), the sigma of the certification.
        eps: the L2 budget of the attack on the smoothed classifier.
        steps: PGD steps (1 or 2 already help in the paper; 10 at most).
        alpha: the PGD step; default ``2 * eps / steps`` (the paper's).
        m: noise copies per sample for the attack and the loss (1 to 8 in the paper).
        value_range: ``(lo, hi)`` of the images, or None.
        task: "auto" or "classification".
        norm: "L2" only (the certificate's norm).
    """

    name = "smoothadv"
    tasks = ("classification",)

    def __init__(
        self,
        sigma: float = 0.25,
        eps: float = 0.5,
        steps: int = 1,
        alpha: Optional[float] = None,
        m: int = 1,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        task: str = "auto",
        norm: str = "L2",
    ) -> None:
        if not isinstance(norm, str) or norm.strip().lower() not in ("l2", "2"):
            raise ValueError(f"SmoothAdv attacks in the L2 norm of the certificate: `norm` must be 'L2', got {norm!r}.")
        steps = check_int(steps, "steps")
        super().__init__(eps=eps, steps=steps, alpha=alpha, norm="L2", value_range=value_range, task=task)
        if alpha is None:
            self.alpha = 2 * self.eps / self.steps
        self.sigma = check_sigma(sigma, self.value_range)
        self.m = check_int(m, "m")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma={self.sigma:g}, eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g}, "
            f"m={self.m})"
        )

    def noise_copies(self, inputs: torch.Tensor, seed: Optional[int] = None) -> torch.Tensor:
        """(m, N, C, *spatial): the ``m`` noise copies of the batch for ``seed`` (copy j from the stream of copy j,
        see :func:`~monai_adv.defenses.smoothing.gaussian_noise`)."""
        return torch.stack([gaussian_noise(inputs, self.sigma, seed, copy=j) for j in range(self.m)])

    def inner_attack(
        self, network: Callable, seed: Optional[int] = None, noise: Optional[torch.Tensor] = None
    ) -> Optional[Attack]:
        """L2 PGD on the soft smoothed classifier of ``network`` with the fixed noise copies ``noise``
        (:meth:`noise_copies` of the batch to attack)."""
        if noise is None:
            raise ValueError("SmoothAdv's attack runs on fixed noise copies: pass noise=defense.noise_copies(x, seed).")
        soft = SmoothedSoftClassifier(_unwrap(network), noise)
        return self._training_attack(PGD, soft, seed, steps=self.steps, random_start=False, task="classification")

    def objective(self, network, inputs, targets):
        n = inputs.shape[0]
        if torch.as_tensor(targets).ndim > 1 and torch.as_tensor(targets).shape[1] > 1:
            raise ValueError("SmoothAdv is defined for classification (class indices (N,)), not multi-hot or maps.")
        noise = self.noise_copies(inputs, self.seed)
        x_adv = self.inner_attack(network, self.seed, noise)(inputs.detach(), targets).detach()
        logits = network((x_adv.unsqueeze(0) + noise).reshape(self.m * n, *inputs.shape[1:]))  # row j * N + i
        labels = self._check_classification(logits[:n], targets)
        loss = F.cross_entropy(logits, labels.repeat(self.m))
        with torch.no_grad():
            soft = F.softmax(logits.detach().float(), dim=1).reshape(self.m, inputs.shape[0], -1).mean(dim=0)
        return loss, {"clean": None, "adversarial": torch.log(soft.clamp_min(1e-20))}
