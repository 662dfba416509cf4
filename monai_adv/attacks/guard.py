# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Run a model for an attack and leave it exactly as it was found."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["model_state_guard", "InfererModel"]


@contextmanager
def model_state_guard(model: Callable) -> Iterator[None]:
    """Put an ``nn.Module`` in eval mode with frozen parameters for the duration, then restore it exactly.

    The ``training`` flag of every submodule and the ``requires_grad`` flag of every parameter are
    recorded and written back on exit (also on error). In eval mode BatchNorm uses, and does not update,
    its running statistics; frozen parameters make autograd skip their gradients, which the attack never
    needs, and keep their ``.grad`` fields untouched. A callable that is not a module is left as it is:
    wrap a network with :class:`InfererModel` to have it guarded.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    params = list(model.parameters())
    training = [m.training for m in modules]
    requires_grad = [p.requires_grad for p in params]
    try:
        for m in modules:
            m.training = False
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, flag in zip(modules, training):
            m.training = flag
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)


class InfererModel(nn.Module):
    """A network run through an inferer, as one module an attack can differentiate and guard.

    Gradients flow through the inferer, e.g. MONAI's ``SlidingWindowInferer`` over a 3D volume, so an attack
    on ``InfererModel(network, inferer)`` perturbs the whole volume against patch-based inference.

    Args:
        network: the network that maps an input (patch) to logits.
        inferer: a callable ``inferer(inputs, network) -> logits``, e.g. a ``monai.inferers.Inferer``.

    Example::

        from monai.inferers import SlidingWindowInferer
        model = InfererModel(unet, SlidingWindowInferer(roi_size=(64, 64, 64), sw_batch_size=4))
        x_adv = PGD(model, eps=4 / 255)(volume, label_map)
    """

    def __init__(self, network: nn.Module, inferer: Callable) -> None:
        super().__init__()
        if not callable(inferer):
            raise TypeError(f"`inferer` must be callable as inferer(inputs, network), got {type(inferer).__name__}.")
        self.network = network
        self.inferer = inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.network)
