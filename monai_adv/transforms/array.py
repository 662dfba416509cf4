# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Array transforms that perturb an image adversarially against a network."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from torch import nn

from monai_adv.attacks import Attack, attack_arguments, make_attack

__all__ = ["RandAdversarialPerturb", "AdversarialPerturb", "ADVERSARIAL_META_KEY"]

#: metadata key under which a perturbed MetaTensor records the attack (name, eps, norm, seed)
ADVERSARIAL_META_KEY = "adversarial"


def _expected_input(model: Any) -> Optional[Tuple[int, int]]:
    """(in_channels, spatial dims) of a network's first convolution, or None when it has none."""
    if not isinstance(model, nn.Module):
        return None
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return module.in_channels, module.weight.ndim - 2
    return None


def _check_layout(shape: Tuple[int, ...], batched: bool, expected: Optional[Tuple[int, int]]) -> None:
    """Raise a clear error when an image's axes cannot be what the network takes (no channel axis, a batch)."""
    if expected is None:
        return
    channels, dims = expected
    wanted = dims + (2 if batched else 1)
    if len(shape) == wanted:
        return
    form = "(N, C, *spatial)" if batched else "(C, *spatial)"
    hint = ""
    if not batched and len(shape) == dims:
        hint = " The image has no channel axis: add one (e.g. MONAI's EnsureChannelFirst, or img[None])."
    elif not batched and len(shape) == dims + 2:
        hint = " It looks like a batch: pass batched=True for plain tensors and arrays (N, C, *spatial)."
    raise ValueError(
        f"`img` of shape {tuple(shape)} does not fit the network, which takes {channels}-channel {dims}D images "
        f"{form} with {dims} spatial dims.{hint}"
    )


def _network_provider(network: Any) -> Callable[[], Callable]:
    """A zero-argument function returning the network to attack now."""
    if isinstance(network, nn.Module):
        return lambda: network
    if callable(network):
        try:
            takes_arguments = bool(inspect.signature(network).parameters)
        except (TypeError, ValueError):
            takes_arguments = True
        if not takes_arguments:
            return network  # a provider, e.g. ``lambda: trainer.network``: a callable with no parameters at all
        return lambda: network  # a model function taking the images (also ``f(x=None)``: it has a parameter)
    raise TypeError(
        "`network` must be an nn.Module, a callable returning logits, or a zero-argument callable returning the "
        f"current network, got {type(network).__name__}."
    )


