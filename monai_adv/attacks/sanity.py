# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Checks that flag an evaluation whose robustness number may not be trustworthy."""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Tuple

import torch

from monai_adv.attacks.guard import model_dtype, model_state_guard
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.tasks import infer_task, prepare_labels

__all__ = ["BATCH_TOLERANCE", "SANITY_FLAGS", "sanity_checks", "sanity_flags", "sanity_notes"]


#: the per-sample flags of :func:`sanity_flags`
SANITY_FLAGS = (
    "probabilities",
    "probabilities_alone",
    "randomized",
    "no_gradient",
    "gradient_not_finite",
    "gradient_zero",
    "already_wrong",
    "saturated",
    "batch_dependent",
)

#: relative tolerance of the batch-dependence check, by the logits' dtype (different batch sizes may run different
#: kernels, e.g. TF32 convolutions on a GPU, whose rounding differs well below these)
BATCH_TOLERANCE = {torch.float16: 5e-2, torch.bfloat16: 5e-2}
BATCH_TOLERANCE_DEFAULT = 1e-2


def sanity_flags(model: Callable, x: torch.Tensor, y: torch.Tensor, task: str = "auto") -> Dict[str, torch.Tensor]:
    """Run the model on a batch and flag, per sample, what would make a robustness number untrustworthy.

    Flags (bool tensors (N,) on the host, keyed as :data:`SANITY_FLAGS`): the outputs look like probabilities
    instead of logits ("probabilities"; "probabilities_alone" when the sample has enough outputs to tell on its
    own, as a softmax's sum or 16 sigmoid values do); two forward passes on the sample differ (a randomized
    model); the output does not depend on the input through autograd; the input gradient of the attack loss is
    not finite, or exactly zero (possible gradient masking); the clean prediction is already wrong; "saturated":
    the gradient is exactly zero because the probabilities are exactly one-hot in the logits' floating point
    (softmax, or sigmoid, saturation: the cross-entropy has no gradient, a margin loss has); "batch_dependent": the
    sample's logits when it is run alone differ from its logits in the batch (e.g. BatchNorm normalizing with the
    batch's statistics), by more than :data:`BATCH_TOLERANCE` (1e-2 for float32 and float64, 5e-2 for half
    precision) times the largest logit magnitude of the sample (at least 1); not flagged on a randomized sample, or
    when the model cannot run one sample alone (then it cannot tell). Costs three forward passes (the third one
    sample at a time) and one backward pass. :func:`sanity_notes` turns the flags of any number of samples into
    warnings, so the flags of several batches (or processes) give the notes of the whole data set.

    Args:
        model: the model (any callable returning logits); an ``nn.Module`` is run in eval mode and left as found.
        x: a batch of images (N, C, *spatial).
        y: its labels (see :class:`~monai_adv.attacks.base.Attack`).
        task: "auto", "classification", "multilabel" or "segmentation".
    """
    n = int(x.shape[0])
    flags = {name: torch.zeros(n, dtype=torch.bool) for name in SANITY_FLAGS}
    if n == 0:
        return flags
    network = model
    with torch.inference_mode(False), model_state_guard(network) as model, torch.enable_grad():
        x = x.detach().as_subclass(torch.Tensor).to(model_dtype(network) or x.dtype).clone().requires_grad_(True)
        logits = model(x)
        logits = logits.as_subclass(torch.Tensor) if type(logits) is not torch.Tensor else logits
        task = infer_task(task, logits.detach(), y)
        labels = prepare_labels(task, y.to(x.device), logits.detach(), "y")
        objective = Objective(task, labels, clean_logits=logits.detach())
        flags["probabilities"], flags["probabilities_alone"] = _probability_like(task, logits.detach())
        with torch.no_grad():
            again = model(x.detach()).as_subclass(torch.Tensor)
        close = torch.isclose(logits.detach(), again, rtol=1e-4, atol=1e-5).flatten(1).all(dim=1)
        flags["randomized"] = ~close.cpu()
        loss = objective.loss(logits, slice(None))
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        if grad is None:
            flags["no_gradient"] = torch.ones(n, dtype=torch.bool)
        else:
            flat = grad.flatten(1)
            flags["gradient_not_finite"] = (~torch.isfinite(flat)).any(dim=1).cpu()
            flags["gradient_zero"] = (flat == 0).all(dim=1).cpu()
            flags["saturated"] = flags["gradient_zero"] & _one_hot_probabilities(task, logits.detach())
        flags["already_wrong"] = objective.success(logits.detach(), slice(None)).cpu()
        flags["batch_dependent"] = _batch_dependent(model, x.detach(), logits.detach()) & ~flags["randomized"]
    return flags


def _one_hot_probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Per sample: are the probabilities exactly 0 or 1 in the logits' floating point (a saturated softmax or
    sigmoid, whose cross-entropy gradient is exactly zero)?"""
    if task in ("classification", "segmentation") and logits.shape[1] > 1:
        probabilities = torch.softmax(logits, dim=1)
    else:
        probabilities = torch.sigmoid(logits)
    flat = probabilities.flatten(1)
    return ((flat == 0) | (flat == 1)).all(dim=1).cpu()


def _batch_dependent(model: Callable, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per sample: do its logits when run alone differ from its logits in the batch? One more forward pass, one
    sample at a time; False everywhere for a batch of one, or when the model cannot run one sample alone."""
    n = int(x.shape[0])
    dependent = torch.zeros(n, dtype=torch.bool)
    if n < 2:
        return dependent
    try:
        with torch.no_grad():
            alone = torch.cat([model(x[i : i + 1]).as_subclass(torch.Tensor) for i in range(n)])
    except (RuntimeError, ValueError):  # e.g. batch statistics of a single value: cannot tell
        return dependent
    if alone.shape != logits.shape:
        return dependent
    tolerance = BATCH_TOLERANCE.get(logits.dtype, BATCH_TOLERANCE_DEFAULT)
    difference = (alone.to(logits.dtype) - logits).abs().flatten(1).amax(dim=1)
    scale = logits.abs().flatten(1).amax(dim=1).clamp_min(1.0)
    return (difference > tolerance * scale).cpu()


