# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""MedMNIST ``.npz`` files (2D and 3D) as MONAI datasets, with an optional checked download."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np
import torch
from monai.data import Dataset

__all__ = ["MedMNISTDataset", "MEDMNIST_FILES", "download_medmnist"]

_RECORD = "https://zenodo.org/record/6496656/files/{}.npz?download=1"
#: MedMNIST v2 files that can be downloaded, with their MD5 checksums and label kinds
MEDMNIST_FILES: Dict[str, Dict[str, str]] = {
    "pathmnist": {"md5": "a8b06965200029087d5bd730944a56c1", "task": "multi-class"},
    "chestmnist": {"md5": "02c8a6516a18b556561a56cbdd36c4a8", "task": "multi-label"},
    "dermamnist": {"md5": "0744692d530f8e62ec473284d019b0c7", "task": "multi-class"},
    "octmnist": {"md5": "c68d92d5b585d8d81f7112f81e2d0842", "task": "multi-class"},
    "pneumoniamnist": {"md5": "28209eda62fecd6e6a2d98b1501bb15f", "task": "binary-class"},
    "retinamnist": {"md5": "bd4c0672f1bba3e3a89f0e4e876791e4", "task": "ordinal-regression"},
    "breastmnist": {"md5": "750601b1f35ba3300ea97c75c52ff8f6", "task": "binary-class"},
    "bloodmnist": {"md5": "7053d0359d879ad8a5505303e11de1dc", "task": "multi-class"},
    "tissuemnist": {"md5": "ebe78ee8b05294063de985d821c1c34b", "task": "multi-class"},
    "organamnist": {"md5": "866b832ed4eeba67bfb9edee1d5544e6", "task": "multi-class"},
    "organcmnist": {"md5": "0afa5834fb105f7705a7d93372119a21", "task": "multi-class"},
    "organsmnist": {"md5": "e5c39f1af030238290b9557d9503af9d", "task": "multi-class"},
    "organmnist3d": {"md5": "21f0a239e7f502e6eca33c3fc453c0b6", "task": "multi-class"},
    "nodulemnist3d": {"md5": "8755a7e9e05a4d9ce80a24c3e7a256f3", "task": "binary-class"},
    "adrenalmnist3d": {"md5": "bbd3c5a5576322bc4cdfea780653b1ce", "task": "binary-class"},
    "fracturemnist3d": {"md5": "6aa7b0143a6b42da40027a9dda61302f", "task": "multi-class"},
    "vesselmnist3d": {"md5": "2ba5b80617d705141f3f85627108fce8", "task": "binary-class"},
    "synapsemnist3d": {"md5": "1235b78a3cd6280881dd7850a78eadb6", "task": "binary-class"},
}
SPLITS = ("train", "val", "test")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_medmnist(name: str, root: Union[str, Path], timeout: float = 60.0) -> Path:
    """Download a MedMNIST v2 file into ``root`` (if not already there) and check its MD5.

    Raises:
        ValueError: for a name not in :data:`MEDMNIST_FILES`.
        RuntimeError: when the machine is offline or the download fails, saying where to put the file by hand,
            or when the checksum does not match (the partial file is removed).
    """
    key = name.lower()
    if key not in MEDMNIST_FILES:
        raise ValueError(f"`name` must be one of {sorted(MEDMNIST_FILES)}, got {name!r}.")
    root = Path(root)
    path = root / f"{key}.npz"
    expected = MEDMNIST_FILES[key]["md5"]
    if path.exists() and _md5(path) == expected:
        return path
    root.mkdir(parents=True, exist_ok=True)
    url = _RECORD.format(key)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
    except OSError as e:
        os.remove(tmp)
        raise RuntimeError(
            f"Could not download {key}.npz ({e}); this machine may be offline. Download {url} elsewhere and "
            f"place it at {path}, then pass path={str(path)!r}."
        ) from e
    if _md5(Path(tmp)) != expected:
        os.remove(tmp)
        raise RuntimeError(f"The downloaded {key}.npz does not match its MD5 checksum {expected}; try again.")
    os.replace(tmp, path)
    return path


class MedMNISTDataset(Dataset):
    """One split of a MedMNIST ``.npz`` file as a MONAI ``Dataset`` of dicts ``{"image", "label"}``.

    Reads the standard keys ``{split}_images`` and ``{split}_labels``. Images become channel-first float32 in
    [0, 1]: 2D grey (N, H, W) -> (1, H, W), 2D colour (N, H, W, 3) -> (3, H, W), 3D (N, D, H, W) -> (1, D, H, W).
    Labels (N, 1) become int64 class indices; multi-label files (N, K) such as ChestMNIST become float32
    multi-hot vectors.

    Args:
        path: the ``.npz`` file; or None with ``name`` and ``root`` to use (and, with ``download``, fetch) a
            known file.
        split: "train", "val" or "test".
        name: a MedMNIST name (see :data:`MEDMNIST_FILES`), e.g. "pneumoniamnist" or "organmnist3d".
        root: folder for ``name`` (default ``~/.medmnist``).
        download: fetch the file (checked by MD5) when it is missing; needs a network connection.
        transform: MONAI transforms applied to each sample dict.
    """

    def __init__(
        self,
        path: Optional[Union[str, Path]] = None,
        split: str = "train",
        name: Optional[str] = None,
        root: Optional[Union[str, Path]] = None,
        download: bool = False,
        transform: Optional[Callable] = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        if path is None:
            if name is None:
                raise ValueError("Pass `path` to a MedMNIST .npz file, or `name` (with `download=True` to fetch it).")
            root = Path(root) if root is not None else Path.home() / ".medmnist"
            path = download_medmnist(name, root) if download else root / f"{name.lower()}.npz"
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MedMNIST file not found: {path}. Pass the path of a downloaded .npz, or download=True on a "
                "machine that is online."
            )
        with np.load(path) as data:
            keys = (f"{split}_images", f"{split}_labels")
            missing = [k for k in keys if k not in data]
            if missing:
                raise KeyError(f"{path} has no key(s) {missing}; a MedMNIST file has {sorted(data.files)}.")
            images, labels = data[keys[0]], data[keys[1]]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels in split {split!r}.")
        self.images = self._channel_first(images)
        self.multilabel = labels.ndim == 2 and labels.shape[1] > 1
        self.labels = (
            torch.from_numpy(labels.astype(np.float32))
            if self.multilabel
            else torch.from_numpy(labels.reshape(-1).astype(np.int64))
        )
        data = [{"image": self.images[i], "label": self.labels[i]} for i in range(self.images.shape[0])]
        super().__init__(data=data, transform=transform)

    @staticmethod
    def _channel_first(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.astype(np.float32))
        if images.dtype == np.uint8 or x.max() > 1.0:
            x = x / 255.0
        if x.ndim == 4 and x.shape[-1] in (1, 3) and images.shape[1] == images.shape[2]:
            return x.movedim(-1, 1).contiguous()  # 2D colour (N, H, W, C)
        return x[:, None]  # 2D grey (N, H, W) or 3D (N, D, H, W)
