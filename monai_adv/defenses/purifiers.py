# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Input purifiers: modules that map an image batch (N, C, *spatial), 1-3 spatial dims, to an image batch of the
same shape, dtype, device and value range, run in front of a classifier to remove adversarial perturbations.

Each declares whether gradient attacks may differentiate it (``differentiable``) and whether it draws random
numbers at each call (``randomized``); :mod:`monai_adv.defenses.purification` reads both to build the adaptive
attack (Athalye, Carlini & Wagner, ICML 2018, "Obfuscated gradients give a false sense of security"):

- :class:`MedianSmoothing`: median filter (Xu, Evans & Qi, NDSS 2018, "Feature squeezing"); non-differentiable.
- :class:`GaussianSmoothing`: Gaussian low-pass filter; differentiable.
- :class:`BitDepthReduction`: quantization to ``2**bits`` levels (Xu et al. 2018); non-differentiable.
- :class:`GaussianNoisePurifier`: Gaussian noise, optionally followed by another purifier (the noise-then-denoise
  pipeline of randomized defenses); randomized.
- :class:`LearnedDenoiser`: a small MONAI U-Net trained to predict the clean image (Liao et al., CVPR 2018,
  "Defense against adversarial attacks using high-level representation guided denoiser"); differentiable.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from monai.networks.layers import gaussian_1d, median_filter
from monai.networks.nets import UNet
from torch import nn

from monai_adv.attacks.seeding import sample_keys
from monai_adv.attacks.validation import check_int, check_positive, check_value_range
from monai_adv.defenses.smoothing import check_sigma, gaussian_noise

__all__ = [
    "Purifier",
    "MedianSmoothing",
    "GaussianSmoothing",
    "BitDepthReduction",
    "GaussianNoisePurifier",
    "LearnedDenoiser",
    "available_purifiers",
    "make_purifier",
    "purifier_class",
]


def _check_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (3, 4, 5):
        found = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} takes a floating-point batch (N, C, *spatial) with 1-3 spatial dims, got {found}.")


def _clamp(x: torch.Tensor, value_range: Optional[Tuple[float, float]]) -> torch.Tensor:
    return x if value_range is None else x.clamp(*value_range)


