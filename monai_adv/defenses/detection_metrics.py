# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Metrics of an adversarial example detector: the threshold for a false-positive rate, the AUROC and the
true-positive rate at that threshold."""

from __future__ import annotations

import math
from typing import Any, Dict

import torch

__all__ = ["detection_metrics", "threshold_at_fpr"]


def _check_fpr(fpr: Any) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 < float(fpr) < 1.0:
        raise ValueError(f"`fpr` must be a number in (0, 1), got {fpr!r}.")
    return float(fpr)


def _check_scores(scores: Any, name: str) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach().reshape(-1).to("cpu", torch.float64)
    if scores.numel() == 0:
        raise ValueError(f"`{name}` must hold at least one score.")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"`{name}` contains NaN or Inf scores.")
    return scores


def threshold_at_fpr(scores_clean: Any, fpr: float = 0.05) -> float:
    """The smallest clean score ``t`` such that at most ``floor(fpr * n)`` of the ``n`` clean scores exceed it.

    Inputs with a score above ``t`` are flagged, so the false-positive rate on these clean scores is at most ``fpr``
    (ties at ``t`` are not flagged).

    Args:
        scores_clean: the detector's scores on clean inputs, any shape.
        fpr: the target false-positive rate, in (0, 1).
    """
    fpr = _check_fpr(fpr)
    scores = _check_scores(scores_clean, "scores_clean").sort().values
    allowed = int(math.floor(fpr * scores.numel() + 1e-9))  # clean scores that may exceed the threshold
    return float(scores[scores.numel() - allowed - 1])


def _auroc(clean: torch.Tensor, adv: torch.Tensor) -> float:
    """Mann-Whitney AUROC: P(adv > clean) + P(adv == clean) / 2, from average ranks (ties share their mean rank)."""
    values = torch.cat([clean, adv])
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # ranks start at 1
    ranks = mean_rank[inverse]
    n_clean, n_adv = clean.numel(), adv.numel()
    u = float(ranks[n_clean:].sum()) - n_adv * (n_adv + 1) / 2
    return u / (n_clean * n_adv)


def detection_metrics(scores_clean: Any, scores_adv: Any, fpr: float = 0.05) -> Dict[str, float]:
    """How well detector scores separate adversarial inputs from clean ones (higher score = flagged).

    Args:
        scores_clean: scores of clean inputs (the negatives), any shape.
        scores_adv: scores of adversarial inputs (the positives), any shape.
        fpr: the false-positive rate of the operating point (0.05 gives the key ``"tpr_at_5_fpr"``).

    Returns:
        ``{"auroc": ..., "tpr_at_5_fpr": ...}``: the exact area under the ROC curve, from the ranks of all scores
        (a tie between an adversarial and a clean score counts one half), and the fraction of adversarial scores
        above :func:`threshold_at_fpr` of the clean scores (the threshold that flags at most ``fpr`` of them).
    """
    fpr = _check_fpr(fpr)
    clean = _check_scores(scores_clean, "scores_clean")
    adv = _check_scores(scores_adv, "scores_adv")
    threshold = threshold_at_fpr(clean, fpr)
    return {"auroc": _auroc(clean, adv), f"tpr_at_{fpr * 100:g}_fpr": float((adv > threshold).double().mean())}
