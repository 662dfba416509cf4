# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The embedded demo data set: real brain anatomy (MNI ICBM152 2009a), simulated lesions."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import Dataset, MetaTensor

from monai_adv.data.lesions import acquisition, apply_lesion, lesion_mask, random_warp

__all__ = ["BrainLesionDataset", "load_anatomy", "TASKS", "SPLITS"]

ASSET = Path(__file__).parent / "assets" / "mni152_2mm.npz"
TASKS = ("classification", "multiclass", "multilabel", "segmentation")
SPLITS = ("train", "val", "test")
# slices (2D) or patch centres (3D) are dealt to the splits by z index modulo 5: no anatomy is shared
_SPLIT_RESIDUES = {"train": (0, 1, 2), "val": (3,), "test": (4,)}
_DEFAULT_SAMPLES = {2: {"train": 2000, "val": 400, "test": 400}, 3: {"train": 120, "val": 40, "test": 40}}


@lru_cache(maxsize=1)
def load_anatomy() -> Dict[str, torch.Tensor]:
    """The embedded template as float tensors in [0, 1]: t1, gm, wm, csf, mask (98, 116, 94), and its affine."""
    with np.load(ASSET) as data:
        out = {k: torch.from_numpy(data[k].astype(np.float32) / (1.0 if k == "mask" else 255.0)) for k in data}
    out["affine"] = out["affine"].double()
    return out


def _generator(seed: int, split: str, task: str, dims: int, index: int) -> torch.Generator:
    key = f"{seed}/{split}/{task}/{dims}/{index}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)


