# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Attack losses. Each returns one value per sample, shape (N,); the attack ascends it.

Conventions:
    - classification logits are (N, K); K == 1 means a single binary logit (sigmoid), labels (N,) in {0, 1}.
    - multi-label logits are (N, K) with multi-hot labels (N, K).
    - segmentation logits are (N, K, *spatial) with label maps given as indices (N, *spatial);
      K == 1 means a single foreground logit (sigmoid). Voxel losses are averaged over the voxels,
      or over the voxels where ``mask`` is non-zero.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from monai_adv.attacks.tasks import as_two_logits, predict

__all__ = [
    "balanced_cross_entropy",
    "jensen_shannon",
    "kl_divergence",
    "masked_cross_entropy",
    "masked_spherical",
    "cross_entropy",
    "cw_margin",
    "dlr",
    "targeted_dlr",
    "multilabel_bce",
    "multilabel_margin",
    "segmentation_cross_entropy",
    "segmentation_margin",
    "soft_dice_loss",
]


def _other_max(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Largest logit over the classes other than ``labels`` (dim 1), and the logit of ``labels``."""
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf"))
    return others.amax(dim=1), true


def _sample_sum(values: torch.Tensor, dims) -> torch.Tensor:
    """Sum over ``dims`` accumulated in float64, so that a sample's value does not depend on its batch."""
    if values.device.type == "mps":  # no float64 there
        return values.sum(dim=dims)
    return values.sum(dim=dims, dtype=torch.float64).to(values.dtype)


def _masked_voxel_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over all but the first dim of ``values`` (N, *spatial), restricted to ``mask`` if given."""
    flat = values.flatten(1)
    if mask is None:
        return _sample_sum(flat, 1) / flat.shape[1]
    weights = mask.reshape(values.shape).to(values.dtype).flatten(1)
    return _sample_sum(flat * weights, 1) / _sample_sum(weights, 1).clamp_min(1.0)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of classification logits (N, K) with class indices (N,).

    A single logit (K == 1) uses binary cross-entropy with labels in {0, 1}.
    """
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 0.0, targeted: bool = False) -> torch.Tensor:
    """Carlini-Wagner margin, capped at ``kappa``, oriented so that the attack ascends it.

    Untargeted: ``min(max_{i != y} z_i - z_y, kappa)``; targeted (``labels`` are the targets):
    ``min(z_t - max_{i != t} z_i, kappa)``. The loss is positive exactly when the sample is fooled.

    Args:
        logits: (N, K) logits; K == 1 is read as the two-class logits [0, z].
        labels: (N,) true classes, or target classes when ``targeted``.
        kappa: confidence cap (>= 0); the attack stops pushing a sample once its margin reaches it.
        targeted: whether ``labels`` are target classes.
    """
    other, true = _other_max(as_two_logits(logits), labels)
    margin = true - other if targeted else other - true
    return margin.clamp_max(kappa)


def _sorted_desc(logits: torch.Tensor, needed: int, name: str) -> torch.Tensor:
    if logits.shape[1] < needed:
        raise ValueError(
            f"The {name} loss needs at least {needed} classes, the model outputs {logits.shape[1]}; "
            'use loss="ce" or loss="cw" for binary tasks.'
        )
    return logits.sort(dim=1, descending=True).values


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``.

    Invariant to shifting and scaling the logits. Needs at least 3 classes.
    """
    zs = _sorted_desc(logits, 3, "DLR")
    other, true = _other_max(logits, labels)
    return -(true - other) / (zs[:, 0] - zs[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs at least 4 classes."""
    zs = _sorted_desc(logits, 4, "targeted DLR")
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    tgt = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return -(true - tgt) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


def multilabel_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample binary cross-entropy averaged over the K labels of multi-label logits (N, K)."""
    bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return _sample_sum(bce, 1) / bce.shape[1]


def multilabel_margin(
    logits: torch.Tensor, labels: torch.Tensor, kappa: float = 0.0, targeted: bool = False
) -> torch.Tensor:
    """Margin loss for multi-label logits (N, K), capped at ``kappa``.

    Per label, ``m_k = (1 - 2 y_k) z_k`` is positive when label k is predicted wrong. Untargeted, the
    attack needs one wrong label and ascends ``min(max_k m_k, kappa)``; targeted (``labels`` are the
    target sets), every label must match and it ascends ``min(min_k -m_k, kappa)``.
    """
    signed = (1.0 - 2.0 * labels.to(logits.dtype)) * logits
    if targeted:
        return (-signed).amin(dim=1).clamp_max(kappa)
    return signed.amax(dim=1).clamp_max(kappa)


def segmentation_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Per-sample voxel-mean cross-entropy of segmentation logits (N, K, *spatial) with index maps (N, *spatial).

    K == 1 uses binary cross-entropy on the foreground logit.
    """
    if logits.shape[1] == 1:
        voxel = F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype), reduction="none")
    else:
        voxel = F.cross_entropy(logits, labels, reduction="none")
    return _masked_voxel_mean(voxel, mask)


