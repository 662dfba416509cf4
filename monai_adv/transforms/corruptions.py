# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Natural acquisition corruptions at five severities, built from MONAI's own random intensity transforms.

Each corruption is one MONAI transform applied with ``prob=1`` and with its random ranges collapsed to one value
per severity, so that severity 1 (mild) to 5 (severe) increases the corruption monotonically. Parameters that
are intensities are given in units of the width ``w = hi - lo`` of the intensity range ``value_range=(lo, hi)``;
sizes are in voxels or fractions of the image side (:data:`CORRUPTIONS` holds the values and their units):

==================  ==========================  ==========================================================
name                MONAI transform             parameter at severity 1, 2, 3, 4, 5
==================  ==========================  ==========================================================
gaussian_noise      RandGaussianNoise           std = 0.02, 0.04, 0.06, 0.08, 0.10 (x w)
rician_noise        RandRicianNoise             std = 0.02, 0.04, 0.06, 0.08, 0.10 (x w)
bias_field          RandBiasField               degree 3, coefficients in (-c, c), c = 0.1 ... 0.5
gibbs_ringing       RandGibbsNoise              alpha = 0.5, 0.6, 0.7, 0.75, 0.8
kspace_spike        RandKSpaceSpikeNoise        stripe amplitude = 0.05, 0.1, 0.15, 0.2, 0.3 (x w)
gaussian_blur       RandGaussianSmooth          sigma = 0.5, 0.75, 1.0, 1.5, 2.0 voxels
contrast            RandAdjustContrast          gamma = 1.5, 2.0, 2.5, 3.0, 3.5
coarse_dropout      RandCoarseDropout           1, 2, 4, 6, 8 holes of 0.1, 0.125, 0.15, 0.175, 0.2 x side
low_resolution      RandSimulateLowResolution   zoom = 0.7, 0.55, 0.45, 0.35, 0.25
==================  ==========================  ==========================================================

The k-space spike sets MONAI's log-intensity to ``ln(amplitude * w * n)`` with ``n`` the number of voxels of the
spatial shape, so that its stripe pattern has about the same amplitude on any image size. Gibbs ringing stops at
``alpha = 0.8``: beyond it, MONAI's k-space mask (centred half a voxel off the zero frequency on even sides) drops
the mean of small 3D images. The contrast change works, as MONAI's does, on each sample's own min and max. The
low resolution downsamples by area averaging (partial volume), which grows more steadily with the zoom than
nearest-neighbour sampling.

