# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Loaders for users' own data: MedMNIST .npz files and CSV manifests, on small files the tests write."""

import csv
import hashlib
import io
import urllib.error

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

from monai_adv.data import CSVManifestDataset, MedMNISTDataset, download_medmnist
from monai_adv.data import medmnist as medmnist_module


def _write_npz(path, images, labels):
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = images[:n]
        arrays[f"{split}_labels"] = labels[:n]
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize(
    "image_shape,label_shape,expected_image,multilabel",
    [
        ((6, 28, 28), (6, 1), (1, 28, 28), False),  # 2D grey (e.g. PneumoniaMNIST)
        ((6, 28, 28, 3), (6, 1), (3, 28, 28), False),  # 2D colour (e.g. DermaMNIST)
        ((6, 28, 28, 28), (6, 1), (1, 28, 28, 28), False),  # 3D (e.g. OrganMNIST3D)
        ((6, 28, 28), (6, 14), (1, 28, 28), True),  # multi-label (ChestMNIST)
    ],
)
def test_medmnist_npz(tmp_path, image_shape, label_shape, expected_image, multilabel):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, image_shape, dtype=np.uint8)
    labels = rng.integers(0, 2 if multilabel else 5, label_shape).astype(np.uint8)
    path = _write_npz(tmp_path / "toy.npz", images, labels)
    ds = MedMNISTDataset(path, split="test")
    assert len(ds) == 3 and ds.multilabel == multilabel
    sample = ds[1]
    assert sample["image"].shape == expected_image and sample["image"].dtype == torch.float32
    assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0
    torch.testing.assert_close(
        sample["image"].flatten(),
        torch.from_numpy(np.moveaxis(images[1], -1, 0) if len(image_shape) == 4 and image_shape[-1] == 3 else images[1])
        .float()
        .flatten()
        / 255,
    )
    if multilabel:
        assert sample["label"].dtype == torch.float32 and sample["label"].shape == (14,)
    else:
        assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
        assert int(sample["label"]) == int(labels[1, 0])
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, *expected_image)


def test_medmnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MedMNIST file not found"):
        MedMNISTDataset(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.zeros((2, 1)))
    with pytest.raises(KeyError, match=r"has no key\(s\) \['test_images', 'test_labels'\]"):
        MedMNISTDataset(tmp_path / "bad.npz", split="test")
    with pytest.raises(ValueError, match="`split` must be one of"):
        MedMNISTDataset(tmp_path / "bad.npz", split="validation")
    with pytest.raises(ValueError, match="`name` must be one of"):
        download_medmnist("mnist", tmp_path)
    with pytest.raises(ValueError, match="Pass `path`"):
        MedMNISTDataset()
    with pytest.raises(FileNotFoundError, match="download=True"):
        MedMNISTDataset(name="pneumoniamnist", root=tmp_path)


def test_download_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(medmnist_module.urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="may be offline.*place it at"):
        MedMNISTDataset(name="pneumoniamnist", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == [], "no partial file is left behind"


def test_download_checks_the_checksum(tmp_path, monkeypatch):
    payload = io.BytesIO()
    np.savez(payload, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    content = payload.getvalue()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(medmnist_module.urllib.request, "urlopen", lambda *a, **k: Response(content))
    with pytest.raises(RuntimeError, match="does not match its MD5"):
        download_medmnist("breastmnist", tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(
        medmnist_module.MEDMNIST_FILES, "breastmnist", {"md5": hashlib.md5(content).hexdigest(), "task": "binary-class"}
    )
    path = download_medmnist("breastmnist", tmp_path)
    assert path.read_bytes() == content
    assert len(MedMNISTDataset(name="breastmnist", root=tmp_path, split="train")) == 2


def _nifti(path, shape, value):
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), np.eye(4)), str(path))
    return path


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6)])
def test_csv_manifest_single_label_with_load_image(tmp_path, shape):
    (tmp_path / "images").mkdir()
    for i in range(4):
        _nifti(tmp_path / "images" / f"case{i}.nii.gz", shape, float(i))
    rows = [[f"images/case{i}.nii.gz", i % 2, "train" if i < 3 else "test"] for i in range(4)]
    manifest = _csv(tmp_path / "manifest.csv", ["image", "label", "split"], rows)
    transform = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            ScaleIntensityd(keys="image"),
        ]
    )
    ds = CSVManifestDataset(manifest, split_column="split", split="train", transform=transform)
    assert len(ds) == 3 and ds.data[0]["image"] == str(tmp_path / "images" / "case0.nii.gz")
    sample = ds[1]
    assert sample["image"].shape == (1, *shape) and int(sample["label"]) == 1
    assert sample["image"].meta["filename_or_obj"].endswith("case1.nii.gz")


def test_csv_manifest_multi_hot_columns_and_separator(tmp_path):
    for i in range(3):
        _nifti(tmp_path / f"x{i}.nii.gz", (4, 4), 0.0)
    columns = _csv(tmp_path / "columns.csv", ["path", "mass", "effusion"], [["x0.nii.gz", 1, 0], ["x1.nii.gz", 1, 1]])
    ds = CSVManifestDataset(columns, image_column="path", label_columns=["mass", "effusion"])
    assert ds[1]["label"].tolist() == [1.0, 1.0] and ds[1]["label"].dtype == torch.float32
    names = _csv(
        tmp_path / "names.csv",
        ["Image Index", "Finding Labels"],
        [["x0.nii.gz", "Effusion|Mass"], ["x1.nii.gz", "No Finding"], ["x2.nii.gz", "Mass"]],
    )
    ds = CSVManifestDataset(
        names,
        image_column="Image Index",
        label_columns=["Finding Labels"],
        classes=["Mass", "Effusion"],
        label_separator="|",
        root=tmp_path,
    )
    assert [s["label"].tolist() for s in ds] == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]


