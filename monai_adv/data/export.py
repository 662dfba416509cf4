# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Write samples of the demo data set as NIfTI files, for pipelines (and bundles) that read images from disk.

Usage::

    python -m monai_adv.data.export --out demo_nifti --task classification --spatial-dims 2 --num-samples 20

writes ``images/case_000.nii.gz``, ...; ``labels.csv`` (columns image, label) for classification, or label maps
``labels/case_000.nii.gz`` for segmentation; and ``datalist.json`` listing the pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

import nibabel as nib
import numpy as np

from monai_adv.atomic import write_atomic
from monai_adv.data.brain_lesion import BrainLesionDataset

__all__ = ["export_demo"]


def export_demo(
    out: Union[str, Path],
    split: str = "test",
    task: str = "classification",
    spatial_dims: int = 2,
    num_samples: int = 20,
    image_size: Optional[int] = None,
    seed: int = 0,
) -> List[dict]:
    """Write ``num_samples`` demo samples under ``out`` and return the datalist (absolute paths).

    Images are float32 in [0, 1] with the demo data's affine; classification labels go to ``labels.csv``,
    multi-label ones as ``label_0, label_1, ...`` columns, segmentation label maps to ``labels/``.
    """
    out = Path(out).expanduser().resolve()  # a relative --out works as well as an absolute one
    (out / "images").mkdir(parents=True, exist_ok=True)
    data = BrainLesionDataset(split, task, spatial_dims, num_samples=num_samples, image_size=image_size, seed=seed)
    datalist: List[dict] = []
    for i in range(len(data)):
        sample = data[i]
        image = sample["image"]
        affine = np.asarray(image.affine, dtype=np.float64) if hasattr(image, "affine") else np.eye(4)
        name = f"case_{i:03d}.nii.gz"
        _save_nifti(nib.Nifti1Image(np.asarray(image[0], dtype=np.float32), affine), out / "images" / name)
        entry = {"image": str((out / "images" / name).resolve())}
        label = np.asarray(sample["label"])
        if task == "segmentation":
            (out / "labels").mkdir(exist_ok=True)
            _save_nifti(nib.Nifti1Image(label[0].astype(np.uint8), affine), out / "labels" / name)
            entry["label"] = str((out / "labels" / name).resolve())
        else:
            entry["label"] = label.tolist()
        datalist.append(entry)
    if task != "segmentation":
        _write_label_csv(out / "labels.csv", datalist)
    write_atomic(out / "datalist.json", lambda tmp: tmp.write_text(json.dumps(datalist, indent=1)))
    return datalist


def _save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    write_atomic(path, lambda tmp: nib.save(image, tmp), keep_suffix=True)


def _write_label_csv(path: Path, datalist: Sequence[dict]) -> None:
    multi = isinstance(datalist[0]["label"], list)
    width = len(datalist[0]["label"]) if multi else 1

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + ([f"label_{k}" for k in range(width)] if multi else ["label"]))
            for entry in datalist:
                labels = entry["label"] if multi else [entry["label"]]
                image = Path(entry["image"]).relative_to(path.parent).as_posix()
                writer.writerow([image] + [int(v) for v in labels])

    write_atomic(path, write)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--task", default="classification")
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--num-samples", type=int, default=20)
    parser.add_argument("--image-size", type=int)
    args = parser.parse_args(argv)
    datalist = export_demo(args.out, args.split, args.task, args.spatial_dims, args.num_samples, args.image_size)
    print(f"wrote {len(datalist)} samples to {args.out}")


if __name__ == "__main__":
    main()