Corruptions whose result depends on where zero lies (Rician noise, the multiplicative bias field, the k-space
spike and the zero-padded Gaussian blur) are applied to ``x - lo`` and ``lo`` is added back, so that ``lo`` plays
the part of the background (a magnitude image's zero). Outputs are clipped to ``value_range``; with
``value_range=None`` each sample's own ``(min, max)`` takes its place and nothing is clipped.

:func:`corrupt` corrupts a batch with per-sample random streams seeded from each sample's content and a seed,
so a sample's result does not depend on its batch and every call is reproducible; a sample draws the same random
numbers at every severity, so its corruption grows with the severity. :class:`Corrupt` and
:class:`Corruptd` are the same corruptions as MONAI transforms for pipelines, driven by MONAI's random state.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from numbers import Integral
from types import MappingProxyType
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    MapTransform,
    RandAdjustContrast,
    RandBiasField,
    RandCoarseDropout,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandGibbsNoise,
    RandKSpaceSpikeNoise,
    RandomizableTransform,
    RandRicianNoise,
    RandSimulateLowResolution,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_adv.attacks.seeding import sample_keys
from monai_adv.attacks.validation import check_value_range

__all__ = [
    "SEVERITIES",
    "CORRUPTIONS",
    "CORRUPTION_NOTES",
    "CorruptionSpec",
    "corruption_names",
    "corruption_parameters",
    "make_corruption",
    "corrupt",
    "Corrupt",
    "Corruptd",
    "CorruptD",
    "CorruptDict",
]

#: the severity levels, from mild (1) to severe (5)
SEVERITIES: Tuple[int, ...] = (1, 2, 3, 4, 5)

#: what is left out of the set, and why
CORRUPTION_NOTES = (
    "Motion and ghosting artefacts are not included: MONAI has no transform for them, and they are left out to "
    "keep the dependencies to MONAI."
)


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption: the MONAI transform behind it and its parameters at each severity.

    Args:
        transform: name of the MONAI array transform (in ``monai.transforms``).
        description: a one-line description.
        units: the units of the parameters.
        levels: one JSON-serialisable parameter dict per severity 1..5.
        shifted: whether the transform is applied to ``x - lo`` (``lo`` added back afterwards).
    """

    transform: str
    description: str
    units: str
    levels: Tuple[Dict[str, Any], ...]
    shifted: bool = False


_WIDTH = "in units of the value range width w = hi - lo"

#: every corruption, in a fixed order: name -> :class:`CorruptionSpec`
CORRUPTIONS: Mapping[str, CorruptionSpec] = MappingProxyType(
    {
        "gaussian_noise": CorruptionSpec(
            "RandGaussianNoise",
            "additive zero-mean Gaussian noise",
            f"std: noise standard deviation {_WIDTH}",
            tuple({"std": s} for s in (0.02, 0.04, 0.06, 0.08, 0.10)),
        ),
        "rician_noise": CorruptionSpec(
            "RandRicianNoise",
            "Rician noise of a magnitude image (Gaussian noise on the real and imaginary parts)",
            f"std: standard deviation of each Gaussian component {_WIDTH}",
            tuple({"std": s} for s in (0.02, 0.04, 0.06, 0.08, 0.10)),
            shifted=True,
        ),
        "bias_field": CorruptionSpec(
            "RandBiasField",
            "smooth multiplicative intensity inhomogeneity (exp of a random Legendre polynomial)",
            "degree: polynomial degree; coeff_range: range of the uniform random coefficients (dimensionless)",
            tuple({"degree": 3, "coeff_range": [-c, c]} for c in (0.1, 0.2, 0.3, 0.4, 0.5)),
            shifted=True,
        ),
        "gibbs_ringing": CorruptionSpec(
            "RandGibbsNoise",
            "Gibbs ringing from truncating k-space to a centred ball",
            "alpha: fraction of the k-space radius removed, in [0, 1] (0: identity)",
            tuple({"alpha": a} for a in (0.5, 0.6, 0.7, 0.75, 0.8)),
        ),
        "kspace_spike": CorruptionSpec(
            "RandKSpaceSpikeNoise",
            "a spike at a random k-space location (per channel), seen as a stripe (herringbone) pattern",
            f"amplitude: image-space amplitude of the stripe pattern {_WIDTH}; MONAI's log-intensity is "
            "ln(amplitude * w * number of voxels of the spatial shape)",
            tuple({"amplitude": a} for a in (0.05, 0.1, 0.15, 0.2, 0.3)),
            shifted=True,
        ),
        "gaussian_blur": CorruptionSpec(
            "RandGaussianSmooth",
            "isotropic Gaussian blur",
            "sigma: standard deviation of the Gaussian kernel in voxels",
            tuple({"sigma": s} for s in (0.5, 0.75, 1.0, 1.5, 2.0)),
            shifted=True,
        ),
        "contrast": CorruptionSpec(
            "RandAdjustContrast",
            "gamma contrast change on the sample's own intensity range (darker mid-tones)",
            "gamma: exponent applied to the intensities rescaled to [0, 1] by the sample's own min and max",
            tuple({"gamma": g} for g in (1.5, 2.0, 2.5, 3.0, 3.5)),
        ),
        "coarse_dropout": CorruptionSpec(
            "RandCoarseDropout",
            "rectangular holes filled with the range minimum (signal dropout)",
            "holes: number of holes (they may overlap); size: side of each hole as a fraction of each spatial "
            "side, rounded, at least one voxel",
            tuple({"holes": h, "size": f} for h, f in ((1, 0.1), (2, 0.125), (4, 0.15), (6, 0.175), (8, 0.2))),
        ),
        "low_resolution": CorruptionSpec(
            "RandSimulateLowResolution",
            "area-averaging downsampling and linear upsampling back (a low-resolution acquisition)",
            "zoom: factor applied to every spatial side before resampling back to the original size",
            tuple({"zoom": z} for z in (0.7, 0.55, 0.45, 0.35, 0.25)),
        ),
    }
)


def _check_name(name: Any, arg: str = "name") -> str:
    if not isinstance(name, str) or name.strip().lower() not in CORRUPTIONS:
        raise ValueError(f"`{arg}` must be one of {list(CORRUPTIONS)}, got {name!r}.")
    return name.strip().lower()


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, Integral) or int(severity) not in SEVERITIES:
        raise ValueError(f"`severity` must be one of {list(SEVERITIES)}, got {severity!r}.")
    return int(severity)


def corruption_names(names: Union[str, Sequence[str]] = "all") -> List[str]:
    """The corruption names selected by ``names``, checked, in the order given.

    Args:
        names: ``"all"`` for every corruption in the order of :data:`CORRUPTIONS`, or a list, a tuple or a
            comma-separated string of names.

    Raises:
        ValueError: naming ``corruptions`` for an unknown, repeated or missing name.
    """
    valid = list(CORRUPTIONS)
    if isinstance(names, str):
        if names.strip().lower() == "all":
            return valid
        items: List[Any] = [part for part in names.split(",") if part.strip()]
    elif isinstance(names, (list, tuple)):
        items = list(names)
    else:
        raise ValueError(
            f'`corruptions` must be "all", a list of names or a comma-separated string, got {type(names).__name__}.'
        )
    chosen: List[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name not in CORRUPTIONS:
            raise ValueError(f"`corruptions` has an unknown name {item!r}; valid names are {valid}.")
        if name in chosen:
            raise ValueError(f"`corruptions` names {name!r} more than once.")
        chosen.append(name)
    if not chosen:
        raise ValueError(f'`corruptions` selects no corruption; give "all" or names among {valid}.')
    return chosen


def corruption_parameters(name: str, severity: int) -> Dict[str, Any]:
    """The parameters of corruption ``name`` at ``severity`` (a JSON-ready copy; units in :data:`CORRUPTIONS`).

    Args:
        name: a corruption name (see :data:`CORRUPTIONS`).
        severity: one of :data:`SEVERITIES`.
    """
    spec = CORRUPTIONS[_check_name(name)]
    return copy.deepcopy(spec.levels[_check_severity(severity) - 1])


def _side_fraction(fraction: float, side: int) -> int:
    """``fraction`` of ``side`` voxels, rounded half up, at least 1."""
    return max(1, min(side, int(math.floor(fraction * side + 0.5))))


def _build(
    name: str, params: Mapping[str, Any], spatial_shape: Sequence[int], lo: float, width: float
) -> RandomizableTransform:
    """The MONAI transform (``prob=1``) of a corruption for images of ``spatial_shape`` and range (lo, lo + width)."""
    if name == "gaussian_noise":
        return RandGaussianNoise(prob=1.0, mean=0.0, std=params["std"] * width, dtype=None, sample_std=False)
    if name == "rician_noise":
        std = params["std"] * width
        return RandRicianNoise(prob=1.0, mean=0.0, std=std, relative=False, sample_std=False, dtype=None)
    if name == "bias_field":
        return RandBiasField(degree=params["degree"], coeff_range=tuple(params["coeff_range"]), dtype=None, prob=1.0)
    if name == "gibbs_ringing":
        return RandGibbsNoise(prob=1.0, alpha=(params["alpha"], params["alpha"]))
    if name == "kspace_spike":
        log_intensity = math.log(params["amplitude"] * width * float(np.prod(spatial_shape)))
        return RandKSpaceSpikeNoise(prob=1.0, intensity_range=(log_intensity, log_intensity), channel_wise=True)
    if name == "gaussian_blur":
        sigma = (params["sigma"], params["sigma"])
        return RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=1.0)
    if name == "contrast":
        return RandAdjustContrast(prob=1.0, gamma=(params["gamma"], params["gamma"]))
    if name == "coarse_dropout":
        size = [_side_fraction(params["size"], side) for side in spatial_shape]
        return RandCoarseDropout(holes=params["holes"], spatial_size=size, fill_value=lo, prob=1.0)
    if name == "low_resolution":
        upsample = "bilinear" if len(spatial_shape) == 2 else "trilinear"
        zoom = (params["zoom"], params["zoom"])
        return RandSimulateLowResolution(prob=1.0, downsample_mode="area", upsample_mode=upsample, zoom_range=zoom)
    raise ValueError(f"`name` must be one of {list(CORRUPTIONS)}, got {name!r}.")  # pragma: no cover


def _sample_range(img: torch.Tensor, value_range: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """(lo, w) of the range: ``value_range``, or the sample's own min and max (w = 1 for a constant sample)."""
    if value_range is not None:
        return value_range[0], value_range[1] - value_range[0]
    lo, hi = float(img.min()), float(img.max())
    return lo, (hi - lo) if hi > lo else 1.0


class _RangedCorruption(RandomizableTransform):
    """A corruption whose MONAI transform depends on the image's shape or range, or that works on ``x - lo``.

    The MONAI transform is built for each image and draws from this transform's random state, so
    ``set_random_state`` makes it reproducible. Works on one sample (C, *spatial); returns a plain tensor,
    not clipped.

    Args:
        name: a corruption name.
        severity: one of :data:`SEVERITIES`.
        value_range: ``(lo, hi)``, or None for each sample's own min and max.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, name: str, severity: int, value_range: Optional[Tuple[float, float]]) -> None:
        RandomizableTransform.__init__(self, 1.0)
        self.name, self.severity, self.value_range = name, severity, value_range
        self.spec = CORRUPTIONS[name]
        self.parameters = self.spec.levels[severity - 1]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        img_t = convert_to_tensor(img, track_meta=False)
        lo, width = _sample_range(img_t, self.value_range)
        transform = _build(self.name, self.parameters, tuple(img_t.shape[1:]), lo, width)
        transform.set_random_state(state=self.R)
        shift = lo if self.spec.shifted else 0.0
        out = convert_to_tensor(transform(img_t - shift if shift else img_t), track_meta=False)
        return out + shift if shift else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, severity={self.severity}, value_range={self.value_range})"


def make_corruption(
    name: str, severity: int, value_range: Optional[Sequence[float]] = (0.0, 1.0)
) -> RandomizableTransform:
    """The transform (``prob=1``) applying corruption ``name`` at ``severity`` to one sample (C, *spatial).

    It is the MONAI array transform itself (e.g. ``RandGaussianNoise(prob=1, std=0.06)`` for
    ``("gaussian_noise", 3)`` on the range (0, 1)) when its parameters depend on nothing but the range, and a small
    randomizable wrapper around it otherwise: when a parameter depends on the image's size (``kspace_spike``,
    ``coarse_dropout``) or number of spatial dims (``low_resolution``), when the transform works on ``x - lo``
    with ``lo != 0``, or when ``value_range`` is None. Either way ``set_random_state`` makes it reproducible.
    Its output is not clipped (:func:`corrupt`, :class:`Corrupt` and :class:`Corruptd` clip).

    Args:
        name: a corruption name (see :data:`CORRUPTIONS`).
        severity: one of :data:`SEVERITIES`.
        value_range: intensity range ``(lo, hi)`` of the images, or None for each sample's own min and max.
    """
    name, severity = _check_name(name), _check_severity(severity)
    value_range = check_value_range(value_range)
    spec = CORRUPTIONS[name]
    fixed = value_range is not None and not (spec.shifted and value_range[0] != 0.0)
    if fixed and name not in ("kspace_spike", "coarse_dropout", "low_resolution"):
        lo, hi = value_range  # type: ignore[misc]
        return _build(name, spec.levels[severity - 1], (), lo, hi - lo)
    return _RangedCorruption(name, severity, value_range)


def _check_sample(img: torch.Tensor, arg: str) -> None:
    if img.ndim not in (3, 4):
        raise ValueError(
            f"`{arg}` must be one sample (C, *spatial) with 2 or 3 spatial dims, got shape {tuple(img.shape)}."
        )
    if img.is_floating_point() and not bool(torch.isfinite(img).all()):
        raise ValueError(f"`{arg}` contains NaN or Inf values.")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _apply(transform: Any, img: torch.Tensor, value_range: Optional[Tuple[float, float]]) -> torch.Tensor:
    """``transform`` applied to a copy of one plain CPU sample (some MONAI transforms write into their input), as a
    plain tensor of the sample's dtype, clipped."""
    out = convert_to_tensor(transform(img.clone()), track_meta=False).to(img.dtype)
    if value_range is not None:
        out = out.clamp(value_range[0], value_range[1])
    return out


