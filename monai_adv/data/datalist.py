# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The demo data set as a MONAI datalist of files, the form MONAI bundles and MONAI Label take their data in."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from monai_adv.data.brain_lesion import _DEFAULT_SAMPLES, BrainLesionDataset
from monai_adv.data.export import DATALIST_FILE, export_demo, read_datalist

__all__ = ["demo_datalist"]


def demo_datalist(
    dataset_dir: Union[str, Path],
    split: str,
    num_samples: Optional[int] = None,
    task: str = "classification",
    spatial_dims: int = 2,
    image_size: Optional[int] = None,
    seed: int = 0,
) -> List[dict]:
    """One split of the demo data as ``[{"image": path, "label": ...}, ...]``, written as NIfTI on first use.

    The files go to a folder under ``dataset_dir`` named after every setting (task, dimensions, size, seed,
    split and number of samples), so runs with different settings never mix their files, and a second run (or
    a second process) reads what the first wrote. An interrupted export is redone: a folder counts only once
    its ``datalist.json`` is written. Labels are class indices (classification), 0/1 lists (multi-label) or
    label-map files (segmentation).

    Args:
        dataset_dir: the root folder of the exported splits.
        split: "train", "val" or "test".
        num_samples: samples in the split (default: :class:`BrainLesionDataset`'s).
        task, spatial_dims, image_size, seed: as :class:`BrainLesionDataset`.

    Example (a bundle config)::

        "train#dataset#data": "$monai_adv.data.demo_datalist(@dataset_dir, 'train', @num_train, image_size=32)"
    """
    if dataset_dir is None or (isinstance(dataset_dir, str) and not dataset_dir.strip()):
        raise ValueError("`dataset_dir` must be a folder to write the demo data to, got an empty value.")
    if num_samples is None:
        num_samples = _DEFAULT_SAMPLES.get(spatial_dims, {}).get(split)
    size = image_size or (64 if spatial_dims == 2 else 48)
    name = f"brain_lesion_{task}_{spatial_dims}d_{size}px_seed{seed}"
    folder = Path(dataset_dir).expanduser().resolve() / name / f"{split}_{num_samples}"
    if not (folder / DATALIST_FILE).is_file():
        BrainLesionDataset(split, task, spatial_dims, num_samples=0, image_size=image_size, seed=seed)  # checks
        export_demo(folder, split, task, spatial_dims, num_samples, image_size, seed)
    return read_datalist(folder)