def _probability_like(task: str, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sample: are the outputs probabilities (in [0, 1], summing to 1 over the channels of a multi-class
    output)? And can the sample tell alone (a sum to 1, or at least 16 values)? The rule of
    :func:`~monai_adv.attacks.tasks.looks_like_probabilities`, one sample at a time."""
    flat = logits.flatten(1)
    unit = ((flat >= 0) & (flat <= 1)).all(dim=1)
    if task in ("classification", "segmentation") and logits.shape[1] > 1:
        sums = torch.isclose(logits.sum(dim=1), torch.ones_like(logits[:, 0]), atol=1e-3)
        sums = sums.reshape(sums.shape[0], -1).all(dim=1)
        return (unit & sums).cpu(), (unit & sums).cpu()
    return unit.cpu(), (unit & (flat.shape[1] >= 16)).cpu()


def sanity_notes(flags: Mapping[str, torch.Tensor]) -> List[str]:
    """The warnings the flags of :func:`sanity_flags` call for (flags of one or many batches, concatenated)."""
    found: List[str] = []
    if not flags or flags["already_wrong"].numel() == 0:
        return found
    enough = bool(flags["probabilities_alone"].any()) or flags["probabilities"].numel() >= 16
    if bool(flags["probabilities"].all()) and enough:
        found.append(
            "The model's outputs look like probabilities, not logits: gradient attacks may be weakened "
            "(remove the final softmax/sigmoid)."
        )
    randomized = int(flags["randomized"].sum())
    if randomized:
        found.append(
            f"The model is randomized (two forward passes on the same input differ for {randomized} sample(s)): a "
            "single pass gives noisy gradients and a lucky outcome. Attack the expectation over transformation: craft "
            "on EoT(model, samples=...) (monai_adv.attacks.EoT; in the RobustnessEvaluator as the surrogate, scoring "
            'the model itself), or use APGD(eot_iter=...) / AutoAttack(version="rand"). An EoT model is still '
            "randomized, so this note stays: raise `samples` until the robust accuracy no longer falls."
        )
    batch_dependent = int(flags["batch_dependent"].sum()) if "batch_dependent" in flags else 0
    if batch_dependent:
        found.append(
            f"The model's output for {batch_dependent} sample(s) depends on the rest of the batch (its logits alone "
            "differ from its logits in the batch, e.g. BatchNorm normalizing with the batch's statistics, "
            "track_running_stats=False): attacks and scores then depend on which samples share a batch. Fix the "
            "statistics (running statistics, eval mode) or evaluate one sample per batch."
        )
    if bool(flags["no_gradient"].any()):
        found.append("The model's output does not depend on its input through autograd: gradient attacks cannot run.")
    else:
        not_finite, zero = int(flags["gradient_not_finite"].sum()), int(flags["gradient_zero"].sum())
        saturated = int(flags["saturated"].sum()) if "saturated" in flags else 0
        if not_finite:
            found.append(
                f"Input gradients are NaN or Inf for {not_finite} sample(s): possible gradient masking (a "
                "non-differentiable step? craft through BPDA)."
            )
        if saturated:
            found.append(
                f"Input gradients are exactly zero for {saturated} sample(s) because their probabilities are exactly "
                "one-hot in floating point (saturated softmax or sigmoid, e.g. very large logits): the cross-entropy "
                'has no gradient there. Attack a margin loss (loss="cw", or "dlr"), or craft on the logits scaled '
                "down (the prediction is unchanged)."
            )
        if zero > saturated:
            found.append(
                f"Input gradients are exactly zero for {zero - saturated} sample(s): possible gradient masking. A "
                "non-differentiable step (quantization, thresholding, median filter, JPEG-like compression) in the "
                "model? Craft through it with BPDA: nn.Sequential(BPDA(step), network) "
                "(monai_adv.attacks.BPDA, adaptive_model), and compare with a gradient-free attack (square)."
            )
    if bool(flags["already_wrong"].all()):
        found.append("Clean accuracy is zero: every sample is already misclassified, robustness is meaningless.")
    return found


def sanity_checks(model: Callable, x: torch.Tensor, y: torch.Tensor, task: str = "auto") -> List[str]:
    """Run the model on a batch and return a warning per problem found (an empty list when none).

    Checks: outputs that look like probabilities instead of logits; a randomized model (two forward passes on
    the same input differ); outputs that depend on the rest of the batch; input gradients of the attack loss that
    are zero (saturated probabilities, or possible gradient masking) or not finite for some sample; clean accuracy
    of zero. Costs three forward passes (one of them a sample at a time) and one backward pass. The same as
    ``sanity_notes(sanity_flags(model, x, y, task))``.

    Args:
        model: the model (any callable returning logits); an ``nn.Module`` is run in eval mode and left as found.
        x: a batch of images (N, C, *spatial).
        y: its labels (see :class:`~monai_adv.attacks.base.Attack`).
        task: "auto", "classification", "multilabel" or "segmentation".
    """
    return sanity_notes(sanity_flags(model, x, y, task))
