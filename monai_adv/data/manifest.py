# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""CSV manifests (image path + label or multi-hot labels) as MONAI datasets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

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
        wanted = [image_column, *label_columns] + ([split_column] if split_column else [])
        rows = _read_rows(csv_path, wanted)
        if split_column is not None:
            rows = [(number, row) for number, row in rows if row[split_column] == split]
        self.classes = list(classes) if classes is not None else None
        data: List[dict] = []
        for number, row in rows:
            if not row[image_column].strip():
                raise ValueError(f"{csv_path}, line {number}: the {image_column!r} column is empty.")
            image = Path(row[image_column])
            image = image if image.is_absolute() else root / image
            if check_files and not image.exists():
                raise FileNotFoundError(f"{csv_path}, line {number}: image file not found: {image}")
            data.append(
                {"image": str(image), "label": self._label(row, label_columns, label_separator, csv_path, number)}
            )
        super().__init__(data=data, transform=transform)

    def _transform(self, index: int) -> Any:
        """The transformed sample, or an error that names the image file it could not load."""
        try:
            return super()._transform(index)
        except Exception as e:
            raise ValueError(f"cannot load {self.data[index]['image']}: {_root_cause(e)}") from e

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


def _read_rows(csv_path: Path, wanted: Sequence[str]) -> List[Tuple[int, Dict[str, str]]]:
    """(line number, row) of every row, read as UTF-8 with or without a byte-order mark (as spreadsheets write).

    A row with fewer or more fields than the header is an error naming the file and the line.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise KeyError(f"{csv_path} has no column(s) {missing}; its columns are {columns}.")
            rows = []
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                    raise ValueError(
                        f"{csv_path}, line {reader.line_num}: the row has {fields} field(s), the header has "
                        f"{len(columns)} ({columns})."
                    )
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as e:
        raise ValueError(f"{csv_path} is not a UTF-8 text file ({e}); save the manifest as CSV (UTF-8).") from None
    except csv.Error as e:
        raise ValueError(f"{csv_path} is not a readable CSV file: {e}") from None
    return rows


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost error (MONAI wraps a reader's error in "applying transform ...")."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