def _sample_seed(key: bytes, seed: int, name: str) -> int:
    """A 32-bit seed from a sample's content key, the seed and the corruption name (not the severity)."""
    material = key + (seed % 2**128).to_bytes(16, "little") + name.encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=4).digest(), "little")


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
) -> torch.Tensor:
    """Corrupt each sample of the batch ``x`` with corruption ``name`` at ``severity``, reproducibly.

    Each sample draws from its own random stream, seeded by its content (:func:`~monai_adv.attacks.seeding.
    sample_keys` of the sample on the CPU), ``seed`` and ``name``: a sample gets the same corruption alone or at
    any place in any batch, on any device, and the same call returns the same tensor. The stream does not depend on
    the severity, so a sample draws the same random numbers at every severity and its corruption grows with it
    (the same noise pattern, bias field or spike location, scaled up). The MONAI transforms run on the CPU; the
    result returns to ``x``'s device and dtype (float16 and bfloat16 are computed in float32), is clipped to
    ``value_range`` and carries no gradient. A MetaTensor gives a MetaTensor with its metadata.

    Args:
        x: a floating batch (N, C, *spatial) with 2 or 3 spatial dims, finite.
        name: a corruption name (see :data:`CORRUPTIONS`).
        severity: one of :data:`SEVERITIES`.
        seed: an integer seed.
        value_range: intensity range ``(lo, hi)``, or None: each sample's own min and max set the scale of the
            parameters, and nothing is clipped.

    Raises:
        ValueError: naming ``name`` or ``severity`` for an unknown one, or ``x`` for a wrong shape or a NaN/Inf.
        TypeError: naming ``x`` when it is not a floating tensor, or ``seed`` when it is not an integer.
    """
    transform = make_corruption(name, severity, value_range)
    name, severity = _check_name(name), _check_severity(severity)
    value_range = check_value_range(value_range)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"`seed` must be an integer, got {type(seed).__name__}.")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point torch.Tensor (N, C, *spatial), got {getattr(x, 'dtype', x)!r}.")
    if x.ndim not in (4, 5):
        raise ValueError(
            f"`x` must be a batch (N, C, *spatial) with 2 or 3 spatial dims, got shape {tuple(x.shape)}; "
            "add the batch dim with `x[None]` for a single sample."
        )
    host = (x.as_tensor() if isinstance(x, MetaTensor) else x).detach().cpu()
    if not bool(torch.isfinite(host).all()):
        raise ValueError("`x` contains NaN or Inf values.")
    if host.shape[0] == 0:
        return x.detach().clone()
    keys = sample_keys(host)
    work = host.to(_work_dtype(host.dtype))
    rows = []
    for key, sample in zip(keys, work):
        transform.set_random_state(seed=_sample_seed(key, int(seed), name))
        rows.append(_apply(transform, sample, value_range))
    out = torch.stack(rows).to(device=x.device, dtype=x.dtype)
    if isinstance(x, MetaTensor):
        out, *_ = convert_to_dst_type(out, dst=x)
    return out


