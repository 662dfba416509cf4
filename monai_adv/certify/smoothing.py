# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): PREDICT and CERTIFY for any network of logits.

The smoothed classifier of a base network f is ``g(x) = argmax_c P(f(x + eps) = c)``, eps ~ N(0, sigma^2 I). If the
most likely class has probability at least p_A, g is constant within the L2 ball of radius
``sigma * Phi^-1(p_A)`` around x. CERTIFY selects the class from ``n0`` noise draws, bounds its probability from
below with a one-sided Clopper-Pearson interval from ``n`` further draws, and returns the radius of the bound
(or abstains when the bound is not above 1/2). PREDICT returns the most frequent class of ``n`` draws when a
two-sided binomial test tells it apart from the runner-up at level alpha, else abstains.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import torch

from monai_adv.attacks.guard import model_dtype, model_state_guard
from monai_adv.attacks.seeding import resolve_seed, sample_generators, sample_keys
from monai_adv.attacks.validation import check_choice, check_input, check_int, check_positive
from monai_adv.certify.certificates import ABSTAIN, Certificate
from monai_adv.certify.sampling import SMOOTHING_TASKS, VoteCounter
from monai_adv.certify.segmentation import SegmentationCertificate, certify_segmentation, predict_segmentation
from monai_adv.certify.statistics import CORRECTIONS, lower_confidence_bound, radius_from_bound, two_sided_pvalue

__all__ = ["RandomizedSmoothing"]

#: stream numbers of the per-sample generators: the draws of PREDICT, of CERTIFY's selection and estimation
PREDICT_STREAM, SELECTION_STREAM, ESTIMATION_STREAM = 0, 1, 2


