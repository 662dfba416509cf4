# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The embedded demo data set: real anatomy, simulated lesions."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, RandFlipd, ScaleIntensityd

from monai_adv.data import BrainLesionDataset, load_anatomy
from monai_adv.data.brain_lesion import ASSET

TASKS = ("classification", "multiclass", "multilabel", "segmentation")


def _digest(sample):
    return hashlib.blake2b(sample["image"].numpy().tobytes()).hexdigest()


def test_asset_is_small_and_carries_its_notice():
    assert ASSET.stat().st_size <= 5 * 1024 * 1024
    notice = (ASSET.parent / "NOTICE").read_text()
    assert "Copyright (C) 1993-2009 Louis Collins" in notice and "simulated" in notice
    anatomy = load_anatomy()
    assert anatomy["t1"].shape == (98, 116, 94) and anatomy["mask"].sum() > 50_000
    for key in ("t1", "gm", "wm", "csf"):
        assert float(anatomy[key].min()) >= 0.0 and float(anatomy[key].max()) <= 1.0


def test_asset_builder_reproduces_the_asset(tmp_path):
    pytest.importorskip("nilearn")
    from monai_adv.data.build_assets import build

    rebuilt = np.load(build(tmp_path / "asset.npz"))
    committed = np.load(ASSET)
    assert sorted(rebuilt.files) == sorted(committed.files)
    for key in committed.files:
        np.testing.assert_array_equal(rebuilt[key], committed[key])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("dims,size", [(2, 64), (3, 24)])
def test_shapes_dtypes_and_ranges(task, dims, size):
    ds = BrainLesionDataset("val", task, dims, num_samples=6, image_size=size)
    assert len(ds) == 6
    for s in ds:
        assert s["image"].shape == (1,) + (size,) * dims and s["image"].dtype == torch.float32
        assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
        assert s["seg"].shape == s["image"].shape and set(s["seg"].unique().tolist()) <= {0.0, 1.0}
        if task in ("classification", "multiclass"):
            assert s["label"].dtype == torch.int64 and s["label"].ndim == 0
        elif task == "multilabel":
            assert s["label"].dtype == torch.float32 and s["label"].shape == (2,)
        else:
            assert torch.equal(s["label"], s["seg"])


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = BrainLesionDataset("train", "classification", 2, num_samples=5, seed=3)
    b = BrainLesionDataset("train", "classification", 2, num_samples=5, seed=3)
    c = BrainLesionDataset("train", "classification", 2, num_samples=5, seed=4)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not any(torch.equal(x["image"], y["image"]) for x, y in zip(a, c))
    # a sample depends on its index only, not on the size of the set
    longer = BrainLesionDataset("train", "classification", 2, num_samples=8, seed=3)
    assert torch.equal(longer[4]["image"], a[4]["image"])


def test_splits_never_share_anatomy_or_samples():
    sets = {split: BrainLesionDataset(split, "classification", 2, num_samples=40) for split in ("train", "val", "test")}
    positions = {split: set(ds._positions) for split, ds in sets.items()}
    assert not (positions["train"] & positions["val"]) and not (positions["train"] & positions["test"])
    assert not (positions["val"] & positions["test"])
    digests = {split: {_digest(s) for s in ds} for split, ds in sets.items()}
    assert not (digests["train"] & digests["val"]) and not (digests["train"] & digests["test"])


def test_label_balance_and_consistency():
    n = 60
    cls = BrainLesionDataset("val", "classification", 2, num_samples=n)
    labels = torch.stack([s["label"] for s in cls])
    assert labels.float().mean() == 0.5
    assert all(bool(s["seg"].any()) == bool(s["label"]) for s in cls), "label 1 exactly when a lesion is drawn"
    multi = torch.stack([s["label"] for s in BrainLesionDataset("val", "multiclass", 2, num_samples=n)])
    assert torch.bincount(multi).tolist() == [20, 20, 20]
    ml = BrainLesionDataset("val", "multilabel", 2, num_samples=n)
    ml_labels = torch.stack([s["label"] for s in ml])
    assert ml_labels.mean(0).tolist() == [0.5, 0.5]
    for s in ml:  # lesions sit in the hemisphere their label names (array axis 0 is left -> right)
        seg = s["seg"][0]
        assert bool(seg[:31].any()) == bool(s["label"][0]) and bool(seg[33:].any()) == bool(s["label"][1])
    seg = BrainLesionDataset("val", "segmentation", 2, num_samples=n)
    with_lesion = sum(bool(s["seg"].any()) for s in seg) / n
    assert 0.5 <= with_lesion <= 0.9


