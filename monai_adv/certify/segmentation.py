# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Certified segmentation by randomized smoothing (Fischer et al., ICML 2021): per-voxel tests with abstain.

Every voxel v of an image is a smoothed classifier of its own, ``g_v(x) = argmax_c P(f_v(x + noise) = c)``. To
certify the image at an L2 radius r, each voxel tests whether its selected class has probability
``p_v > tau = Phi(r / sigma)`` under the noise (an exact one-sided binomial test), and the tests of one image are
corrected for their multiplicity (Holm or Bonferroni), so that with probability at least ``1 - alpha`` no voxel of
the image is certified wrongly. A voxel that is not certified gets ``ABSTAIN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from scipy import stats

from monai_adv.certify.certificates import ABSTAIN, as_label_tensor, as_radii
from monai_adv.certify.statistics import CORRECTIONS, one_sided_pvalues, reject, two_sided_pvalues

__all__ = ["SegmentationCertificate", "certify_segmentation", "predict_segmentation", "certified_dice"]


def _check_correction(correction: Any) -> str:
    if not isinstance(correction, str) or correction.lower() not in CORRECTIONS:
        raise ValueError(f"`correction` must be one of {list(CORRECTIONS)}, got {correction!r}.")
    return correction.lower()


def certified_dice(
    label_map: torch.Tensor, y: torch.Tensor, num_classes: int, include_background: bool = False
) -> torch.Tensor:
    """Per-image certified Dice (N,) float64 of a label map with ``ABSTAIN`` voxels against the index map ``y``.

    A lower bound on the Dice of any prediction that agrees with ``label_map`` on its certified voxels: each
    abstained voxel counts against every class, as the worst case of what it could become - a miss of its true
    class and a false positive of each other class. For class ``c`` with ``P_c`` = voxels certified as c plus
    abstained voxels whose true class is not c, and ``G_c`` = voxels of class c, the Dice is
    ``2 |P_c & G_c| / (|P_c| + |G_c|)``, the smallest any completion of the abstained voxels gives; classes absent
    from both are left out of the mean, and an image with no class present scores 1. Without abstained voxels it
    is the ordinary hard Dice. An image without lesion thus scores 0 as soon as one voxel abstains: abstaining
    never raises the certified Dice.

    Args:
        label_map: int64 (N, *spatial), classes or ``ABSTAIN``.
        y: int64 (N, *spatial) true classes.
        num_classes: the number of classes (2 for a single binary logit).
        include_background: average over class 0 too.
    """
    pred, labels = label_map.flatten(1), y.flatten(1)
    abstained = pred == ABSTAIN
    total = torch.zeros(pred.shape[0], dtype=torch.float64)
    count = torch.zeros_like(total)
    for c in range(0 if include_background else 1, num_classes):
        g = labels == c
        p = (pred == c) | (abstained & ~g)
        denom = (p.sum(dim=1) + g.sum(dim=1)).double()
        present = denom > 0
        total += torch.where(present, 2 * (p & g).sum(dim=1).double() / denom.clamp_min(1), 0.0)
        count += present.double()
    return torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total))


