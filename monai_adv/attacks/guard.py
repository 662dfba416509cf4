# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Run a model for an attack and leave it exactly as it was found."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.utils.checkpoint
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

    Two options trade compute for memory or precision for speed:

    - ``checkpoint=True`` runs each network call (each batch of windows of a sliding-window inferer) under
      gradient checkpointing: autograd keeps only the windows and their outputs, and recomputes one batch of
      windows' activations at a time during the backward pass. An attack step then holds the activations of
      one window batch (``sw_batch_size`` windows) instead of those of every window, plus buffers the size of
      the volume, for one more forward pass per step. The gradients are the same (the network is in eval mode
      under the attack).
    - ``amp_dtype=torch.bfloat16`` (or ``torch.float16``) runs the network under ``torch.autocast`` on the
      input's device and returns float32 logits. Faster on GPUs with tensor cores; check that the attack stays
      strong enough for your model (docs/performance.md shows such a check).

    Args:
        network: the network that maps an input (patch) to logits.
        inferer: a callable ``inferer(inputs, network) -> logits``, e.g. a ``monai.inferers.Inferer``; None calls
            the network directly.
        checkpoint: gradient checkpointing of each network call when gradients are needed.
        amp_dtype: None (full precision), ``torch.bfloat16`` or ``torch.float16`` for autocast.

    Example::

        from monai.inferers import SlidingWindowInferer
        model = InfererModel(unet, SlidingWindowInferer(roi_size=(64, 64, 64), sw_batch_size=4), checkpoint=True)
        x_adv = PGD(model, eps=4 / 255)(volume, label_map)
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Optional[Callable] = None,
        checkpoint: bool = False,
        amp_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if inferer is not None and not callable(inferer):
            raise TypeError(f"`inferer` must be callable as inferer(inputs, network), got {type(inferer).__name__}.")
        if amp_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"`amp_dtype` must be None, torch.bfloat16 or torch.float16, got {amp_dtype!r}.")
        self.network = network
        self.inferer = inferer
        self.checkpoint = bool(checkpoint)
        self.amp_dtype = amp_dtype

    def _call_network(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled() and inputs.requires_grad:
            return torch.utils.checkpoint.checkpoint(self.network, inputs, *args, use_reentrant=False, **kwargs)
        return self.network(inputs, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is None:
            return self._run(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            out = self._run(x)
        return out.float()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.inferer is None:
            return self._call_network(x)
        return self.inferer(x, self._call_network)
