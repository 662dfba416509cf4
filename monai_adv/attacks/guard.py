# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Run a model for an attack and leave it exactly as it was found."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.utils.checkpoint
from torch import nn

__all__ = ["model_state_guard", "eval_view", "model_dtype", "InfererModel"]

_ACTIVE = threading.local()  # per thread: id(model) -> the eval view in use by the innermost guard
_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def _unwrap(model: Any) -> Any:
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


def _frozen(param: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if param is None:
        return None
    return nn.Parameter(param.detach(), requires_grad=False)


_MODULE_KEYS = frozenset(nn.Module().__dict__)  # the state every nn.Module has: flags, parameters, hooks, children
_VIEW_CLASSES: Dict[type, type] = {}
_VIEW_LOCK = threading.Lock()


class _ViewMixin:
    """A module's eval view: its own flags, frozen parameters and child views; every other attribute is the
    original's, read and written through, so state a module keeps on purpose (a call counter, a cache) stays one."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_view_original"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        local = name in _MODULE_KEYS or isinstance(value, (nn.Module, nn.Parameter))
        if local or any(name in self.__dict__[key] for key in ("_parameters", "_buffers", "_modules")):
            super().__setattr__(name, value)
        else:
            setattr(self.__dict__["_view_original"], name, value)


def _view_class(cls: type) -> type:
    with _VIEW_LOCK:
        if cls not in _VIEW_CLASSES:
            _VIEW_CLASSES[cls] = type(cls.__name__, (_ViewMixin, cls), {"__module__": cls.__module__})
        return _VIEW_CLASSES[cls]


def _view_of(module: nn.Module, memo: Dict[int, nn.Module]) -> nn.Module:
    key = id(module)
    if key in memo:  # a module used twice (weight tying, shared blocks) stays one module in the view
        return memo[key]
    view = object.__new__(_view_class(type(module)))
    memo[key] = view
    state = {k: v for k, v in module.__dict__.items() if k in _MODULE_KEYS}  # same hook dicts, shared
    state["_view_original"] = module
    state["training"] = False
    state["_parameters"] = {name: _frozen(p) for name, p in module._parameters.items()}
    state["_buffers"] = dict(module._buffers)  # same buffer tensors
    state["_modules"] = {
        name: None if child is None else _view_of(_unwrap(child), memo) for name, child in module._modules.items()
    }
    view.__dict__.update(state)
    return view


def eval_view(model: Callable) -> Callable:
    """An eval-mode, frozen view of a network that shares its parameters and buffers and never changes it.

    Every submodule of the view is an instance of the network's class with its own ``training=False``, its own
    child views, and every parameter a ``requires_grad=False`` alias of the network's (same storage, no copy);
    hooks, buffers and every other attribute are the network's (read and written through). So calling the view
    is calling the network in eval mode with frozen parameters, while the network's own ``training`` and
    ``requires_grad`` flags, ``.grad`` fields and buffers are never written by the view. That makes attacks safe
    when several threads attack one network, or when one thread trains it while another attacks it: nothing an
    attack does is visible to them. A ``DistributedDataParallel`` or ``DataParallel`` wrapper is unwrapped (its
    synchronisation belongs to training). A ``torch.jit.ScriptModule`` cannot be viewed so and is returned as it
    is: script it in eval mode. A callable that is not a module (e.g. a closure over a network) is returned as it
    is: wrap the network with :class:`InfererModel` to have it viewed too.
    """
    model = _unwrap(model)
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return model
    return _view_of(model, {})


@contextmanager
def model_state_guard(model: Callable) -> Iterator[Callable]:
    """Yield the callable to run ``model`` with for an attack: its :func:`eval_view`; the model is never changed.

    Nested guards on the same model in one thread share one view. Inside the guard, code that only holds the
    original model (e.g. an attack's sub-attack) reaches the view through :func:`active_model`.

    Thread safety: the network is not written at all, so any number of threads may attack one network at once,
    also while another thread trains it. What the threads share are the parameters' storage and the buffers:
    an attack that overlaps an optimizer step sees the weights of that moment (autograd may then report an
    in-place modification), so craft training batches inside the training loop
    (:class:`monai_adv.handlers.AdversarialBatchHandler`) rather than in loader threads. Processes
    (``DataLoader`` workers, ``torchrun`` ranks) each hold their own copy of the network and are independent.
    """
    views = _ACTIVE.__dict__.setdefault("views", {})
    key = id(_unwrap(model))
    if key in views:
        yield views[key]
        return
    views[key] = eval_view(model)
    try:
        yield views[key]
    finally:
        del views[key]


def active_model(model: Callable) -> Callable:
    """The view of ``model`` that a :func:`model_state_guard` of this thread is using, else ``model`` itself."""
    return getattr(_ACTIVE, "views", {}).get(id(_unwrap(model)), model)


def model_dtype(model: Any) -> Optional[torch.dtype]:
    """The floating dtype of a network's first floating parameter (or buffer), None if it has none.

    Attacks compute in this dtype (an input of another floating dtype is cast to it) and return the input's dtype.
    """
    model = _unwrap(model)
    if not isinstance(model, nn.Module):
        return None
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


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
