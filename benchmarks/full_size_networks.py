# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The survey's architectures as MONAI builds them, untrained with a fixed seed, with a batch to attack.

2D classifiers: DenseNet-121 (CheXNet), ResNet-18 and EfficientNet-B0 (MobileNetV2 is not in MONAI), each with
1 and 3 input channels ("densenet121-1ch", ...). 3D segmenters: the UNet of MONAI's spleen tutorial and the
SegResNet of its BraTS tutorial (one input channel), run on whole volumes through ``SlidingWindowInferer`` wrapped
in :class:`~monai_adv.attacks.InfererModel` so that the attacks differentiate through the tiling.

The labels are the network's own clean predictions, so every sample starts correctly handled and an attack has
work to do on each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.layers import Norm
from monai.networks.nets import DenseNet121, EfficientNetBN, SegResNet, UNet, resnet18
from torch import nn

from monai_adv.attacks import InfererModel, eval_view

__all__ = [
    "ARCHS_2D",
    "ARCHS_3D",
    "Setup",
    "build_2d",
    "build_3d",
    "build_setup",
    "fit_batch_norm",
    "network_names",
    "parse_name",
    "sliding_window",
]

ARCHS_2D = ("densenet121", "resnet18", "efficientnet_b0")
ARCHS_3D = ("unet3d", "segresnet3d")


def build_2d(arch: str, channels: int, num_classes: int) -> nn.Module:
    if arch == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=channels, out_channels=num_classes)
    if arch == "resnet18":
        return resnet18(spatial_dims=2, n_input_channels=channels, num_classes=num_classes)
    if arch == "efficientnet_b0":
        return EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=channels, num_classes=num_classes
        )
    raise ValueError(f"unknown 2D architecture {arch!r}; one of {ARCHS_2D}")


def build_3d(arch: str, num_classes: int) -> nn.Module:
    if arch == "unet3d":  # MONAI's spleen segmentation tutorial
        return UNet(3, 1, num_classes, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2,
                    norm=Norm.BATCH)  # fmt: skip
    if arch == "segresnet3d":  # MONAI's BraTS tutorial, one input channel
        return SegResNet(3, init_filters=16, in_channels=1, out_channels=num_classes, blocks_down=(1, 2, 2, 4),
                         blocks_up=(1, 1, 1))  # fmt: skip
    raise ValueError(f"unknown 3D architecture {arch!r}; one of {ARCHS_3D}")


def network_names() -> List[str]:
    """Every network of the tables: ``<arch>-<channels>ch`` for the 2D ones, the 3D ones by name."""
    return [f"{arch}-{c}ch" for arch in ARCHS_2D for c in (1, 3)] + list(ARCHS_3D)


def parse_name(name: str) -> Tuple[str, Optional[int]]:
    """``"densenet121-3ch"`` -> ``("densenet121", 3)``; ``"unet3d"`` -> ``("unet3d", None)``."""
    if name in ARCHS_3D:
        return name, None
    arch, _, channels = name.rpartition("-")
    if arch not in ARCHS_2D or channels not in ("1ch", "3ch"):
        raise ValueError(f"unknown network {name!r}; one of {network_names()}")
    return arch, int(channels[0])


@dataclass
class Setup:
    """A network ready to attack: ``network`` (the module), ``model`` (what the attacks call: the network, or the
    network through the sliding-window inferer), a batch ``x`` in [0, 1] and its labels ``y``."""

    name: str
    network: nn.Module
    model: Callable
    x: torch.Tensor
    y: torch.Tensor
    segmentation: bool
    description: str


def fit_batch_norm(model: Callable, x: torch.Tensor, passes: int = 2) -> None:
    """Set the BatchNorm running statistics to those of ``x`` (a cumulative average over ``passes`` forward passes
    in train mode, without gradients), then put the model in eval mode.

    An untrained network keeps the initial statistics (mean 0, variance 1) whatever its activations, so its outputs
    can be of any scale: MONAI's EfficientNet-B0 gives logits near 1e-14, which float16 flushes to zero. With
    statistics fitted, activations are normalized as in a trained network and the logits are of order one.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def sliding_window(roi: int, overlap: float, sw_batch_size: int = 4) -> SlidingWindowInferer:
    return SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=sw_batch_size, overlap=overlap)


def build_setup(
    name: str,
    size: int = 224,
    volume: int = 96,
    roi: int = 48,
    overlap: float = 0.0,
    sw_batch_size: int = 4,
    images: int = 2,
    volumes: int = 1,
    num_classes: int = 10,
    seg_classes: int = 3,
    device: str = "cpu",
    seed: int = 0,
    fit_norm_stats: bool = False,
) -> Setup:
    """Build ``name`` (see :func:`network_names`) with weights from ``seed``, in eval mode, on ``device``, with a
    batch of ``images`` images ``size`` x ``size`` (2D) or ``volumes`` volumes ``volume``^3 tiled by ``roi``^3
    windows (3D); labels are the network's clean predictions. ``fit_norm_stats`` first fits the BatchNorm running
    statistics to the batch (:func:`fit_batch_norm`)."""
    arch, channels = parse_name(name)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    if channels is None:
        network = build_3d(arch, seg_classes).to(device).eval()
        model: Callable = InfererModel(network, sliding_window(roi, overlap, sw_batch_size))
        x = torch.rand(volumes, 1, volume, volume, volume, generator=generator)
        description = f"{volumes} x 1 x {volume}^3, {roi}^3 windows (overlap {overlap:g}, {sw_batch_size} per batch)"
    else:
        network = build_2d(arch, channels, num_classes).to(device).eval()
        model = network
        x = torch.rand(images, channels, size, size, generator=generator)
        description = f"{images} x {channels} x {size} x {size}, {num_classes} classes"
    x = x.to(device)
    if fit_norm_stats:
        fit_batch_norm(model, x)
    with torch.no_grad():
        logits = eval_view(model)(x)
    y = logits.argmax(dim=1, keepdim=channels is None)
    return Setup(name, network, model, x, y, channels is None, description)