def check_alpha(alpha: Any) -> float:
    """Return ``alpha`` as a float after checking it is in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"`alpha` must be a number in (0, 1), got {type(alpha).__name__}.")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}.")
    return alpha


class RandomizedSmoothing:
    """The Gaussian smoothing of a network, with Cohen et al.'s PREDICT and CERTIFY, for every task of the project.

    - classification (binary or multi-class): the smoothed class of each sample and its certified L2 radius;
    - multi-label: each label as a binary smoothed classifier (on when its logit is > 0), at level ``alpha / K``
      over the K labels (Bonferroni), so the sample's guarantee holds for all labels at once;
    - segmentation (2D or 3D): each voxel as a smoothed classifier, certified with an abstain label and a
      multiple-testing correction over the image's voxels (Fischer et al., ICML 2021), see
      :class:`SegmentationCertificate`.

    The noise ``sigma * N(0, I)`` is added in the network's input space and never clipped to a value range (as in
    the paper): ``sigma`` and every radius are in input units, e.g. for images scaled to [0, 1], ``sigma=0.25`` is a
    quarter of the intensity range. The network sees values outside the range; train it with the same noise (a
    network trained on clean images only is rarely certified at useful radii).

    The network runs in eval mode under ``torch.inference_mode`` through an eval view that leaves it exactly as it
    was (:func:`monai_adv.attacks.model_state_guard`): parameters, buffers, ``training`` and ``requires_grad`` flags.
    Each sample's noise comes from its own random streams, keyed by its content and ``seed`` (separate streams for
    PREDICT, for CERTIFY's selection draws and its estimation draws), drawn on x's device: a sample's result is the
    same in any batch and at any position, and the same on every run with the same seed on one device.

    Args:
        network: any callable mapping a batch (N, C, *spatial) to logits: (N, K) classification or multi-label
            (a single logit (N, 1) is a binary classifier, class 1 when the logit is > 0), (N, K, *spatial)
            segmentation; e.g. ``InfererModel(unet, SlidingWindowInferer(...))`` for 3D volumes.
        sigma: the noise standard deviation, in input units (> 0).
        num_classes: the number of classes (labels for multi-label) the network must return; None accepts the
            network's. A single logit counts as 2 classes.
        task: "auto" (classification for (N, K) logits, segmentation for (N, K, *spatial)), "classification",
            "binary", "multiclass", "multilabel" (never inferred: multi-label logits look like classification
            logits) or "segmentation".
        batch_size: at most this many noisy copies per network call (bounds memory; 3D volumes need small ones).
        seed: the seed of the noise; None draws one from PyTorch's global generator per call.
        correction: the multiple-testing correction over the voxels of an image for segmentation, "holm" (Holm's
            step-down, never certifies less than Bonferroni) or "bonferroni".
        check_outputs: raise when the network's outputs look like probabilities (all in [0, 1], summing to 1 over
            the classes for a softmax); pass False for a network whose logits really all lie in [0, 1].

    Example::

        rs = RandomizedSmoothing(network, sigma=0.25)
        cert = rs.certify(images, n0=100, n=100_000, alpha=0.001)
        cert.certified_accuracy(labels, radii=[0.0, 0.25, 0.5])
    """

    def __init__(
        self,
        network: Callable,
        sigma: float,
        num_classes: Optional[int] = None,
        task: str = "auto",
        batch_size: int = 1000,
        seed: Optional[int] = 0,
        correction: str = "holm",
        check_outputs: bool = True,
    ) -> None:
        if not callable(network):
            raise TypeError(f"`network` must be a callable returning logits, got {type(network).__name__}.")
        self.network = network
        self.sigma = check_positive(sigma, "sigma")
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        self.task = check_choice(task, "task", SMOOTHING_TASKS)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"`seed` must be an integer or None, got {type(seed).__name__}.")
        self.seed = seed
        self.correction = check_choice(correction, "correction", CORRECTIONS)
        self.check_outputs = bool(check_outputs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma={self.sigma}, task={self.task!r}, num_classes={self.num_classes}, "
            f"batch_size={self.batch_size}, seed={self.seed}, correction={self.correction!r})"
        )

    # ---- the two procedures ------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, n: int, alpha: float = 0.001) -> torch.Tensor:
        """Cohen et al.'s PREDICT: the smoothed prediction, or ``ABSTAIN``, from ``n`` noise draws per sample.

        What is guaranteed: the probability that a returned class (label value, voxel class) differs from the
        smoothed classifier's is at most ``alpha`` (per sample; over all labels of a multi-label sample, the test of
        each label at ``alpha / K``; over all voxels of an image, with the correction).

        Args:
            x: float tensor (N, C, *spatial), 1 to 3 spatial dims, finite.
            n: noise draws per sample.
            alpha: the error level of the test, in (0, 1).

        Returns:
            int64 on x's device: classification (N,) classes; multi-label (N, K) 0/1; segmentation (N, *spatial)
            classes; ``ABSTAIN`` (-1) where the test does not tell the top value from the runner-up.
        """
        n = check_int(n, "n", 1)
        alpha = check_alpha(alpha)
        x = check_input(x, None)
        task, counts = self._counts(x, ((n, PREDICT_STREAM),))
        counts = counts[0]
        if task == "segmentation":
            return predict_segmentation(counts, alpha, self.correction).to(x.device)
        counts = counts.cpu().long()
        if task == "multilabel":
            on, labels = counts, counts.shape[1]
            votes = torch.where(2 * on > n, 1, 0)
            out = torch.full_like(on, ABSTAIN)
            for i in range(on.shape[0]):
                for j in range(labels):
                    if two_sided_pvalue(int(on[i, j]), n - int(on[i, j])) <= alpha / labels:
                        out[i, j] = votes[i, j]
            return out.to(x.device)
        out = torch.full((counts.shape[0],), ABSTAIN, dtype=torch.long)
        if counts.shape[0]:
            top = counts.topk(2, dim=1)
            for i in range(counts.shape[0]):
                if two_sided_pvalue(int(top.values[i, 0]), int(top.values[i, 1])) <= alpha:
                    out[i] = top.indices[i, 0]
        return out.to(x.device)

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        correction: Optional[str] = None,
    ) -> Union[Certificate, SegmentationCertificate]:
        """Cohen et al.'s CERTIFY (per voxel for segmentation): the smoothed prediction and its certified L2 radius.

        The class (label value, voxel class) is the most frequent in ``n0`` selection draws; the one-sided
        ``1 - alpha`` Clopper-Pearson lower bound p_lower of its probability comes from ``n`` further, independent
        draws; the radius is ``sigma * Phi^-1(p_lower)`` when p_lower > 1/2, else the sample abstains.

        What is guaranteed: with probability at least ``1 - alpha`` over the noise draws, the smoothed classifier
        predicts the certified class at every input within the certified L2 radius (input units) of x. See
        :class:`Certificate` (multi-label: all labels at once) and :class:`SegmentationCertificate` (all certified
        voxels of an image at once, for each radius).

        Args:
            x: float tensor (N, C, *spatial), 1 to 3 spatial dims, finite.
            n0: selection draws per sample.
            n: estimation draws per sample (>= n0; the paper uses 100,000).
            alpha: the error level, in (0, 1).
            correction: segmentation only, overrides the constructor's "holm" or "bonferroni".

        Returns:
            a :class:`Certificate` (classification, multi-label) or a :class:`SegmentationCertificate`.
        """
        n0 = check_int(n0, "n0", 1)
        n = check_int(n, "n", 1)
        if n0 > n:
            raise ValueError(f"`n0` ({n0}) must not exceed `n` ({n}): the selection draws are the cheap part.")
        alpha = check_alpha(alpha)
        correction = self.correction if correction is None else check_choice(correction, "correction", CORRECTIONS)
        x = check_input(x, None)
        task, (counts0, counts) = self._counts(x, ((n0, SELECTION_STREAM), (n, ESTIMATION_STREAM)))
        if task == "segmentation":
            return certify_segmentation(counts0, counts, self.sigma, n0, n, alpha, correction)
        counts0, counts = counts0.cpu().long(), counts.cpu().long()
        labels = counts.shape[1]
        if task == "multilabel":  # each label's value ("on" when > half the votes; a tie selects "off")
            selected = (2 * counts0 > n0).long()
            top = torch.where(selected == 1, counts, n - counts)
            level = alpha / max(labels, 1)  # Bonferroni over the labels
        else:
            selected = counts0.argmax(dim=1)
            top = counts.gather(1, selected[:, None])[:, 0]
            level = alpha
        p_lower = lower_confidence_bound(top.numpy(), n, level)
        radius = torch.from_numpy(radius_from_bound(p_lower, self.sigma))
        certified = torch.from_numpy(p_lower > 0.5)
        return Certificate(
            prediction=torch.where(certified, selected, torch.full_like(selected, ABSTAIN)),
            radius=torch.where(certified, radius, torch.zeros_like(radius)),
            p_lower=torch.from_numpy(p_lower),
            counts=top,
            sigma=self.sigma,
            n0=n0,
            n=n,
            alpha=alpha,
            task=task,
            num_classes=labels,
        )

    # ---- sampling -----------------------------------------------------------------------------------------------
    def _counts(self, x: torch.Tensor, draws: Tuple[Tuple[int, int], ...]) -> Tuple[str, Tuple[torch.Tensor, ...]]:
        """Vote counts of the batch for each (draws, stream) pair, and the task read from the network's output."""
        with torch.inference_mode(False):
            plain = x.detach().as_subclass(torch.Tensor)
            if plain.shape[0] == 0:
                return self._empty(plain, draws)
            keys = sample_keys(plain)
            seed = resolve_seed(self.seed)
            with model_state_guard(self.network) as model:
                plain = plain.to(model_dtype(self.network) or plain.dtype)
                counter = VoteCounter(
                    model, self.sigma, self.batch_size, self.task, self.num_classes, self.check_outputs
                )
                with torch.inference_mode():
                    counts = tuple(
                        counter.count(plain, sample_generators(keys, seed, stream, plain.device), n)
                        for n, stream in draws
                    )
        return counter.task, counts

    def _empty(self, x: torch.Tensor, draws: Tuple[Tuple[int, int], ...]) -> Tuple[str, Tuple[torch.Tensor, ...]]:
        """Counts for an empty batch: the task from the request (classification unless explicit)."""
        task = {"auto": "classification", "binary": "classification", "multiclass": "classification"}.get(
            self.task, self.task
        )
        k = self.num_classes or 2
        shape = (0, k, *x.shape[2:]) if task == "segmentation" else (0, k)
        return task, tuple(torch.zeros(shape, dtype=torch.long) for _ in draws)
