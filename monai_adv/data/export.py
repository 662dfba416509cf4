# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Write samples of the demo data set as NIfTI files, for pipelines (and bundles) that read images from disk.

Usage::

    python -m monai_adv.data.export --out demo_nifti --task classification --spatial-dims 2 --num-samples 20

writes ``images/case_000.nii.gz``, ...; ``labels.csv`` (columns image, label) for classification, or label maps
``labels/case_000.nii.gz`` for segmentation; and ``datalist.json`` listing the pairs, with paths relative to the
folder (read it back with :func:`read_datalist`). ``--format medmnist`` writes the three splits into one
MedMNIST-style ``.npz`` file instead (uint8 images), the input of the classification template bundle.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import nibabel as nib
import numpy as np

from monai_adv.atomic import write_atomic
from monai_adv.data.brain_lesion import BrainLesionDataset

__all__ = ["export_demo", "export_demo_medmnist", "read_datalist", "DATALIST_FILE"]

DATALIST_FILE = "datalist.json"


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
    ``datalist.json``, written last, holds the same list with paths relative to ``out``: a folder that has it
    is complete, and stays usable when it is moved.
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
    relative = [{k: _relative(v, out) for k, v in entry.items()} for entry in datalist]
    write_atomic(out / DATALIST_FILE, lambda tmp: tmp.write_text(json.dumps(relative, indent=1) + "\n"))
    return datalist


def read_datalist(folder: Union[str, Path]) -> List[dict]:
    """The datalist an export wrote in ``folder``, with absolute paths (as MONAI's ``LoadImaged`` takes them).

    Every string value of an entry is a file (the image, a segmentation label map); class labels are numbers.
    """
    folder = Path(folder).expanduser().resolve()
    entries = json.loads((folder / DATALIST_FILE).read_text())
    return [{k: str(folder / v) if isinstance(v, str) else v for k, v in entry.items()} for entry in entries]


def _relative(value, folder: Path):
    return Path(value).relative_to(folder).as_posix() if isinstance(value, str) else value


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


def export_demo_medmnist(
    path: Union[str, Path],
    num_samples: Dict[str, int],
    task: str = "classification",
    spatial_dims: int = 2,
    image_size: Optional[int] = None,
    seed: int = 0,
) -> Path:
    """Write demo splits as one MedMNIST-style ``.npz`` file and return its path.

    Keys ``{split}_images`` (uint8: (N, H, W) in 2D, (N, D, H, W) in 3D) and ``{split}_labels`` ((N, 1) class
    indices, or (N, K) 0/1 for multi-label), for each split in ``num_samples`` (e.g.
    ``{"train": 1000, "val": 200, "test": 100}``): what :class:`~monai_adv.data.MedMNISTDataset` reads.
    """
    if task == "segmentation":
        raise ValueError("`task` must be a classification task for a MedMNIST file, got 'segmentation'.")
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: Dict[str, np.ndarray] = {}
    for split, count in num_samples.items():
        data = BrainLesionDataset(split, task, spatial_dims, num_samples=count, image_size=image_size, seed=seed)
        images = [np.rint(np.asarray(s["image"][0], dtype=np.float32) * 255.0) for s in data]
        labels = [np.atleast_1d(np.asarray(s["label"])) for s in data]
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)
        arrays[f"{split}_labels"] = np.stack(labels).astype(np.uint8)
    write_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays), keep_suffix=True)
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a folder (NIfTI) or a .npz file (--format medmnist)")
    parser.add_argument("--format", default="nifti", choices=("nifti", "medmnist"))
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split (NIfTI)")
    parser.add_argument("--task", default="classification")
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--num-samples", type=int, default=20, help="samples (NIfTI); val and test size (medmnist)")
    parser.add_argument("--num-train", type=int, help="train size (medmnist; default 5 x --num-samples)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.format == "medmnist":
        sizes = {"train": args.num_train or 5 * args.num_samples, "val": args.num_samples, "test": args.num_samples}
        out = export_demo_medmnist(args.out, sizes, args.task, args.spatial_dims, args.image_size, args.seed)
        print(f"wrote {sum(sizes.values())} samples ({sizes}) to {out}")
        return
    datalist = export_demo(
        args.out, args.split, args.task, args.spatial_dims, args.num_samples, args.image_size, args.seed
    )
    print(f"wrote {len(datalist)} samples to {args.out}")


if __name__ == "__main__":
    main()