def test_hyper_and_hypo_lesions_change_intensity_in_opposite_directions():
    ds = BrainLesionDataset("val", "multiclass", 2, num_samples=30)
    shifts = {1: [], 2: []}
    for s in ds:
        kind = int(s["label"])
        if kind:
            inside = s["image"][s["seg"] > 0].mean()
            ring = torch.nn.functional.max_pool2d(s["seg"], 7, 1, 3)[0] - s["seg"][0]
            outside = s["image"][0][(ring > 0) & (s["image"][0] > 0.1)].mean()
            shifts[kind].append(float(inside - outside))
    assert np.median(shifts[1]) > 0 > np.median(shifts[2])


def test_generates_2000_slices_in_seconds():
    import time

    start = time.perf_counter()
    ds = BrainLesionDataset("train", "classification", 2)
    assert len(ds) == 2000
    print(f"2000 2D samples in {time.perf_counter() - start:.1f} s")


def test_monai_compose_cachedataset_dataloader_round_trip():
    ds = BrainLesionDataset("val", "segmentation", 2, num_samples=12)
    transform = Compose([ScaleIntensityd(keys="image"), RandFlipd(keys=["image", "seg", "label"], prob=0.5)])
    cached = CacheDataset(data=ds.data, transform=transform, progress=False)
    batch = next(iter(DataLoader(cached, batch_size=4)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["label"].shape == (4, 1, 64, 64)
    plain = next(
        iter(DataLoader(BrainLesionDataset("val", "multilabel", 3, num_samples=4, image_size=24), batch_size=2))
    )
    assert plain["image"].shape == (2, 1, 24, 24, 24) and plain["label"].shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        ({"split": "training"}, ValueError, "`split` must be one of"),
        ({"task": "detection"}, ValueError, "`task` must be one of"),
        ({"spatial_dims": 1}, ValueError, "`spatial_dims` must be 2 or 3"),
        ({"num_samples": -1}, ValueError, "`num_samples` must be an integer >= 0"),
        ({"image_size": 8}, ValueError, "`image_size` must be at least 16"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        BrainLesionDataset(**{"num_samples": 1, **kwargs})


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_export_to_a_relative_or_absolute_folder(relative, task, tmp_path, monkeypatch):
    from monai_adv.data.export import main, read_datalist

    monkeypatch.chdir(tmp_path)
    out = "demo images" if relative else str(tmp_path / "elsewhere" / "demo")
    main(["--out", out, "--task", task, "--num-samples", "3", "--image-size", "16"])
    folder = tmp_path / out if relative else Path(out)
    entries = read_datalist(folder)
    assert len(entries) == 3 and all(Path(e["image"]).is_file() for e in entries)
    listed = json.loads((folder / "datalist.json").read_text())
    assert all(not Path(e["image"]).is_absolute() for e in listed), "paths relative to the folder"
    if task == "classification":
        rows = (folder / "labels.csv").read_text().splitlines()
        assert rows[0] == "image,label" and len(rows) == 4 and rows[1].startswith("images/case_000.nii.gz,")
    else:
        assert all(Path(e["label"]).is_file() for e in entries)


def test_export_as_a_medmnist_file_reads_back(tmp_path):
    from monai_adv.data import MedMNISTDataset, export_demo_medmnist

    path = export_demo_medmnist(tmp_path / "demo.npz", {"train": 4, "val": 2, "test": 2}, image_size=16)
    train = MedMNISTDataset(path, "train")
    reference = BrainLesionDataset("train", "classification", 2, num_samples=4, image_size=16)
    assert len(train) == 4 and train[0]["image"].shape == (1, 16, 16)
    for got, want in zip(train, reference):
        assert int(got["label"]) == int(want["label"])
        assert float((got["image"] - want["image"].as_tensor()).abs().max()) <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="task"):
        export_demo_medmnist(tmp_path / "seg.npz", {"test": 1}, task="segmentation")
