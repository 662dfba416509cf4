# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Transforms that add a fixed perturbation (e.g. a fitted universal adversarial perturbation) to images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence, Union

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_adv.attacks import FittedAttack, apply_perturbation
from monai_adv.attacks.validation import check_value_range

__all__ = ["ApplyPerturbation", "ApplyPerturbationd", "ApplyPerturbationD", "ApplyPerturbationDict"]

PerturbationLike = Union[torch.Tensor, str, Path, FittedAttack]


def _load_perturbation(perturbation: PerturbationLike) -> torch.Tensor:
    """The perturbation as a float tensor (C, *spatial): a tensor or array, a file written by ``torch.save``, or a
    fitted universal perturbation attack."""
    if isinstance(perturbation, FittedAttack):
        if perturbation.threat_model != "universal" or perturbation.fitted is None:
            raise ValueError(
                "`perturbation` must be a fitted universal perturbation (fit(loader) called), a tensor or a file; "
                f"got {type(perturbation).__name__} ({'not fitted' if perturbation.fitted is None else 'a patch'})."
            )
        tensor = perturbation.fitted
    elif isinstance(perturbation, (str, Path)):
        path = Path(perturbation)
        if not path.is_file():
            raise FileNotFoundError(f"`perturbation`: no file {path} (expected a tensor saved with torch.save).")
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    else:
        tensor = perturbation
    tensor = torch.as_tensor(tensor).detach()
    tensor = tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor
    if tensor.ndim < 2 or not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            "`perturbation` must be a finite floating-point tensor (C, *spatial), got "
            f"{tensor.dtype} of shape {tuple(tensor.shape)}."
        )
    return tensor


class ApplyPerturbation(Transform):
    """Add one fixed perturbation to an image: ``clip(img + perturbation * mask, value_range)``.

    The perturbation is the same for every image (e.g. a universal adversarial perturbation fitted by
    :class:`monai_adv.attacks.UniversalPerturbation`); it is deterministic, so the transform is not randomizable.
    Works on one image (C, *spatial) and on a batch (N, C, *spatial); a MetaTensor keeps its metadata.

    Example::

        uap = UniversalPerturbation(network, eps=4 / 255).fit(train_loader)
        torch.save(uap, "uap.pt")
        transform = ApplyPerturbation("uap.pt")

    Args:
        perturbation: a tensor (C, *spatial) of the images' shape, a file saved by ``torch.save`` holding one, or a
            fitted :class:`~monai_adv.attacks.UniversalPerturbation`.
        value_range: the images' intensity range, the result is clipped to it; None for no clipping.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, perturbation: PerturbationLike, value_range: Optional[Sequence[float]] = (0.0, 1.0)) -> None:
        self.perturbation = _load_perturbation(perturbation)
        self.value_range = check_value_range(value_range)

    def __call__(self, img: NdarrayOrTensor, mask: Optional[NdarrayOrTensor] = None) -> NdarrayOrTensor:
        """Perturb ``img``; only voxels where ``mask`` (broadcastable to ``img``) is non-zero change."""
        image = convert_to_tensor(img, track_meta=get_track_meta())
        shape = tuple(self.perturbation.shape)
        if tuple(image.shape[-len(shape) :]) != shape or image.ndim not in (len(shape), len(shape) + 1):
            raise ValueError(
                f"`img` of shape {tuple(image.shape)} does not take the perturbation of shape {shape}: expected "
                f"(C, *spatial) = {shape} or a batch (N, *{shape})."
            )
        plain = image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else image
        dtype = plain.dtype if plain.is_floating_point() else torch.float32
        batch = plain.to(dtype)[None] if image.ndim == len(shape) else plain.to(dtype)
        region = None
        if mask is not None:
            region = torch.as_tensor(convert_to_tensor(mask, track_meta=False), device=batch.device)
            region = region[None] if region.ndim == batch.ndim - 1 else region
            try:
                region = torch.broadcast_to(region, batch.shape)
            except RuntimeError:
                raise ValueError(
                    f"`mask` of shape {tuple(region.shape)} does not broadcast to the image {tuple(image.shape)}."
                ) from None
        out = apply_perturbation(batch, self.perturbation, region, self.value_range)
        out = out[0] if image.ndim == len(shape) else out
        return convert_to_dst_type(out, dst=image if isinstance(img, torch.Tensor) else img, dtype=out.dtype)[0]


class ApplyPerturbationd(MapTransform):
    """Dictionary version of :class:`ApplyPerturbation`: adds the perturbation to ``data[key]`` for each key, inside
    ``data[mask_key]`` when given.

    Args:
        keys: the image keys.
        perturbation: see :class:`ApplyPerturbation`.
        value_range: see :class:`ApplyPerturbation`.
        mask_key: a key holding the region allowed to change, or None.
        allow_missing_keys: don't raise for a missing key.
    """

    backend = ApplyPerturbation.backend

    def __init__(
        self,
        keys: KeysCollection,
        perturbation: PerturbationLike,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        mask_key: Optional[str] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ApplyPerturbation(perturbation, value_range)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key is not None and self.mask_key not in d:
            raise KeyError(f"`mask_key` {self.mask_key!r} is not a key of the data (keys: {sorted(map(str, d))}).")
        mask = None if self.mask_key is None else d[self.mask_key]
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], mask)
        return d


ApplyPerturbationD = ApplyPerturbationDict = ApplyPerturbationd
