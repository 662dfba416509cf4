# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Rebuild the embedded anatomy asset from the MNI ICBM152 2009a template shipped inside the nilearn wheel.

Usage::

    pip install nilearn nibabel
    python -m monai_adv.data.build_assets            # writes monai_adv/data/assets/mni152_2mm.npz

Reads the T1 template and the grey and white matter probability maps from nilearn's package data folder
(no download), downsamples them from 1 mm to 2 mm by averaging, and writes one compressed ``.npz`` with
uint8 arrays ``t1``, ``gm``, ``wm``, ``csf``, ``mask`` and the float ``affine``. The nilearn wheel ships no
CSF map: ``csf`` is the brain mask's probability mass left over by grey and white matter (clipped at 0),
and ``mask`` is the support of the skull-stripped T1. nilearn is needed only here, never at run time.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ASSET = Path(__file__).parent / "assets" / "mni152_2mm.npz"
FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def nilearn_data_folder() -> Path:
    """The folder of the installed nilearn package that holds the template files."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("Rebuilding the asset needs nilearn: pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _downsample(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool a 3D volume by ``factor`` (cropping the remainder)."""
    crop = tuple(s - s % factor for s in volume.shape)
    t = torch.from_numpy(volume[: crop[0], : crop[1], : crop[2]].astype(np.float32))[None, None]
    return F.avg_pool3d(t, factor)[0, 0].numpy()


def build(out: Path = ASSET, factor: int = 2) -> Path:
    """Build the asset and return its path."""
    import nibabel as nib

    folder = nilearn_data_folder()
    volumes, affine = {}, None
    for key, name in FILES.items():
        image = nib.load(str(folder / name))
        volumes[key] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        affine = image.affine
    brain = (volumes["t1"] > 0).astype(np.float32)
    volumes["csf"] = np.clip(brain - volumes["gm"] - volumes["wm"], 0.0, 1.0)
    volumes["mask"] = brain
    arrays = {}
    for key, volume in volumes.items():
        small = _downsample(volume, factor)
        if key == "mask":
            small = small >= 0.5
        arrays[key] = np.round(np.clip(small, 0, 1) * (1 if key == "mask" else 255)).astype(np.uint8)
    scaled = np.array(affine, dtype=np.float64)
    scaled[:3, :3] *= factor
    scaled[:3, 3] += (factor - 1) / 2.0 * np.diag(np.asarray(affine)[:3, :3])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, affine=scaled, **arrays)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the embedded MNI152 anatomy asset from nilearn's data.")
    parser.add_argument("--out", type=Path, default=ASSET)
    parser.add_argument("--factor", type=int, default=2, help="downsampling factor from 1 mm")
    args = parser.parse_args(argv)
    path = build(args.out, args.factor)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