def test_csv_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CSV manifest not found"):
        CSVManifestDataset(tmp_path / "none.csv")
    bad_column = _csv(tmp_path / "a.csv", ["file", "label"], [["x.nii.gz", 0]])
    with pytest.raises(KeyError, match=r"has no column\(s\) \['image'\]"):
        CSVManifestDataset(bad_column)
    missing_file = _csv(tmp_path / "b.csv", ["image", "label"], [["nowhere.nii.gz", 0]])
    with pytest.raises(FileNotFoundError, match="line 2: image file not found"):
        CSVManifestDataset(missing_file)
    _nifti(tmp_path / "x.nii.gz", (4, 4), 0.0)
    bad_label = _csv(tmp_path / "c.csv", ["image", "label"], [["x.nii.gz", "benign"]])
    with pytest.raises(ValueError, match="line 2: cannot read the label"):
        CSVManifestDataset(bad_label)
    with pytest.raises(ValueError, match="`label_separator` needs `classes`"):
        CSVManifestDataset(bad_label, label_separator="|")


def test_csv_manifest_with_a_byte_order_mark(tmp_path):
    _nifti(tmp_path / "x.nii.gz", (4, 4), 0.0)
    (tmp_path / "bom.csv").write_bytes("image,label\nx.nii.gz,1\n".encode("utf-8-sig"))  # as spreadsheets save
    ds = CSVManifestDataset(tmp_path / "bom.csv")
    assert len(ds) == 1 and int(ds[0]["label"]) == 1


def test_csv_manifest_ragged_rows_name_the_file_and_line(tmp_path):
    _nifti(tmp_path / "x.nii.gz", (4, 4), 0.0)
    short = tmp_path / "short.csv"
    short.write_text("image,label,split\nx.nii.gz,0,test\nx.nii.gz\n")
    with pytest.raises(ValueError, match=r"short\.csv, line 3: the row has 1 field\(s\), the header has 3"):
        CSVManifestDataset(short)
    long = tmp_path / "long.csv"
    long.write_text("image,label\nx.nii.gz,0,extra\n")
    with pytest.raises(ValueError, match=r"long\.csv, line 2: the row has 3 field\(s\), the header has 2"):
        CSVManifestDataset(long)
    empty = _csv(tmp_path / "empty.csv", ["image", "label"], [["", 0]])
    with pytest.raises(ValueError, match="line 2: the 'image' column is empty"):
        CSVManifestDataset(empty)
    (tmp_path / "latin.csv").write_bytes("image,label\nx\xe9.nii.gz,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv is not a UTF-8 text file"):
        CSVManifestDataset(tmp_path / "latin.csv")


def test_csv_manifest_split_rows_keep_their_line_numbers(tmp_path):
    _nifti(tmp_path / "x.nii.gz", (4, 4), 0.0)
    manifest = _csv(
        tmp_path / "m.csv", ["image", "label", "split"], [["x.nii.gz", 0, "train"], ["x.nii.gz", "?", "test"]]
    )
    with pytest.raises(ValueError, match="line 3: cannot read the label"):
        CSVManifestDataset(manifest, split_column="split", split="test")


@pytest.mark.parametrize("damage", ["truncated", "huge header"])
def test_csv_manifest_names_an_unreadable_image(tmp_path, damage):
    path = _nifti(tmp_path / "x.nii", (8, 8), 0.0)
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) - 100]
    else:
        raw[42:46] = (30000).to_bytes(2, "little") * 2  # dim[1], dim[2]: a header far larger than the data
    path.write_bytes(bytes(raw))
    manifest = _csv(tmp_path / "m.csv", ["image", "label"], [["x.nii", 0]])
    ds = CSVManifestDataset(manifest, transform=Compose([LoadImaged("image"), EnsureChannelFirstd("image")]))
    with pytest.raises(ValueError, match=r"cannot load .*x\.nii: "):
        ds[0]


def _demo_checkpoint(path):
    from monai_adv.apps.demo import demo_network

    torch.save(demo_network().state_dict(), path)
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("kind", ["csv", "nifti"])
def test_evaluate_names_an_unreadable_image_file(tmp_path, capsys, kind):
    from monai_adv.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("good.nii.gz", "bad.nii.gz"):
        _nifti(tmp_path / "images" / name, (32, 32), 0.5)
        _nifti(tmp_path / "labels" / name, (32, 32), 0.0)
    _truncate(tmp_path / "images" / "bad.nii.gz")
    rows = [["images/good.nii.gz", 0], ["images/bad.nii.gz", 1]]
    data = f"csv:{_csv(tmp_path / 'm.csv', ['image', 'label'], rows)}" if kind == "csv" else f"nifti:{tmp_path}"
    args = ["evaluate", "--checkpoint", str(_demo_checkpoint(tmp_path / "m.pt")), "--network", "demo"]
    args += ["--data", data, "--attacks", "fgsm", "--eps", "8/255", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(args + ["--samples", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load" in err and "bad.nii.gz" in err, err


def test_evaluate_names_a_ragged_manifest_row(tmp_path, capsys):
    from monai_adv.cli import main

    _nifti(tmp_path / "x.nii.gz", (32, 32), 0.5)
    (tmp_path / "m.csv").write_text("image,label\nx.nii.gz,0\nx.nii.gz\n")
    args = ["evaluate", "--checkpoint", str(_demo_checkpoint(tmp_path / "m.pt")), "--network", "demo"]
    assert main(args + ["--data", f"csv:{tmp_path / 'm.csv'}", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "m.csv, line 3: the row has 1 field(s)" in err and err.count("\n") == 1, err
