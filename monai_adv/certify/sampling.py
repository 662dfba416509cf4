# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Monte Carlo sampling of the base network under Gaussian noise: how often it votes for each class.

The noise is ``sigma * N(0, I)`` added to the input in the network's input space, with no clipping to any value
range (as Cohen et al. do): the guarantee is about the smoothed network on unclipped noisy inputs.

Each sample's noise comes from its own generator (keyed by the sample's content, the seed and a stream number,
see :mod:`monai_adv.attacks.seeding`), drawn in pieces of at most ``batch_size`` copies whose boundaries depend on
the sample alone. Pieces of several samples share a network call when they fit in ``batch_size`` copies, so the
noise a sample receives does not depend on the batch it is in.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from monai_adv.attacks.tasks import TASK_CHOICES, looks_like_probabilities
from monai_adv.attacks.tasks import predict as hard_prediction
from monai_adv.attacks.validation import check_logits

__all__ = ["SMOOTHING_TASKS", "VoteCounter", "plan_calls", "resolve_task"]

#: what ``task=`` accepts: the project's tasks and "auto", and "binary"/"multiclass" (both run as "classification")
SMOOTHING_TASKS = TASK_CHOICES + ("binary", "multiclass")


def resolve_task(requested: str, logits: torch.Tensor) -> str:
    """The task ("classification", "multilabel" or "segmentation") for the network's output ``logits``.

    ``"auto"`` reads the shape: logits (N, K) are classification, (N, K, *spatial) segmentation. Multi-label
    logits have the shape of classification ones, so a multi-label network needs ``task="multilabel"``.
    """
    shape = tuple(logits.shape)
    if logits.ndim < 2:
        raise ValueError(f"`network` must return logits (N, K[, *spatial]), got shape {shape}.")
    if requested == "auto":
        return "segmentation" if logits.ndim > 2 else "classification"
    if requested == "segmentation":
        if logits.ndim == 2:
            raise ValueError(f'`task`="segmentation" needs logits (N, K, *spatial), the network returns {shape}.')
        return requested
    if logits.ndim != 2:
        raise ValueError(f'`task`="{requested}" needs logits (N, K), the network returns {shape}.')
    if requested == "binary" and shape[1] not in (1, 2):
        raise ValueError(f'`task`="binary" needs 1 or 2 logits per sample, the network returns {shape[1]}.')
    if requested == "multiclass" and shape[1] < 2:
        raise ValueError(
            f'`task`="multiclass" needs at least 2 logits per sample, the network returns {shape[1]}; '
            'use task="binary" for a single logit.'
        )
    return "multilabel" if requested == "multilabel" else "classification"


def plan_calls(num_samples: int, n: int, batch_size: int) -> List[List[Tuple[int, int]]]:
    """The network calls that draw ``n`` noisy copies of each of ``num_samples`` samples.

    Each sample's copies are split into pieces of ``batch_size`` (the last one shorter); consecutive pieces are
    packed into calls of at most ``batch_size`` copies. Returns per call its pieces as (sample, copies).
    """
    calls: List[List[Tuple[int, int]]] = []
    current: List[Tuple[int, int]] = []
    used = 0
    for sample in range(num_samples):
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            if used + size > batch_size:
                calls.append(current)
                current, used = [], 0
            current.append((sample, size))
            used += size
    if current:
        calls.append(current)
    return calls