def _check_prob(prob: Any) -> float:
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"`prob` must be a number in [0, 1], got {prob!r}.")
    return float(prob)


class Corrupt(RandomizableTransform):
    """With probability ``prob``, apply corruption ``name`` at ``severity`` to one sample (C, *spatial).

    Works on numpy arrays, tensors and MetaTensors with 2 or 3 spatial dims and any number of channels. As MONAI's
    transforms do, the output is a tensor (a MetaTensor keeping the input's metadata while MONAI tracks metadata) on
    the input's device, of the input's floating dtype (float32 for other inputs), clipped to ``value_range``.
    The corruption draws from this transform's random state, so ``set_random_state`` makes a pipeline reproducible;
    ``randomize=False`` repeats the draws of the last ``randomize()``.

    Example::

        Compose([LoadImage(image_only=True), EnsureChannelFirst(), ScaleIntensity(),
                 Corrupt("bias_field", severity=3, prob=0.5)])

    Args:
        name: a corruption name (see :data:`CORRUPTIONS`).
        severity: one of :data:`SEVERITIES`.
        value_range: intensity range ``(lo, hi)`` of the images, or None for each sample's own min and max (not
            clipped).
        prob: probability of corrupting a sample.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, name: str, severity: int, value_range: Optional[Sequence[float]] = (0.0, 1.0), prob: float = 1.0
    ) -> None:
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.name, self.severity = _check_name(name), _check_severity(severity)
        self.value_range = check_value_range(value_range)
        self.transform = make_corruption(self.name, self.severity, self.value_range)
        self.transform.set_random_state(state=self.R)
        self._state: Optional[tuple] = None

    def set_random_state(self, seed: Optional[int] = None, state: Optional[np.random.RandomState] = None) -> Corrupt:
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._state = self.R.get_state()

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Corrupt ``img`` (C, *spatial); ``randomize=False`` repeats the last draws."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        plain = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        _check_sample(plain, "img")
        if randomize or self._state is None:
            self.randomize()
        if not self._do_transform:
            return img_t
        self.R.set_state(self._state)
        work = plain.detach().cpu().to(_work_dtype(plain.dtype))
        out = _apply(self.transform, work, self.value_range).to(plain.device)
        dtype = img_t.dtype if img_t.is_floating_point() else torch.float32
        out, *_ = convert_to_dst_type(out, dst=img_t, dtype=dtype)
        return out


class Corruptd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`Corrupt`: with probability ``prob``, corrupt ``data[key]`` for each key.

    All keys get the same random draws (as MONAI's dictionary transforms do), so images of one shape get the same
    noise, field or holes.

    Example::

        Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), ScaleIntensityd(keys="image"),
                 Corruptd(keys="image", name="gaussian_noise", severity=2, prob=0.5)])

    Args:
        keys: keys of the images to corrupt.
        name: a corruption name (see :data:`CORRUPTIONS`).
        severity: one of :data:`SEVERITIES`.
        value_range: intensity range ``(lo, hi)`` of the images, or None for each sample's own min and max.
        prob: probability of corrupting a sample.
        allow_missing_keys: don't raise for a missing key.
    """

    backend = Corrupt.backend

    def __init__(
        self,
        keys: KeysCollection,
        name: str,
        severity: int,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.corrupt = Corrupt(name, severity, value_range, prob=1.0)

    def set_random_state(self, seed: Optional[int] = None, state: Optional[np.random.RandomState] = None) -> Corruptd:
        super().set_random_state(seed, state)
        self.corrupt.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> Dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        self.corrupt.randomize(None)
        for key in self.key_iterator(d):
            d[key] = self.corrupt(d[key], randomize=False)
        return d


CorruptD = CorruptDict = Corruptd
