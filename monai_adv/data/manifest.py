# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""CSV manifests (image path + label or multi-hot labels) as MONAI datasets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
from monai.data import Dataset

__all__ = ["CSVManifestDataset"]


class CSVManifestDataset(Dataset):
    """Rows of a CSV manifest as dicts ``{"image": path, "label": ...}`` for MONAI's ``LoadImaged``.

    This is the layout the benchmark used for ISIC 2017, Messidor and ChestX-ray14: one row per image, a column
    with the image path (relative paths are resolved against ``root``, by default the CSV's folder) and the
    labels as one of:

        - ``label_columns=["label"]``: one column of class indices -> int64;
        - ``label_columns=["atelectasis", "effusion", ...]``: 0/1 columns -> float32 multi-hot;
        - ``classes=[...]`` with ``label_separator="|"`` on one column of names (ChestX-ray14's "Finding Labels",
          e.g. "Effusion|Mass"; names not in ``classes``, like "No Finding", add nothing) -> float32 multi-hot.

    Args:
        csv_path: the manifest.
        image_column: the column with image paths.
        label_columns: label column(s), see above.
        root: folder relative image paths are resolved against (default: the CSV's folder).
        classes: class names for ``label_separator`` manifests.
        label_separator: separator of the names in a single label column.
        split_column, split: keep only the rows whose ``split_column`` equals ``split`` (e.g. "train").
        check_files: raise if an image file does not exist.
        transform: MONAI transforms, typically starting with ``LoadImaged(keys="image")``.
    """

    def __init__(
        self,
        csv_path: Union[str, Path],
        image_column: str = "image",
        label_columns: Sequence[str] = ("label",),
        root: Optional[Union[str, Path]] = None,
        classes: Optional[Sequence[str]] = None,
        label_separator: Optional[str] = None,
        split_column: Optional[str] = None,
        split: Optional[str] = None,
        check_files: bool = True,
        transform: Optional[Callable] = None,
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"CSV manifest not found: {csv_path}")
        if isinstance(label_columns, str):
            label_columns = [label_columns]
        label_columns = list(label_columns)
        if label_separator is not None and (classes is None or len(label_columns) != 1):
            raise ValueError("`label_separator` needs `classes` and exactly one label column.")
        root = Path(root) if root is not None else csv_path.parent
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            wanted = [image_column, *label_columns] + ([split_column] if split_column else [])
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise KeyError(f"{csv_path} has no column(s) {missing}; its columns are {columns}.")
            rows = [r for r in reader if split_column is None or r[split_column] == split]
        self.classes = list(classes) if classes is not None else None
        data: List[dict] = []
        for number, row in enumerate(rows, start=2):
            image = Path(row[image_column])
            image = image if image.is_absolute() else root / image
            if check_files and not image.exists():
                raise FileNotFoundError(f"{csv_path}, line {number}: image file not found: {image}")
            data.append(
                {"image": str(image), "label": self._label(row, label_columns, label_separator, csv_path, number)}
            )
        super().__init__(data=data, transform=transform)

    def _label(self, row, columns, separator, csv_path, number) -> torch.Tensor:
        try:
            if separator is not None:
                names = {n.strip() for n in row[columns[0]].split(separator)}
                return torch.tensor([float(c in names) for c in self.classes])
            if len(columns) == 1:
                return torch.tensor(int(float(row[columns[0]])))
            return torch.tensor([float(row[c]) for c in columns])
        except ValueError as e:
            raise ValueError(f"{csv_path}, line {number}: cannot read the label(s) {[row[c] for c in columns]}.") from e