class VoteCounter:
    """Counts, per sample, the base network's votes on noisy copies of the input.

    A vote is the hard prediction of one noisy copy: the argmax class (a single binary logit votes 1 when it is
    > 0); for multi-label, each label's on/off (logit > 0, i.e. sigmoid > 1/2); for segmentation, the class of
    every voxel. The task and the number of outputs are read from the first network call and kept.

    Args:
        model: the callable that maps a batch of inputs to logits (already in eval mode, without gradients).
        sigma: noise standard deviation, in input units.
        batch_size: at most this many noisy copies per network call.
        task: one of :data:`SMOOTHING_TASKS`.
        num_classes: the expected number of classes (labels for multi-label), or None to accept the network's.
        check_outputs: raise when the outputs look like probabilities instead of logits.
    """

    def __init__(
        self,
        model: Callable,
        sigma: float,
        batch_size: int,
        task: str = "auto",
        num_classes: Optional[int] = None,
        check_outputs: bool = True,
    ) -> None:
        self.model = model
        self.sigma = sigma
        self.batch_size = batch_size
        self.requested = task
        self.num_classes = num_classes
        self.check_outputs = check_outputs
        self.task: Optional[str] = None
        self.num_outputs: Optional[int] = None
        self.out_shape: Optional[Tuple[int, ...]] = None
        # values seen so far, all in [0, 1]; None once an output is known to be logits (or the check is off)
        self._unit_values: Optional[int] = 0 if check_outputs else None

    @property
    def classes(self) -> int:
        """The number of vote categories: the labels for multi-label, else the classes (2 for a single logit)."""
        if self.num_outputs is None:
            raise RuntimeError("No network call yet: the number of classes is read from the network's output.")
        return self.num_outputs if self.task == "multilabel" else max(self.num_outputs, 2)

    def count(self, x: torch.Tensor, generators: Sequence[torch.Generator], n: int) -> torch.Tensor:
        """Draw ``n`` noisy copies of every sample of ``x`` (N, C, *spatial) and count the votes on x's device.

        Returns:
            classification: int64 (N, classes) votes per class; multilabel: int64 (N, K) "on" votes per label;
            segmentation: int32 (N, classes, *out_spatial) votes per class and voxel.
        """
        counts: Optional[torch.Tensor] = None
        for call in plan_calls(x.shape[0], n, self.batch_size):
            rows = torch.cat([torch.full((size,), sample, dtype=torch.long) for sample, size in call]).to(x.device)
            # one buffer for the call's noisy copies, each piece filled from its sample's generator, in place
            noisy = torch.empty((len(rows), *x.shape[1:]), device=x.device, dtype=x.dtype)
            start = 0
            for sample, size in call:
                piece = noisy[start : start + size]
                piece.normal_(generator=generators[sample]).mul_(self.sigma).add_(x[sample])
                start += size
            votes = self._votes(self.model(noisy), len(rows))
            del noisy
            if counts is None:
                counts = self._empty_counts(x.shape[0], x.device)
            self._add(counts, rows, votes)
        if counts is None:  # no sample
            return torch.zeros((0, 0), dtype=torch.long, device=x.device)
        return counts

    def _empty_counts(self, num_samples: int, device: torch.device) -> torch.Tensor:
        if self.task == "segmentation":
            return torch.zeros((num_samples, self.classes, *self.out_shape), dtype=torch.int32, device=device)
        return torch.zeros((num_samples, self.classes), dtype=torch.long, device=device)

    def _add(self, counts: torch.Tensor, rows: torch.Tensor, votes: torch.Tensor) -> None:
        if self.task == "multilabel":
            counts.index_add_(0, rows, votes.long())
        elif self.task == "classification":
            counts.index_put_((rows, votes), torch.ones_like(votes), accumulate=True)
        else:
            for c in range(self.classes):
                counts[:, c].index_add_(0, rows, (votes == c).to(torch.int32))

    def _votes(self, out, copies: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"`network` must return a tensor of logits, got {type(out).__name__}; wrap a network with several "
                "outputs in a function that returns the logits."
            )
        if not out.is_floating_point():
            raise TypeError(f"`network` must return floating-point logits, got {out.dtype}.")
        if out.ndim < 2 or out.shape[0] != copies:
            raise ValueError(
                f"`network` must return logits (N, K[, *spatial]) for a batch of {copies}, got {tuple(out.shape)}."
            )
        logits = out.detach() if type(out) is torch.Tensor else out.detach().as_subclass(torch.Tensor)
        if self.task is None:
            self._first_output(logits)
        if self._unit_values is not None:
            self._check_probabilities(logits)
        elif tuple(logits.shape[1:]) != (self.num_outputs, *self.out_shape):
            raise ValueError(
                f"`network` returned logits of shape {tuple(logits.shape[1:])} per sample after "
                f"{(self.num_outputs, *self.out_shape)}: every sample must give the same output shape."
            )
        check_logits(logits, "noisy copies of the input")
        if self.task == "multilabel":
            return logits > 0
        return hard_prediction(self.task, logits)

    def _first_output(self, logits: torch.Tensor) -> None:
        task = resolve_task(self.requested, logits)
        k = logits.shape[1]
        expected = self.num_classes
        if expected is not None and not (k == expected or (k == 1 and expected == 2 and task != "multilabel")):
            what = "labels" if task == "multilabel" else "classes"
            raise ValueError(
                f"`num_classes`={expected} does not match the network, which returns {k} logit channel(s) "
                f"({what}); a single logit stands for 2 classes."
            )
        self.task, self.num_outputs, self.out_shape = task, k, tuple(logits.shape[2:])

    def _check_probabilities(self, logits: torch.Tensor) -> None:
        """Raise when the outputs look like probabilities: as :func:`monai_adv.attacks.tasks.looks_like_probabilities`
        (a softmax: every row in [0, 1] summing to 1; sigmoids: at least 16 values, all in [0, 1]), with the
        sigmoid values counted over the calls until one value falls outside [0, 1]."""
        if bool(logits.min() < 0) or bool(logits.max() > 1):
            self._unit_values = None
            return
        softmax = self.task != "multilabel" and self.num_outputs > 1
        if softmax:
            self._unit_values = None
            if not looks_like_probabilities(self.task, logits):
                return
        else:
            self._unit_values += logits.numel()
            if self._unit_values < 16:
                return
        raise ValueError(
            "The `network` outputs look like probabilities (all values in [0, 1]"
            + (", summing to 1 over the classes" if softmax else "")
            + "), but randomized smoothing needs logits (a single logit or a multi-label logit votes 'on' when it "
            "is > 0). Remove the final softmax/sigmoid, or pass check_outputs=False if these are logits."
        )