class Purifier(nn.Module):
    """Base of the purifiers: ``forward(x)`` keeps the shape, dtype, device and value range of ``x``.

    Attributes:
        differentiable: whether autograd's gradient of the purifier is a useful one for gradient attacks (False:
            the adaptive attack wraps it in :class:`~monai_adv.attacks.BPDA`).
        randomized: whether each call draws new random numbers (True: the adaptive attack averages ``samples``
            passes, :class:`~monai_adv.attacks.EoT`, and the evaluation scores several passes).
    """

    differentiable: bool = True
    randomized: bool = False

    def bpda_backward(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """A differentiable approximation whose gradient BPDA uses in place of a non-differentiable purifier's, or
        None for the identity (Athalye et al. 2018)."""
        return None


class MedianSmoothing(Purifier):
    """Median filter over a ``kernel_size`` window per channel, replicate-padded (MONAI's ``median_filter``): the
    "local smoothing" squeezer of Xu, Evans & Qi (NDSS 2018, "Feature squeezing").

    Declared non-differentiable: autograd's gradient passes only through the voxel each window selects, a sparse
    and piecewise gradient; the adaptive attack uses BPDA (Athalye et al. 2018) with the gradient of the mean over
    the same window (:meth:`bpda_backward`), which on the tests' bar images finds more adversarial examples than
    both the identity backward and autograd's gradient. The output holds values of the input, so the value range
    is kept.

    Args:
        kernel_size: odd window size, one int for every spatial dim or one per spatial dim.
    """

    differentiable = False

    def __init__(self, kernel_size: Union[int, Sequence[int]] = 3) -> None:
        super().__init__()
        sizes = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        for k in sizes:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"`kernel_size` must be odd integers >= 1 (one, or one per spatial dim), got {k!r}.")
        self.kernel_size = kernel_size if isinstance(kernel_size, int) else sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        dims = x.ndim - 2
        if not isinstance(self.kernel_size, int) and len(self.kernel_size) != dims:
            raise ValueError(f"`kernel_size` {self.kernel_size} has not one size per spatial dim of {tuple(x.shape)}.")
        return median_filter(x, kernel_size=self.kernel_size, spatial_dims=dims)

    def bpda_backward(self) -> nn.Module:
        """The mean over the median's window (replicate padding): the smooth approximation BPDA differentiates."""
        return _WindowMean(self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class _WindowMean(nn.Module):
    """Mean over a ``kernel_size`` window per channel, replicate-padded: a differentiable surrogate of the median."""

    def __init__(self, kernel_size: Union[int, Sequence[int]]) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = x.ndim - 2
        sizes = (self.kernel_size,) * dims if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        pad = [(k - 1) // 2 for k in reversed(sizes) for _ in range(2)]
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
        return pool(F.pad(x, pad, mode="replicate"), sizes, stride=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class GaussianSmoothing(Purifier):
    """Separable Gaussian filter (MONAI's ``gaussian_1d`` kernels, normalised to sum 1, replicate padding):
    each output voxel is a convex combination of input voxels, so the value range is kept. Differentiable.

    Args:
        sigma: standard deviation in voxels, one for every spatial dim or one per spatial dim.
        truncated: the kernel spans ``truncated`` standard deviations on each side.
        value_range: ``(lo, hi)`` the output is clamped to (removes rounding errors), or None.
    """

    def __init__(
        self,
        sigma: Union[float, Sequence[float]] = 1.0,
        truncated: float = 4.0,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        sigmas = (sigma,) if not isinstance(sigma, (tuple, list)) else tuple(sigma)
        self.sigma = tuple(check_positive(s, "sigma") for s in sigmas)
        self.truncated = check_positive(truncated, "truncated")
        self.value_range = check_value_range(value_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        dims = x.ndim - 2
        sigmas = self.sigma * dims if len(self.sigma) == 1 else self.sigma
        if len(sigmas) != dims:
            raise ValueError(f"`sigma` {self.sigma} has not one value per spatial dim of {tuple(x.shape)}.")
        out = x
        for d, s in enumerate(sigmas):
            kernel = gaussian_1d(torch.tensor(s), truncated=self.truncated, approx="erf").to(x)
            kernel = kernel / kernel.sum()
            radius = (kernel.numel() - 1) // 2
            shape = [1] * dims
            shape[d] = kernel.numel()
            weight = kernel.reshape(1, 1, *shape).repeat(x.shape[1], *([1] * (dims + 1)))
            pad = [0] * (2 * dims)
            pad[2 * (dims - 1 - d)] = pad[2 * (dims - 1 - d) + 1] = radius
            conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
            out = conv(F.pad(out, pad, mode="replicate"), weight, groups=x.shape[1])
        return _clamp(out, self.value_range)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, truncated={self.truncated:g}, value_range={self.value_range}"


class BitDepthReduction(Purifier):
    """Reduction of the bit depth to ``bits`` bits: ``lo + round((x - lo) / (hi - lo) * L) / L * (hi - lo)`` with
    ``L = 2**bits - 1`` levels above ``lo`` (Xu, Evans & Qi, NDSS 2018, "Feature squeezing"). The input is clamped
    to ``value_range`` first. Non-differentiable: its gradient is zero almost everywhere.

    Args:
        bits: bit depth (>= 1).
        value_range: ``(lo, hi)`` of the images, the interval the levels divide.
    """

    differentiable = False

    def __init__(self, bits: int = 4, value_range: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.bits = check_int(bits, "bits")
        if value_range is None:
            raise ValueError("`value_range` must be a pair (lo, hi): the quantization levels divide it.")
        self.value_range = check_value_range(value_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        lo, hi = self.value_range
        levels = 2**self.bits - 1
        unit = (x.clamp(lo, hi) - lo) / (hi - lo)
        return _clamp(torch.round(unit * levels) / levels * (hi - lo) + lo, self.value_range)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, value_range={self.value_range}"


class GaussianNoisePurifier(Purifier):
    """Gaussian noise ``N(0, sigma^2)`` added to every voxel, clipped to ``value_range``, then, optionally, another
    purifier ``then`` (e.g. a :class:`LearnedDenoiser` trained on that noise, as randomized defenses that drown the
    perturbation in noise and denoise, or :class:`BitDepthReduction`). Randomized; differentiable unless ``then``
    is not.

    Randomness: with ``seed`` None the noise comes from PyTorch's global generator (``torch.manual_seed``
    reproduces it). With an int ``seed``, the ``k``-th time the purifier sees an image (the same content) it draws
    for it from the stream keyed by the image's content, ``seed`` and ``k`` (see
    :func:`~monai_adv.defenses.smoothing.gaussian_noise`): repeated calls on one image (EoT) get independent draws,
    and the noise of a sample depends only on its own history, not on the rest of the batch, the global generator,
    the number of processes or where a resumed run restarted. :meth:`reset` forgets the images seen (the purifier
    remembers one digest per image it has seen since then).

    Args:
        sigma: noise standard deviation, in the units of the images.
        then: None, a purifier module or callable applied after the noise, or a purifier name for
            :func:`make_purifier` (its defaults).
        value_range: ``(lo, hi)`` the noisy image is clipped to, or None.
        seed: None, or an int for the purifier's own reproducible streams.
    """

    randomized = True

    def __init__(
        self,
        sigma: float = 0.1,
        then: Optional[Union[Callable[[torch.Tensor], torch.Tensor], str]] = None,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.value_range = check_value_range(value_range)
        self.sigma = check_sigma(sigma, self.value_range)
        if isinstance(then, str):
            then = make_purifier(then)
        if then is not None and not callable(then):
            raise TypeError(f"`then` must be None, a purifier name or a callable, got {type(then).__name__}.")
        self.then = then
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}.")
        self.seed = seed
        self._seen: Dict[bytes, int] = {}

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return self.then is None or bool(getattr(self.then, "differentiable", True))

    def bpda_backward(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The approximation of ``then`` (the noise and the clipping pass the gradient unchanged)."""
        approximation = getattr(self.then, "bpda_backward", None)
        return approximation() if callable(approximation) else None

    def reset(self) -> None:
        """Forget the images seen (with an int ``seed``: each image's next draw is its first one again)."""
        self._seen.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        if self.seed is None:
            noise = gaussian_noise(x, self.sigma, None)
        else:
            keys = sample_keys(x.detach().as_subclass(torch.Tensor))
            copies = []
            for key in keys:
                copies.append(self._seen.get(key, 0))
                self._seen[key] = copies[-1] + 1
            noise = gaussian_noise(x, self.sigma, self.seed, copy=copies, keys=keys)
        out = _clamp(x + noise, self.value_range)
        return out if self.then is None else self.then(out)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, value_range={self.value_range}, seed={self.seed}"


class LearnedDenoiser(Purifier):
    """A denoising network predicting the clean image: ``clamp(x + network(x))`` with ``residual`` (the network
    predicts the correction, as DnCNN, Zhang et al., IEEE TIP 2017), else ``clamp(network(x))``. Train it with
    :func:`~monai_adv.defenses.purification.train_denoiser` on Gaussian noise or on adversarial perturbations of a
    classifier (the pixel-guided denoiser of Liao et al., CVPR 2018). Differentiable.

    The default network is a small MONAI ``UNet`` (``channels``, ``strides``, ``num_res_units``) followed by a
    zero-initialised 1x1 convolution to the image channels, so that the untrained residual denoiser is the identity;
    the input is replicate-padded to a multiple of the product of ``strides`` and cropped back. The network runs in
    the dtype of its parameters and the output is cast back to the input's dtype; keep the module on the images'
    device.

    Args:
        network: None for the default U-Net, or any module mapping (N, C, *spatial) to the same shape.
        spatial_dims: 1, 2 or 3 (default network).
        in_channels: image channels (default network).
        channels: the U-Net's feature channels per level (default network).
        strides: the U-Net's downsampling strides, one fewer than ``channels`` (default network).
        num_res_units: residual units per U-Net block (default network).
        residual: predict the correction ``x_clean - x`` (True) or the clean image itself.
        value_range: ``(lo, hi)`` the output is clamped to, or None.
    """

    def __init__(
        self,
        network: Optional[nn.Module] = None,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        strides: Sequence[int] = (2,),
        num_res_units: int = 1,
        residual: bool = True,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        self.value_range = check_value_range(value_range)
        self.residual = bool(residual)
        self.divisor = 1
        if network is None:
            spatial_dims = check_int(spatial_dims, "spatial_dims")
            if spatial_dims > 3:
                raise ValueError(f"`spatial_dims` must be 1, 2 or 3, got {spatial_dims}.")
            if len(strides) != len(channels) - 1:
                raise ValueError(f"`strides` {tuple(strides)} must have one entry fewer than `channels`.")
            in_channels = check_int(in_channels, "in_channels")
            unet = UNet(
                spatial_dims,
                in_channels,
                channels[0],
                channels=tuple(channels),
                strides=tuple(strides),
                num_res_units=check_int(num_res_units, "num_res_units", minimum=0),
            )
            head = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1](channels[0], in_channels, 1)
            nn.init.zeros_(head.weight)  # the untrained residual denoiser is the identity
            nn.init.zeros_(head.bias)
            network = nn.Sequential(unet, head)
            self.divisor = math.prod(int(stride) for stride in strides)
        elif not isinstance(network, nn.Module):
            raise TypeError(f"`network` must be None or an nn.Module, got {type(network).__name__}.")
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        param = next(self.network.parameters(), None)
        inputs = x if param is None else x.to(param.dtype)
        spatial = x.shape[2:]
        pad = []
        for size in reversed(spatial):
            pad += [0, (-size) % self.divisor]
        padded = F.pad(inputs, pad, mode="replicate") if any(pad) else inputs
        out = self.network(padded)[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        if self.residual:
            out = inputs + out
        return _clamp(out, self.value_range).to(x.dtype)

    def extra_repr(self) -> str:
        return f"residual={self.residual}, value_range={self.value_range}"


_PURIFIERS: Dict[str, Type[nn.Module]] = {
    "median": MedianSmoothing,
    "gaussian": GaussianSmoothing,
    "bit_depth": BitDepthReduction,
    "noise": GaussianNoisePurifier,
    "denoiser": LearnedDenoiser,
}


def available_purifiers() -> Tuple[str, ...]:
    """The purifier names :func:`make_purifier` accepts, sorted."""
    return tuple(sorted(_PURIFIERS))


def purifier_class(name: str) -> type:
    """The class registered under ``name`` (e.g. to read the arguments it takes)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _PURIFIERS:
        raise ValueError(f"`name` must be one of {list(available_purifiers())}, got {name!r}.")
    return _PURIFIERS[key]


def make_purifier(name: str, **kwargs: Any) -> nn.Module:
    """Build a purifier by name: "median", "gaussian", "bit_depth", "noise" or "denoiser" (case-insensitive, "-"
    for "_"), e.g. ``make_purifier("bit_depth", bits=3)``.

    Raises:
        ValueError: for an unknown ``name``, listing the available ones.
        TypeError: for a keyword the purifier does not take.
    """
    cls = purifier_class(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(f"Purifier {name!r} ({cls.__name__}) takes no argument(s) {unknown}.")
    return cls(**kwargs)
