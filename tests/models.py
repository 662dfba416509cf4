# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Small models and synthetic data the tests build and train themselves (no downloads)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class TinyClassifier(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Conv -> ReLU -> global pool -> Linear, for 1, 2 or 3 spatial dims."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        conv, bn, pool = CONV[spatial_dims], BN[spatial_dims], POOL[spatial_dims]
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1),
            bn(width),
            nn.ReLU(),
            conv(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
            pool(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinySegmenter(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Conv to K channels: per-voxel logits for 1, 2 or 3 spatial dims."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        conv, bn = CONV[spatial_dims], BN[spatial_dims]
        self.net = nn.Sequential(
            conv(in_channels, width, 3, padding=1), bn(width), nn.ReLU(), conv(width, num_classes, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PerSample(nn.Module):
    """Runs the wrapped model on one sample at a time, so its arithmetic cannot depend on the batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i : i + 1]) for i in range(x.shape[0])])


class Noisy(nn.Module):
    """A randomized model: Gaussian noise on the input of every pass (what the sanity checks flag)."""

    def __init__(self, model: nn.Module, sigma: float = 0.05) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


class CallCounter(nn.Module):
    """Counts the calls of the wrapped network (its forward passes)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network, self.calls = network, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.network(x)


def bars_dataset(n: int, size: int = 16, seed: int = 0, classes: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, size, size) in [0, 1] of a faint bar in noise.

    Class 0 horizontal, 1 vertical, 2 diagonal, 3 (when ``classes`` is 4) anti-diagonal.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = 0.35 + 0.15 * torch.rand(n, 1, size, size, generator=g)
    idx = torch.arange(size)
    for i in range(n):
        pos = int(torch.randint(3, size - 3, (1,), generator=g))
        contrast = 0.25 + 0.2 * float(torch.rand(1, generator=g))
        if labels[i] == 0:
            images[i, 0, pos - 1 : pos + 1, :] += contrast
        elif labels[i] == 1:
            images[i, 0, :, pos - 1 : pos + 1] += contrast
        else:
            shift = pos - size // 2
            cols = (idx + shift).clamp(0, size - 1)
            if labels[i] == 3:
                cols = cols.flip(0)
            images[i, 0, idx, cols] += contrast
            images[i, 0, idx, (cols + 1).clamp(max=size - 1)] += contrast
    return images.clamp(0, 1), labels


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30, seed: int = 0) -> nn.Module:
    """Shuffled mini-batch Adam training; returns the model in eval mode. Seed the model's init yourself."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], 64):
            batch = perm[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


class CountingModel(nn.Module):
    """Classifies channel 0; reads a sample id from channel 1 (never perturbed) and counts its evaluations."""

    def __init__(self, n: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyClassifier(2, 1, 3)
        self.counts = torch.zeros(n, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 1, 0, 0].round().long()
        self.counts += torch.bincount(ids, minlength=self.counts.numel())
        return self.net(x[:, :1])