@dataclass
class SegmentationCertificate:
    """Per-voxel certificates of a smoothed segmentation network for a batch of images.

    It keeps, per voxel, the class selected from ``n0`` noise draws and how often the network voted for it in ``n``
    further draws, so the label map can be certified at any radius afterwards. At radius r (input units, L2):
    ``tau = Phi(r / sigma)``; voxel v is certified when the exact one-sided binomial test rejects ``p_v <= tau``
    after the image's multiple-testing correction (``correction``, over all the image's voxels).

    What is guaranteed, for one radius r: with probability at least ``1 - alpha`` over the noise draws, every
    voxel of the image certified at r (not ``ABSTAIN`` in ``label_map(r)``) has its smoothed class equal to the
    certified class at every input within L2 distance r of the image. It is a statement about the smoothed network,
    not about the truth of the label, and each radius is its own statement at level ``alpha``.

    Attributes:
        prediction: int64 (N, *spatial): the class selected per voxel (the most frequent in the ``n0`` draws).
        counts: int64 (N, *spatial): votes for that class among the ``n`` estimation draws.
        sigma, n0, n, alpha: the settings of the certification.
        correction: "holm" (Holm's step-down, the default) or "bonferroni", over the voxels of each image.
        num_classes: the number of classes (2 for a single binary logit).

    All tensors are on the CPU.
    """

    prediction: torch.Tensor
    counts: torch.Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    correction: str = "holm"
    num_classes: int = 2

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def task(self) -> str:
        return "segmentation"

    def tau(self, radius: float) -> float:
        """The probability ``Phi(radius / sigma)`` a voxel's class must exceed to be certified at ``radius``."""
        return float(stats.norm.cdf(as_radii(radius)[0] / self.sigma))

    def certified_mask(self, radius: float = 0.0, correction: Optional[str] = None) -> torch.Tensor:
        """bool (N, *spatial): the voxels certified at ``radius`` (``correction`` overrides the certificate's)."""
        correction = _check_correction(self.correction if correction is None else correction)
        counts = self.counts.reshape(len(self), -1).numpy()
        pvalues = one_sided_pvalues(counts, self.n, self.tau(radius))
        return torch.from_numpy(reject(pvalues, self.alpha, correction)).reshape(self.prediction.shape)

    def label_map(self, radius: float = 0.0, correction: Optional[str] = None) -> torch.Tensor:
        """int64 (N, *spatial): the certified class of each voxel at ``radius``, ``ABSTAIN`` where not certified."""
        mask = self.certified_mask(radius, correction)
        return torch.where(mask, self.prediction, torch.full_like(self.prediction, ABSTAIN))

    def certified_fraction(self, radii: Any, correction: Optional[str] = None) -> torch.Tensor:
        """float64 (N, len(radii)): the fraction of each image's voxels certified at each radius."""
        radii = as_radii(radii)
        out = torch.zeros((len(self), len(radii)), dtype=torch.float64)
        for j, r in enumerate(radii):
            out[:, j] = self.certified_mask(r, correction).flatten(1).double().mean(dim=1)
        return out

    def certified_dice(
        self, y: Any, radii: Any, include_background: bool = False, correction: Optional[str] = None
    ) -> torch.Tensor:
        """float64 (N, len(radii)): each image's certified Dice at each radius, abstained voxels counted wrong.

        See :func:`certified_dice` for how abstained voxels count.

        Args:
            y: the true label map: (N, *spatial), (N, 1, *spatial), or one-hot (N, num_classes, *spatial).
            radii: a radius or a sequence of radii.
            include_background: average over class 0 too (default: the foreground classes only).
            correction: override the certificate's correction.
        """
        labels = self._labels(y)
        radii = as_radii(radii)
        out = torch.zeros((len(self), len(radii)), dtype=torch.float64)
        for j, r in enumerate(radii):
            out[:, j] = certified_dice(self.label_map(r, correction), labels, self.num_classes, include_background)
        return out

    def certified_accuracy(self, y: Any, radii: Any, correction: Optional[str] = None) -> torch.Tensor:
        """float64 (N, len(radii)): the fraction of each image's voxels certified at r with the true class."""
        labels = self._labels(y)
        radii = as_radii(radii)
        out = torch.zeros((len(self), len(radii)), dtype=torch.float64)
        for j, r in enumerate(radii):
            out[:, j] = (self.label_map(r, correction) == labels).flatten(1).double().mean(dim=1)
        return out

    def to_rows(self, y: Optional[Any] = None, radii: Sequence[float] = (0.0,)) -> List[Dict[str, Any]]:
        """One JSON-serializable dict per image: index, voxels, radii, certified fraction per radius (and certified
        Dice and voxel accuracy per radius when ``y`` is given)."""
        radii = as_radii(radii)
        fraction = self.certified_fraction(radii)
        dice = accuracy = None
        if y is not None:
            dice, accuracy = self.certified_dice(y, radii), self.certified_accuracy(y, radii)
        voxels = int(np.prod(self.prediction.shape[1:]))
        rows = []
        for i in range(len(self)):
            row: Dict[str, Any] = {
                "index": i,
                "voxels": voxels,
                "radii": radii,
                "certified_fraction": fraction[i].tolist(),
            }
            if dice is not None:
                row["certified_dice"] = dice[i].tolist()
                row["certified_accuracy"] = accuracy[i].tolist()
            rows.append(row)
        return rows

    def _labels(self, y: Any) -> torch.Tensor:
        y = as_label_tensor(y)
        shape = tuple(self.prediction.shape)
        if tuple(y.shape) == shape:
            return y
        if y.ndim == len(shape) + 1 and tuple(y.shape[:1] + y.shape[2:]) == shape:
            if y.shape[1] == 1:
                return y[:, 0]
            if y.shape[1] == self.num_classes and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all()):
                return y.argmax(dim=1)
        raise ValueError(
            f"`y` must be a label map {shape}, (N, 1, *spatial) or one-hot (N, {self.num_classes}, *spatial) "
            f"matching the certificate, got {tuple(y.shape)}."
        )


def certify_segmentation(
    counts0: torch.Tensor,
    counts: torch.Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    correction: str = "holm",
) -> SegmentationCertificate:
    """The certificate from the vote counts (N, classes, *spatial) of the selection and the estimation draws."""
    correction = _check_correction(correction)
    prediction = counts0.cpu().long().argmax(dim=1)
    top = counts.cpu().long().gather(1, prediction[:, None])[:, 0]
    return SegmentationCertificate(prediction, top, sigma, n0, n, alpha, correction, int(counts.shape[1]))


def predict_segmentation(counts: torch.Tensor, alpha: float, correction: str = "holm") -> torch.Tensor:
    """Per voxel, the most frequent class, or ``ABSTAIN`` unless the two-sided binomial test between the two most
    frequent classes rejects their equality after the image's multiple-testing correction at level ``alpha``.

    Args:
        counts: votes (N, classes, *spatial) of ``n`` noise draws.

    Returns:
        int64 (N, *spatial) on the CPU.
    """
    correction = _check_correction(correction)
    counts = counts.cpu().long()
    num = counts.shape[0]
    top = counts.topk(2, dim=1)
    pvalues = two_sided_pvalues(top.values[:, 0].reshape(num, -1).numpy(), top.values[:, 1].reshape(num, -1).numpy())
    keep = torch.from_numpy(reject(pvalues, alpha, correction)).reshape(top.indices[:, 0].shape)
    return torch.where(keep, top.indices[:, 0], torch.full_like(top.indices[:, 0], ABSTAIN))
