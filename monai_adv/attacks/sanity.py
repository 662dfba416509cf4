# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Checks that flag an evaluation whose robustness number may not be trustworthy."""

from __future__ import annotations

from typing import Callable, List

import torch

from monai_adv.attacks.guard import model_dtype, model_state_guard
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.tasks import infer_task, looks_like_probabilities, prepare_labels

__all__ = ["sanity_checks"]


def sanity_checks(model: Callable, x: torch.Tensor, y: torch.Tensor, task: str = "auto") -> List[str]:
    """Run the model on a batch and return a warning per problem found (an empty list when none).

    Checks: outputs that look like probabilities instead of logits; a randomized model (two forward passes on
    the same input differ); input gradients of the cross-entropy that are zero or not finite for some sample
    (possible gradient masking); clean accuracy of zero. Costs two forward passes and one backward pass.

    Args:
        model: the model (any callable returning logits); an ``nn.Module`` is run in eval mode and left as found.
        x: a batch of images (N, C, *spatial).
        y: its labels (see :class:`~monai_adv.attacks.base.Attack`).
        task: "auto", "classification", "multilabel" or "segmentation".
    """
    found: List[str] = []
    if x.shape[0] == 0:
        return found
    network = model
    with torch.inference_mode(False), model_state_guard(network) as model, torch.enable_grad():
        x = x.detach().as_subclass(torch.Tensor).to(model_dtype(network) or x.dtype).clone().requires_grad_(True)
        logits = model(x)
        logits = logits.as_subclass(torch.Tensor) if type(logits) is not torch.Tensor else logits
        task = infer_task(task, logits.detach(), y)
        labels = prepare_labels(task, y.to(x.device), logits.detach(), "y")
        objective = Objective(task, labels, clean_logits=logits.detach())
        if looks_like_probabilities(task, logits.detach()):
            found.append(
                "The model's outputs look like probabilities, not logits: gradient attacks may be weakened "
                "(remove the final softmax/sigmoid)."
            )
        with torch.no_grad():
            again = model(x.detach())
        if not torch.allclose(logits.detach(), again.as_subclass(torch.Tensor), rtol=1e-4, atol=1e-5):
            found.append(
                "The model is randomized (two forward passes on the same input differ): use expectation over "
                'transformation, e.g. AutoAttack(version="rand").'
            )
        loss = objective.loss(logits, slice(None))
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        if grad is None:
            found.append(
                "The model's output does not depend on its input through autograd: gradient attacks cannot run."
            )
        else:
            flat = grad.flatten(1)
            not_finite = int((~torch.isfinite(flat)).any(dim=1).sum())
            zero = int((flat == 0).all(dim=1).sum())
            if not_finite:
                found.append(f"Input gradients are NaN or Inf for {not_finite} sample(s): possible gradient masking.")
            if zero:
                found.append(f"Input gradients are exactly zero for {zero} sample(s): possible gradient masking.")
        clean_success = objective.success(logits.detach(), slice(None))
        if bool(clean_success.all()):
            found.append("Clean accuracy is zero: every sample is already misclassified, robustness is meaningless.")
    return found