class RandAdversarialPerturb(RandomizableTransform):
    """With probability ``prob``, replace an image by an adversarial example against ``network``.

    Works on one sample (C, *spatial) or on a batch (N, C, *spatial) - a MetaTensor collated by MONAI says it is
    a batch (``is_batch``); for plain tensors and arrays pass ``batched=True`` - with 1, 2 or 3 spatial dims, on
    numpy arrays, tensors and MetaTensors. The output has the input's type, device and metadata; a MetaTensor
    also records the attack under ``meta["adversarial"]`` (name, eps, norm, seed).

    The transform is randomizable even at ``prob=1``: its output depends on the network and on a random start,
    so ``CacheDataset`` must not cache it. The attack's seed is drawn from the transform's random state, so
    ``set_random_state`` makes both the choice and the perturbation reproducible; because every attack draws
    per-sample random numbers keyed by the sample, a sample gets the same perturbation alone or in a batch.

    Args:
        network: the network to attack: an ``nn.Module``, a model function ``f(images) -> logits``, or a
            callable with no parameters at all returning the current network (e.g. ``lambda: trainer.network``) to
            follow a model that is being trained. A callable with any parameter, even one with a default
            (``f(x=None)``), is a model function.
        attack: a registered attack name (see ``monai-adv attacks``) or an :class:`~monai_adv.attacks.Attack`
            instance (its model is replaced by ``network`` when ``network`` is given).
        attack_kwargs: keyword arguments for a named attack, e.g. ``{"eps": 4 / 255, "steps": 10}``. Unlike the
            attacks' own default, ``early_stop`` is False unless given: every sample is perturbed, also one the
            network already gets wrong.
        prob: probability of perturbing.
        value_range: intensity range of the images (``(lo, hi)``) or None for unbounded intensities.
        device: where the attack runs; default the network's device. The output returns to the input's device.
        batched: whether inputs are batches; None reads MetaTensor's ``is_batch`` (single sample otherwise). A
            plain (N, C, *spatial) tensor or array is a batch only with ``batched=True``; an image without a channel
            axis, or a batch passed as one sample, is an error naming the shape the network takes.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        network: Any,
        attack: Union[str, Attack] = "pgd",
        attack_kwargs: Optional[Mapping[str, Any]] = None,
        prob: float = 1.0,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        device: Optional[Union[str, torch.device]] = None,
        batched: Optional[bool] = None,
    ) -> None:
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"`prob` must be a number in [0, 1], got {prob!r}.")
        RandomizableTransform.__init__(self, prob)
        self.network = _network_provider(network) if network is not None else None
        if isinstance(attack, Attack):
            self.attack_name = attack.name
        elif isinstance(attack, str):
            self.attack_name = attack
        else:
            raise TypeError(f"`attack` must be an attack name or an Attack instance, got {type(attack).__name__}.")
        if self.network is None and not isinstance(attack, Attack):
            raise TypeError("`network` is required unless `attack` is an Attack instance built on a model.")
        self.attack = attack
        self.attack_kwargs: Dict[str, Any] = dict(attack_kwargs or {})
        self.value_range = value_range
        self.device = torch.device(device) if device is not None else None
        self.batched = batched
        self._seed = 0
        if isinstance(attack, str):
            self._build(lambda x: x)  # fail now, clearly, on an unknown name or argument

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def _build(self, model: Callable) -> Attack:
        if isinstance(self.attack, Attack):
            attack = self.attack.with_model(model) if self.network is not None else copy.copy(self.attack)
            attack.seed = self._seed
            return attack
        # a transform perturbs every sample it is applied to: no early stop unless asked for (an attack that
        # returns the per-sample worst case, such as AutoAttack, takes no such argument)
        kwargs = {"value_range": self.value_range, **self.attack_kwargs, "seed": self._seed}
        if "early_stop" in attack_arguments(self.attack):
            kwargs.setdefault("early_stop", False)
        return make_attack(self.attack, model, **kwargs)

    def _model_and_device(self, img: torch.Tensor):
        model = self.network() if self.network is not None else self.attack.model
        if not callable(model):
            raise TypeError(f"The network provider returned {type(model).__name__}, not a network.")
        device = self.device
        if device is None and isinstance(model, nn.Module):
            param = next(model.parameters(), None)
            device = param.device if param is not None else None
        return model, device or img.device

    def __call__(
        self,
        img: NdarrayOrTensor,
        label: Any,
        mask: Optional[NdarrayOrTensor] = None,
        randomize: bool = True,
    ) -> NdarrayOrTensor:
        """Perturb ``img`` (C, *spatial) or (N, C, *spatial) against ``label``, only where ``mask`` != 0."""
        if randomize:
            self.randomize()
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if not self._do_transform:
            return img_t
        if label is None:
            raise ValueError("`label` is required: the attack needs the labels of the image.")
        batched = self.batched if self.batched is not None else bool(getattr(img_t, "is_batch", False))
        model, device = self._model_and_device(img_t)
        x = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        y = convert_to_tensor(label, track_meta=False)
        m = None if mask is None else convert_to_tensor(mask, track_meta=False)
        _check_layout(tuple(x.shape), batched, _expected_input(model))
        if not batched:
            x, y = x[None], y[None]
            m = None if m is None else m[None]
        attack = self._build(model)
        x_adv = attack(x.to(device), y.to(device), mask=None if m is None else m.to(device))
        if not batched:
            x_adv = x_adv[0]
        out, *_ = convert_to_dst_type(x_adv.to(img_t.device), dst=img_t)
        if isinstance(out, MetaTensor):
            out.meta[ADVERSARIAL_META_KEY] = {
                "attack": self.attack_name,
                "eps": attack.eps,
                "norm": attack.norm,
                "seed": self._seed,
            }
        return out


class AdversarialPerturb(RandAdversarialPerturb):
    """Always replace an image by an adversarial example (:class:`RandAdversarialPerturb` with ``prob=1``).

    It stays randomizable - its output depends on a network and a random start - so ``CacheDataset`` never
    caches an adversarial sample.
    """

    def __init__(
        self,
        network: Any,
        attack: Union[str, Attack] = "pgd",
        attack_kwargs: Optional[Mapping[str, Any]] = None,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        device: Optional[Union[str, torch.device]] = None,
        batched: Optional[bool] = None,
    ) -> None:
        super().__init__(network, attack, attack_kwargs, 1.0, value_range, device, batched)
