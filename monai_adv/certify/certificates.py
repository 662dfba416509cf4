# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Certificates of classification and multi-label randomized smoothing, and the certified accuracy curve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

__all__ = ["ABSTAIN", "Certificate", "as_radii", "as_label_tensor"]

#: the prediction of a smoothed classifier that declines to answer (not confident enough at level alpha)
ABSTAIN = -1


def as_radii(radii: Any) -> List[float]:
    """``radii`` (a number or a sequence of numbers) as a list of finite floats >= 0."""
    values = [radii] if isinstance(radii, (int, float)) else list(radii)
    out = []
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 0 or r == float("inf"):
            raise ValueError(f"`radii` must hold finite numbers >= 0, got {r!r}.")
        out.append(float(r))
    return out


def as_label_tensor(y: Any, name: str = "y") -> torch.Tensor:
    """Labels (tensor, numpy array or sequence) as a plain int64 CPU tensor of whole numbers."""
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception as e:
            raise TypeError(f"`{name}` must be a tensor or array of labels, got {type(y).__name__}.") from e
    y = y.detach().as_subclass(torch.Tensor).cpu()
    if y.is_floating_point() and (not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all())):
        raise ValueError(f"`{name}` must hold whole-number labels.")
    return y.long()


@dataclass
class Certificate:
    """The certificate of a smoothed classifier (Cohen et al. 2019) for a batch, or of each label (multi-label).

    What is guaranteed: for a sample with ``prediction`` c != ABSTAIN and ``radius`` R, with probability at least
    ``1 - alpha`` over the noise draws of the certification, the smoothed classifier
    ``g(x') = argmax_c P(f(x' + N(0, sigma^2 I)) = c)`` predicts c at every x' with ``||x' - x||_2 < R``. R is in
    the units of the network's input (the space the noise was added in). The guarantee is about the smoothed
    classifier g, not the base network f, and it says nothing about whether c is the right class.

    Multi-label: each of the K labels is a binary smoothed classifier (label on when its logit > 0), certified at
    level ``alpha / K`` (Bonferroni), so with probability at least ``1 - alpha`` every non-abstained label of the
    sample holds its value within its own radius, all at once.

    Attributes:
        prediction: int64 (N,) class, or (N, K) 0/1 per label for multi-label; ``ABSTAIN`` where not certified.
        radius: float64 of the shape of ``prediction``: certified L2 radius, 0.0 where abstained.
        p_lower: float64 of the same shape: the one-sided Clopper-Pearson lower bound on the probability of the
            predicted class (label value) under noise, at level ``alpha`` (``alpha / K`` for multi-label).
        counts: int64 of the same shape: votes for the selected class (label value) among the ``n`` draws.
        sigma, n0, n, alpha: the settings of the certification.
        task: "classification" or "multilabel".
        num_classes: classes (2 for a single binary logit) or labels.

    All tensors are on the CPU.
    """

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    counts: torch.Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    task: str = "classification"
    num_classes: int = 2

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> torch.Tensor:
        """bool (N,): the sample's prediction abstained (multi-label: at least one label abstained)."""
        abstain = self.prediction == ABSTAIN
        return abstain.any(dim=1) if self.task == "multilabel" else abstain

    @property
    def sample_radius(self) -> torch.Tensor:
        """float64 (N,): the radius of each sample; for multi-label the smallest over its labels (0 if one abstains)."""
        if self.task == "multilabel":
            if self.radius.shape[1] == 0:
                return torch.zeros(len(self), dtype=self.radius.dtype)
            return self.radius.min(dim=1).values
        return self.radius

    def correct(self, y: Any) -> torch.Tensor:
        """bool (N,): the sample is predicted right (multi-label: every label right and none abstained)."""
        y = self._labels(y)
        if self.task == "multilabel":
            return (self.prediction == y).all(dim=1)
        return self.prediction == y

    def certified_accuracy(self, y: Any, radii: Any) -> List[float]:
        """The certified accuracy at each radius: the fraction of samples predicted right with a radius >= r.

        Multi-label: a sample counts at r when every label is predicted right and certified at r, i.e. when its
        smallest radius over the labels is >= r.

        Args:
            y: labels: class indices (N,) (or (N, 1)); multi-hot (N, K) for multi-label.
            radii: a radius or a sequence of radii, in input units.

        Returns:
            one float in [0, 1] per radius (0.0 for each when there is no sample).
        """
        radii = as_radii(radii)
        correct = self.correct(y)
        if len(self) == 0:
            return [0.0 for _ in radii]
        radius = self.sample_radius
        return [float((correct & (radius >= r)).double().mean()) for r in radii]

    def to_rows(self, y: Optional[Any] = None) -> List[Dict[str, Any]]:
        """One JSON-serializable dict per sample: index, prediction, radius, p_lower, count, abstained (and the label
        and whether the prediction is right when ``y`` is given). Multi-label entries hold one value per label, and
        ``radius_min`` the sample's smallest radius."""
        labels = None if y is None else self._labels(y)
        correct = None if y is None else self.correct(y)
        abstained = self.abstained
        rows = []
        for i in range(len(self)):
            row: Dict[str, Any] = {
                "index": i,
                "prediction": self.prediction[i].tolist(),
                "radius": self.radius[i].tolist(),
                "p_lower": self.p_lower[i].tolist(),
                "count": self.counts[i].tolist(),
                "abstained": bool(abstained[i]),
            }
            if self.task == "multilabel":
                row["radius_min"] = float(self.sample_radius[i])
            if labels is not None:
                row["label"] = labels[i].tolist()
                row["correct"] = bool(correct[i])
            rows.append(row)
        return rows

    def _labels(self, y: Any) -> torch.Tensor:
        y = as_label_tensor(y)
        n = len(self)
        if self.task == "multilabel":
            if tuple(y.shape) != tuple(self.prediction.shape):
                raise ValueError(
                    f"`y` must be multi-hot labels of shape {tuple(self.prediction.shape)}, got {tuple(y.shape)}."
                )
            return y
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if tuple(y.shape) != (n,):
            raise ValueError(f"`y` must be class indices of shape ({n},), got {tuple(y.shape)}.")
        return y