def segmentation_margin(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kappa: float = 0.0,
    targeted: bool = False,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Voxel-mean CW margin (see :func:`cw_margin`) of segmentation logits (N, K, *spatial)."""
    other, true = _other_max(as_two_logits(logits), labels)
    margin = true - other if targeted else other - true
    return _masked_voxel_mean(margin.clamp_max(kappa), mask)


def soft_dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Per-sample soft Dice loss ``1 - mean_c dice_c`` of segmentation logits (N, K, *spatial).

    Probabilities are the softmax over K >= 2 channels (the background channel 0 left out of the mean
    unless ``include_background``), or the sigmoid of a single foreground logit (K == 1).
    ``dice_c = (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)`` over the voxels (inside ``mask``).
    """
    num_classes = logits.shape[1]
    if num_classes == 1:
        probs = torch.sigmoid(logits)
        onehot = labels.unsqueeze(1).to(logits.dtype)
    else:
        probs = torch.softmax(logits, dim=1)
        # one-hot by scatter, laid out as F.one_hot(...).movedim(-1, 1), which on some devices checks the label
        # range by reading the labels on the host at every call (they were checked once, by prepare_labels)
        onehot = torch.zeros((*labels.shape, num_classes), dtype=logits.dtype, device=logits.device)
        onehot = onehot.scatter_(-1, labels.unsqueeze(-1), 1.0).movedim(-1, 1)
        if not include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
    if mask is not None:
        weights = mask.reshape(labels.shape).unsqueeze(1).to(logits.dtype)
        probs, onehot = probs * weights, onehot * weights
    dims = tuple(range(2, logits.ndim))
    intersection = _sample_sum(probs * onehot, dims)
    denominator = _sample_sum(probs, dims) + _sample_sum(onehot, dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean(dim=1)


def kl_divergence(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(softmax(clean_logits) || softmax(logits))`` of classification logits (N, K).

    How far the prediction moved from the clean one, whatever the label: the inner maximization of TRADES
    (Zhang et al. 2019) and HAT. A single logit (K == 1) is read as the two logits [0, z].
    """
    log_p = F.log_softmax(as_two_logits(logits), dim=1)
    clean = F.softmax(as_two_logits(clean_logits).to(log_p.dtype), dim=1)
    return _sample_sum(F.kl_div(log_p, clean, reduction="none"), 1)


# ---- the losses of the segmentation attack ensemble (Croce, Singh & Hein, ECCV 2024) ----------------------------
# Each takes segmentation logits (N, K, *spatial), K == 1 read as the two logits [0, z], and an index map
# (N, *spatial): the labels, or the targets when ``targeted``. Voxel values are averaged over the voxels (inside
# ``mask``), accumulated in float64 per sample.


def _still_to_flip(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per voxel (float 0/1, no gradient), the voxels an attack still has to change: those predicted as their label
    (untargeted), or those not yet predicted as their target (``targeted``)."""
    hit = predict("segmentation", logits.detach()) == labels
    return (~hit if targeted else hit).to(logits.dtype)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None, targeted: bool = False
) -> torch.Tensor:
    """Per-sample masked cross-entropy ``mean_v 1[pred_v = y_v] CE(u_v, y_v)`` of segmentation logits.

    Only the voxels still classified correctly count (a misclassified voxel adds 0, but still counts in the mean's
    denominator), so the attack spends its steps on the voxels it has not flipped yet instead of pushing flipped
    ones further, whose cross-entropy grows without bound. With ``targeted``, ``labels`` are the targets and the
    voxels not yet predicted as their target count: ``mean_v 1[pred_v != t_v] CE(u_v, t_v)``.

    Args:
        logits: (N, K, *spatial) logits; K == 1 is the single foreground logit z, read as [0, z].
        labels: (N, *spatial) class indices (the targets when ``targeted``).
        mask: optional (N, *spatial) voxels to average over (the loss mask).
        targeted: whether ``labels`` are target classes.
    """
    voxel = F.cross_entropy(as_two_logits(logits), labels, reduction="none")
    return _masked_voxel_mean(_still_to_flip(logits, labels, targeted) * voxel, mask)


def balanced_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    masked: bool = True,
    targeted: bool = False,
) -> torch.Tensor:
    """Per-sample class-balanced (masked) cross-entropy of segmentation logits.

    Each voxel's cross-entropy is weighted by the inverse frequency of its class in the sample's label map:
    ``sum_v CE(u_v, y_v) / (C * n_{y_v})`` with ``n_c`` the voxels of class c and C the number of classes present
    (inside ``mask``). Every class present weighs the same, however few voxels it has: a small lesion counts as
    much as the background around it. With ``masked`` (the default, as the balanced loss of the ensemble), the
    voxels already misclassified add 0 (see :func:`masked_cross_entropy`); their class frequencies still count all
    the class's voxels.

    Args:
        logits: (N, K, *spatial) logits; K == 1 is the single foreground logit z, read as [0, z].
        labels: (N, *spatial) class indices (the targets when ``targeted``); the weights come from their frequencies.
        mask: optional (N, *spatial) voxels to count (the loss mask).
        masked: count only the voxels still to flip.
        targeted: whether ``labels`` are target classes (masked: the voxels not yet at their target count).
    """
    voxel = F.cross_entropy(as_two_logits(logits), labels, reduction="none")
    if masked:
        voxel = _still_to_flip(logits, labels, targeted) * voxel
    dims = tuple(range(1, labels.ndim))
    region = None if mask is None else mask.reshape(labels.shape).to(voxel.dtype)
    total = torch.zeros(labels.shape[0], dtype=voxel.dtype, device=voxel.device)
    present = torch.zeros_like(total)
    for c in range(max(logits.shape[1], 2)):
        in_class = (labels == c).to(voxel.dtype)
        if region is not None:
            in_class = in_class * region
        count = _sample_sum(in_class, dims)
        class_mean = _sample_sum(in_class * voxel, dims) / count.clamp_min(1.0)
        total = total + torch.where(count > 0, class_mean, torch.zeros_like(class_mean))
        present = present + (count > 0).to(total.dtype)
    return total / present.clamp_min(1.0)


def jensen_shannon(logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample voxel-mean Jensen-Shannon divergence between the softmax prediction and the one-hot label map.

    With ``p`` the predicted probability of the voxel's label and ``m = (p + onehot) / 2``, the divergence
    ``JS = (KL(p || m) + KL(onehot || m)) / 2`` (natural log) depends on ``p`` alone:
    ``JS = ln 2 + (p ln p - (1 + p) ln(1 + p)) / 2``, from 0 (``p = 1``) to ln 2 (``p = 0``). It is bounded, so
    a voxel already flipped with confidence adds at most ln 2 and its gradient fades, while the voxels still near
    their label carry the attack.

    Args:
        logits: (N, K, *spatial) logits; K == 1 is the single foreground logit z, read as [0, z].
        labels: (N, *spatial) class indices.
        mask: optional (N, *spatial) voxels to average over (the loss mask).
    """
    log_p = F.log_softmax(as_two_logits(logits), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    p = log_p.exp()
    voxel = math.log(2.0) + 0.5 * (p * log_p - (1.0 + p) * torch.log1p(p))
    return _masked_voxel_mean(voxel, mask)


def masked_spherical(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    floor: float = 1.0,
    targeted: bool = False,
) -> torch.Tensor:
    """Per-sample masked spherical loss ``mean_v -1[pred_v = y_v] u_{v,y} / ||u_v||`` of segmentation logits.

    The logit vector ``u_v`` of each voxel is projected onto the unit sphere and the loss is minus its coordinate on
    the voxel's label, on the voxels still classified correctly (the others add 0): the attack lowers the label's
    share of the logit direction, with a gradient that does not vanish as the softmax saturates. The norm is
    ``||u_v|| = sqrt(sum_k u_{v,k}^2 + floor^2)``: for logits much larger than ``floor`` it is the plain L2 norm
    of the definition, it is defined at ``u = 0``, and it keeps the loss from being piecewise constant for a single
    logit (the two logits [0, z] projected without a floor are (0, +-1)). With ``targeted``, ``labels`` are the
    targets and the loss is ``mean_v -1[pred_v != t_v] u_{v,t} / ||u_v||`` over the voxels not yet at their target.

    Args:
        logits: (N, K, *spatial) logits; K == 1 is the single foreground logit z, read as [0, z].
        labels: (N, *spatial) class indices (the targets when ``targeted``).
        mask: optional (N, *spatial) voxels to average over (the loss mask).
        floor: the constant added (squared) under the norm's square root (>= 0).
        targeted: whether ``labels`` are target classes.
    """
    if floor < 0:
        raise ValueError(f"`floor` of the masked spherical loss must be >= 0, got {floor}.")
    two = as_two_logits(logits)
    norm = (two.square().sum(dim=1) + floor**2).clamp_min(1e-24).sqrt()
    coordinate = two.gather(1, labels.unsqueeze(1)).squeeze(1) / norm
    return _masked_voxel_mean(-_still_to_flip(logits, labels, targeted) * coordinate, mask)
