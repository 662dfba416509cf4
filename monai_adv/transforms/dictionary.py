# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Dictionary transforms that perturb images adversarially against a network."""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

from monai_adv.attacks import Attack
from monai_adv.transforms.array import RandAdversarialPerturb

__all__ = [
    "RandAdversarialPerturbd",
    "RandAdversarialPerturbD",
    "RandAdversarialPerturbDict",
    "AdversarialPerturbd",
    "AdversarialPerturbD",
    "AdversarialPerturbDict",
]


class RandAdversarialPerturbd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`~monai_adv.transforms.RandAdversarialPerturb`.

    With probability ``prob``, replaces ``data[key]`` for each key by an adversarial example against
    ``network``, using ``data[label_key]`` as labels (and ``data[mask_key]`` as the region allowed to change).

    Example::

        train_transforms = Compose([
            LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), ScaleIntensityd(keys="image"),
            RandAdversarialPerturbd(keys="image", label_key="label", network=net, attack="pgd",
                                    attack_kwargs={"eps": 4 / 255, "steps": 10}, prob=0.5),
        ])

    Args:
        keys: keys of the images to perturb.
        label_key: key of the labels (class index, multi-hot, or label map).
        network: an ``nn.Module``, a model function, or a zero-argument callable returning the current network.
        attack: a registered attack name or an :class:`~monai_adv.attacks.Attack` instance.
        attack_kwargs: keyword arguments of a named attack.
        prob: probability of perturbing a sample.
        mask_key: optional key of a region of interest; only voxels where it is non-zero change.
        value_range: intensity range of the images, or None for unbounded intensities.
        device: where the attack runs (default: the network's device); outputs return to the input's device.
        batched: whether the data are batches (None: read MetaTensor's ``is_batch``).
        allow_missing_keys: don't raise for a missing image key.
    """

    backend = RandAdversarialPerturb.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        network: Any,
        attack: Union[str, Attack] = "pgd",
        attack_kwargs: Optional[Mapping[str, Any]] = None,
        prob: float = 1.0,
        mask_key: Optional[str] = None,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        device: Optional[Union[str, torch.device]] = None,
        batched: Optional[bool] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"`prob` must be a number in [0, 1], got {prob!r}.")
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.mask_key = label_key, mask_key
        self.perturb = RandAdversarialPerturb(network, attack, attack_kwargs, 1.0, value_range, device, batched)

    def set_random_state(
        self, seed: Optional[int] = None, state: Optional[np.random.RandomState] = None
    ) -> RandAdversarialPerturbd:
        super().set_random_state(seed, state)
        self.perturb.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> Dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        if self.label_key not in d:
            raise KeyError(f"`label_key` {self.label_key!r} is not in the data (keys: {list(d)}).")
        if self.mask_key is not None and self.mask_key not in d:
            raise KeyError(f"`mask_key` {self.mask_key!r} is not in the data (keys: {list(d)}).")
        mask = d[self.mask_key] if self.mask_key is not None else None
        self.perturb.randomize(None)
        for key in self.key_iterator(d):
            d[key] = self.perturb(d[key], d[self.label_key], mask=mask, randomize=False)
        return d


class AdversarialPerturbd(RandAdversarialPerturbd):
    """Dictionary version of :class:`~monai_adv.transforms.AdversarialPerturb`: always perturbs (``prob=1``),
    and stays randomizable so that ``CacheDataset`` never caches an adversarial sample."""

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        network: Any,
        attack: Union[str, Attack] = "pgd",
        attack_kwargs: Optional[Mapping[str, Any]] = None,
        mask_key: Optional[str] = None,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        device: Optional[Union[str, torch.device]] = None,
        batched: Optional[bool] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys,
            label_key,
            network,
            attack,
            attack_kwargs,
            1.0,
            mask_key,
            value_range,
            device,
            batched,
            allow_missing_keys,
        )


RandAdversarialPerturbD = RandAdversarialPerturbDict = RandAdversarialPerturbd
AdversarialPerturbD = AdversarialPerturbDict = AdversarialPerturbd
