# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Helpers to run our attacks from the reference implementation's random numbers, so that the two can be
compared sample by sample rather than only on average."""

from __future__ import annotations

from typing import Callable

import torch


def torchattacks_apgd_start(seed: int) -> Callable:
    """A drop-in for ``monai_adv.attacks.projections.boundary_start`` (L-inf) that draws the start of
    ``torchattacks.APGD(seed=seed)``: the global generator seeded with ``seed``, U(-1, 1) noise for the whole
    batch of attacked samples, scaled per sample so that its largest coordinate is ``eps``."""

    def start(x0: torch.Tensor, eps: float, norm: str, mask, generators) -> torch.Tensor:
        if norm != "Linf" or mask is not None:
            raise ValueError("the reference start is L-inf without a mask")
        torch.manual_seed(seed)
        noise = 2 * torch.rand(x0.shape, device=x0.device) - 1
        return eps * noise / noise.flatten(1).abs().amax(dim=1).reshape(-1, *([1] * (x0.ndim - 1)))

    return start


def torchattacks_pgd_start(seed: int) -> Callable:
    """A drop-in for ``monai_adv.attacks.projections.random_start`` (L-inf) that draws the start of
    ``torchattacks.PGD`` called after ``torch.manual_seed(seed)``: U(-eps, eps) per coordinate for the batch."""

    def start(x0: torch.Tensor, eps: float, norm: str, mask, generators) -> torch.Tensor:
        if norm != "Linf" or mask is not None:
            raise ValueError("the reference start is L-inf without a mask")
        torch.manual_seed(seed)
        return torch.empty_like(x0).uniform_(-eps, eps)

    return start