class BrainLesionDataset(Dataset):
    """Brain MRI with simulated lesions on real anatomy, as a MONAI ``Dataset`` of dicts.

    Each sample is drawn from the MNI ICBM152 2009a T1 template (an average of healthy adult brains, shipped
    with the package at 2 mm) by a seeded procedure: an axial slice (2D) or a cubic patch (3D), a random
    rotation, scaling and elastic deformation, and then, per the task, a lesion - an irregular, textured
    ellipse or ellipsoid of random size inside grey or white matter, hyper- or hypo-intense with random
    contrast - and acquisition effects (bias field, Rician-like noise). The lesions are simulated: this is a
    demo and test set, not a diagnostic data set.

    Keys: ``"image"`` (1, *spatial) float32 MetaTensor in [0, 1]; ``"label"``; ``"seg"`` (1, *spatial) float32
    lesion mask (MetaTensor). ``meta["filename_or_obj"]`` names the sample.
    Labels by task:

        - "classification": lesion present (1) or absent (0), int64; half of the samples have a lesion.
        - "multiclass": none (0), hyper-intense (1), hypo-intense (2), int64, a third each.
        - "multilabel": float32 [lesion in left hemisphere, lesion in right hemisphere], each half of the time.
        - "segmentation": the lesion mask (1, *spatial) float32 (70 % of the samples have a lesion).

    Splits take disjoint random streams and disjoint axial slices (2D) or patch centres (3D, dealt by z index),
    so they never share a sample; 3D patches of different splits, all cut from the one template, still overlap
    in anatomy. A sample depends only on (seed, split, task, spatial_dims, index).

    Args:
        split: "train", "val" or "test".
        task: "classification", "multiclass", "multilabel" or "segmentation".
        spatial_dims: 2 (axial slices) or 3 (cubic patches).
        num_samples: samples in the split; default 2000/400/400 (2D) or 120/40/40 (3D).
        image_size: side of the output; default 64 (2D) or 48 (3D).
        seed: seed of the whole set.
        transform: MONAI transforms applied to each sample dict.

    Example::

        from monai.data import DataLoader
        train = BrainLesionDataset("train", task="classification", spatial_dims=2)
        loader = DataLoader(train, batch_size=32, shuffle=True)
    """

    def __init__(
        self,
        split: str = "train",
        task: str = "classification",
        spatial_dims: int = 2,
        num_samples: Optional[int] = None,
        image_size: Optional[int] = None,
        seed: int = 0,
        transform: Optional[Callable] = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"`spatial_dims` must be 2 or 3, got {spatial_dims!r}.")
        if num_samples is None:
            num_samples = _DEFAULT_SAMPLES[spatial_dims][split]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"`num_samples` must be an integer >= 0, got {num_samples!r}.")
        self.split, self.task, self.spatial_dims, self.seed = split, task, spatial_dims, int(seed)
        self.image_size = image_size or (64 if spatial_dims == 2 else 48)
        if self.image_size < 16:
            raise ValueError(f"`image_size` must be at least 16, got {self.image_size}.")
        anatomy = load_anatomy()
        self._maps = torch.stack([anatomy[k] for k in ("t1", "gm", "wm", "csf", "mask")])  # (5, X, Y, Z)
        self._positions = self._split_positions()
        super().__init__(data=[self.sample(i) for i in range(num_samples)], transform=transform)

    def _split_positions(self) -> List[int]:
        mask = self._maps[4]
        area = mask.sum(dim=(0, 1))
        usable = (area > 0.35 * area.max()).nonzero()[:, 0].tolist()
        return [z for z in usable if z % 5 in _SPLIT_RESIDUES[self.split]]

    def _anatomy(self, g: torch.Generator) -> torch.Tensor:
        """Warped maps (5, *size) of a random slice (2D) or patch (3D) of this split."""
        z = self._positions[int(torch.randint(len(self._positions), (1,), generator=g))]
        if self.spatial_dims == 2:
            plane = self._maps[..., z]  # (5, X, Y)
            side = max(plane.shape[1:])
            pad = [(side - plane.shape[2]) // 2, side - plane.shape[2] - (side - plane.shape[2]) // 2]
            pad += [(side - plane.shape[1]) // 2, side - plane.shape[1] - (side - plane.shape[1]) // 2]
            return random_warp(F.pad(plane, pad), self.image_size, g, scale=(1.1, 1.3))
        side = int(round(self.image_size * 1.15))
        brain = self._maps[4, :, :, z].nonzero()
        cx, cy = brain[int(torch.randint(brain.shape[0], (1,), generator=g))].tolist()
        half = side // 2
        padded = F.pad(self._maps, [half] * 6)
        cube = padded[:, cx : cx + side, cy : cy + side, z : z + side]
        return random_warp(cube, self.image_size, g, rotate=8.0, scale=(0.95, 1.05))

    def _lesion(self, maps: torch.Tensor, g: torch.Generator, region: Optional[torch.Tensor]) -> torch.Tensor:
        tissue = maps[1] + maps[2]
        for attempt in range(8):
            radius = (3.5 + 4.5 * float(torch.rand((), generator=g))) * (1.0 if self.spatial_dims == 2 else 0.9)
            mask = lesion_mask(tissue, g, radius + attempt, region)
            if mask is not None and float((mask > 0.5).sum()) >= (4 if self.spatial_dims == 2 else 12):
                return mask
        return torch.zeros_like(tissue)

    def sample(self, index: int) -> Dict[str, torch.Tensor]:
        """Generate sample ``index`` of this split (deterministic)."""
        g = _generator(self.seed, self.split, self.task, self.spatial_dims, index)
        maps = self._anatomy(g)
        image, brain = maps[0].clone(), maps[4]
        lesions: List[torch.Tensor] = []
        contrast_sign = 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0
        if self.task == "classification":
            present = index % 2 == 1
            label = torch.tensor(int(present))
            if present:
                lesions.append(self._lesion(maps, g, None))
        elif self.task == "multiclass":
            kind = index % 3
            label = torch.tensor(kind)
            if kind:
                contrast_sign = 1.0 if kind == 1 else -1.0
                lesions.append(self._lesion(maps, g, None))
        elif self.task == "multilabel":
            sides = [(index // 2) % 2 == 1, index % 2 == 1]  # all four combinations, a quarter each
            label = torch.tensor([float(s) for s in sides])
            x = torch.arange(self.image_size).reshape(-1, *([1] * (self.spatial_dims - 1))).expand(maps.shape[1:])
            halves = [x < self.image_size // 2 - 1, x > self.image_size // 2]  # left, right (array axis 0 = x)
            for present, region in zip(sides, halves):
                if present:
                    lesions.append(self._lesion(maps, g, region))
        else:
            if float(torch.rand((), generator=g)) < 0.7:
                lesions.append(self._lesion(maps, g, None))
            label = None
        seg = torch.zeros_like(image)
        for mask in lesions:
            contrast = contrast_sign * (0.4 + 0.45 * float(torch.rand((), generator=g)))
            image = apply_lesion(image, mask, contrast, g)
            seg = torch.maximum(seg, (mask > 0.5).float())
        image = acquisition(image, brain, g)
        meta = {"filename_or_obj": f"brain_lesion/{self.split}/{self.task}/{self.spatial_dims}d/{index}"}
        seg = MetaTensor(seg[None], meta=dict(meta))
        out = {"image": MetaTensor(image[None].float(), meta=meta), "seg": seg}
        out["label"] = seg.clone() if label is None else label
        return out

    @staticmethod
    def class_names(task: str) -> Sequence[str]:
        """Names of the classes (or labels) of a task."""
        return {
            "classification": ("no lesion", "lesion"),
            "multiclass": ("no lesion", "hyper-intense lesion", "hypo-intense lesion"),
            "multilabel": ("left-hemisphere lesion", "right-hemisphere lesion"),
            "segmentation": ("background", "lesion"),
        }[task]
