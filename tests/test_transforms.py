# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""MONAI transforms: (Rand)AdversarialPerturb(d) in pipelines, datasets and loaders."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, ThreadDataLoader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

from monai_adv.attacks import PGD, AutoAttack, attack_arguments, attack_class, available_attacks
from monai_adv.transforms import (
    AdversarialPerturb,
    AdversarialPerturbd,
    RandAdversarialPerturb,
    RandAdversarialPerturbD,
    RandAdversarialPerturbd,
    RandAdversarialPerturbDict,
)
from tests.cases import same_snapshot, snapshot
from tests.models import TinyClassifier, TinySegmenter

EPS = 8 / 255
PGD_KWARGS = {"eps": EPS, "steps": 3}


CHEAP = {"steps": 2, "queries": 10, "check": False, "target_classes": 2}


@pytest.fixture
def net2d():
    torch.manual_seed(0)
    return TinyClassifier(2, 1, 3).eval()


def _nifti_files(tmp_path, n=4, shape=(16, 16)):
    files = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = tmp_path / f"img{i}.nii.gz"
        nib.save(
            nib.Nifti1Image((rng.random(shape) * 1000).astype(np.float32), np.diag([0.8, 0.8, 1.0, 1.0])), str(path)
        )
        files.append({"image": str(path), "label": i % 3})
    return files


@pytest.mark.parametrize("reader", ["NibabelReader", "ITKReader"])
def test_compose_from_nifti_files(tmp_path, net2d, reader):
    pipeline = Compose(
        [
            LoadImaged(keys="image", reader=reader),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            ScaleIntensityd(keys="image"),
            RandAdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=PGD_KWARGS),
        ]
    )
    clean = Compose(pipeline.transforms[:3])
    for item in _nifti_files(tmp_path):
        out, ref = pipeline(item), clean(item)
        image = out["image"]
        assert isinstance(image, MetaTensor) and image.shape == (1, 16, 16)
        assert image.meta["filename_or_obj"] == ref["image"].meta["filename_or_obj"]
        assert torch.equal(image.affine, ref["image"].affine)
        assert len(image.applied_operations) == len(ref["image"].applied_operations)
        assert image.meta["adversarial"]["attack"] == "pgd" and image.meta["adversarial"]["eps"] == EPS
        delta = (image.as_tensor() - ref["image"].as_tensor()).abs()
        assert 0 < float(delta.max()) <= EPS + 1e-7
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_cachedataset_never_caches_the_perturbation(net2d):
    items = [{"image": torch.rand(1, 16, 16), "label": i % 3} for i in range(200)]
    # early_stop=False: every chosen sample is changed, so the changed fraction is the coin's (0.5 +- 0.035)
    kwargs = {**PGD_KWARGS, "early_stop": False}
    transform = RandAdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=kwargs, prob=0.5)
    transform.set_random_state(seed=0)
    cached = CacheDataset(items, transform=transform, progress=False)
    # the transform is randomizable, so the cache holds the clean samples and never an adversarial one
    assert all(torch.equal(torch.as_tensor(c["image"]), items[i]["image"]) for i, c in enumerate(cached._cache))

    def perturbed_flags():
        return [not torch.equal(cached[i]["image"].as_tensor(), items[i]["image"]) for i in range(len(items))]

    first, second = perturbed_flags(), perturbed_flags()
    assert 0.35 <= np.mean(first) <= 0.65 and 0.35 <= np.mean(second) <= 0.65  # 4 standard deviations
    assert first != second, "a new epoch draws new perturbations"


def test_set_random_state_makes_choice_and_attack_reproducible(net2d):
    x = {"image": torch.rand(1, 16, 16), "label": 2}

    def run(seed):
        t = RandAdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=PGD_KWARGS, prob=0.5)
        t.set_random_state(seed=seed)
        return [t(x)["image"].as_tensor() for _ in range(6)]

    a, b = run(1), run(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert any(not torch.equal(p, q) for p, q in zip(a, run(2)))


def test_batch_and_single_sample_give_the_same_result(net2d):
    images, labels = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    batch_t = RandAdversarialPerturb(net2d, "pgd", PGD_KWARGS, batched=True)
    batch_t.set_random_state(seed=5)
    batch = batch_t(images, labels)
    for i in range(4):
        single_t = RandAdversarialPerturb(net2d, "pgd", PGD_KWARGS)
        single_t.set_random_state(seed=5)
        torch.testing.assert_close(single_t(images[i], labels[i]).as_tensor(), batch[i].as_tensor(), rtol=0, atol=1e-6)


def test_collated_metatensor_batch_is_recognized(net2d):
    ds = [{"image": MetaTensor(torch.rand(1, 16, 16)), "label": i % 3} for i in range(4)]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].is_batch
    out = AdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=PGD_KWARGS)(batch)
    assert out["image"].shape == (4, 1, 16, 16) and (out["image"] - batch["image"]).abs().max() <= EPS + 1e-7


def test_numpy_and_3d_and_segmentation_with_mask():
    torch.manual_seed(0)
    seg = TinySegmenter(3, 1, 2).eval()
    image = np.random.default_rng(0).random((1, 8, 8, 8)).astype(np.float32)
    label = (image > 0.5).astype(np.int64)
    roi = np.zeros_like(image)
    roi[:, 2:6, 2:6, 2:6] = 1
    t = AdversarialPerturbd(keys="image", label_key="label", network=seg, attack_kwargs=PGD_KWARGS, mask_key="roi")
    out = t({"image": image, "label": label, "roi": roi})["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 8, 8)
    changed = (out.as_tensor() - torch.from_numpy(image)).abs()
    assert float(changed[torch.from_numpy(roi) == 0].max()) == 0.0 and float(changed.max()) > 0


def test_model_is_left_untouched(net2d):
    net2d.train()
    before = snapshot(net2d)
    RandAdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=PGD_KWARGS)(
        {"image": torch.rand(1, 16, 16), "label": 1}
    )
    assert same_snapshot(before, snapshot(net2d))


def test_network_provider_follows_a_changing_model():
    torch.manual_seed(0)
    models = [TinyClassifier(2, 1, 3).eval(), TinyClassifier(2, 1, 3).eval()]
    current = {"net": models[0]}
    t = AdversarialPerturb(lambda: current["net"], "fgsm", {"eps": EPS})
    t.set_random_state(seed=0)
    x = torch.rand(1, 16, 16)
    first = t(x, 1)
    current["net"] = models[1]
    t.set_random_state(seed=0)
    assert not torch.equal(t(x, 1), first)


def test_an_attack_instance_and_a_model_function():
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3).eval()
    x = torch.rand(1, 16, 16)
    by_instance = AdversarialPerturb(None, PGD(net, eps=EPS, steps=3, early_stop=False))(x, 1)
    by_function = AdversarialPerturb(lambda v: net(v), "pgd", PGD_KWARGS)(x, 1)
    assert (by_instance - x).abs().max() <= EPS + 1e-7 and (by_function - x).abs().max() <= EPS + 1e-7


@pytest.mark.parametrize("loader_cls", [DataLoader, ThreadDataLoader])
def test_data_loaders(net2d, loader_cls):
    items = [{"image": torch.rand(1, 16, 16), "label": i % 3} for i in range(8)]
    transform = RandAdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=PGD_KWARGS)
    loader = loader_cls(CacheDataset(items, transform=transform, progress=False), batch_size=4, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 1, 16, 16)
    assert (batches[0]["image"].as_tensor() - torch.stack([i["image"] for i in items[:4]])).abs().max() <= EPS + 1e-7


def test_aliases():
    assert RandAdversarialPerturbD is RandAdversarialPerturbDict is RandAdversarialPerturbd


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n, prob=1.5),
            ValueError,
            r"`prob` must be a number in \[0, 1\]",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n, prob=-0.1),
            ValueError,
            "`prob`",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network="resnet"),
            TypeError,
            "`network` must be an nn.Module",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n, attack="deepfool"),
            ValueError,
            "`name` must be one of",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n, attack_kwargs={"queries": 1}),
            TypeError,
            "takes no argument",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n)({"label": 0}),
            KeyError,
            "image",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n)(
                {"image": torch.rand(1, 8, 8)}
            ),
            KeyError,
            "`label_key` 'label' is not in the data",
        ),
        (
            lambda n: RandAdversarialPerturbd(keys="image", label_key="label", network=n, mask_key="roi")(
                {"image": torch.rand(1, 8, 8), "label": 0}
            ),
            KeyError,
            "`mask_key` 'roi'",
        ),
    ],
)
def test_bad_input(net2d, make, error, pattern):
    with pytest.raises(error, match=pattern):
        make(net2d)


def test_missing_keys_can_be_allowed(net2d):
    t = RandAdversarialPerturbd(
        keys=["image", "other"], label_key="label", network=net2d, allow_missing_keys=True, attack_kwargs=PGD_KWARGS
    )
    out = t({"image": torch.rand(1, 8, 8), "label": 0})
    assert "other" not in out


def test_compose_from_a_dicom_series_folder(tmp_path, net2d):
    itk = pytest.importorskip("itk")
    from monai.transforms import SqueezeDimd

    series = tmp_path / "series"
    series.mkdir()
    pixels = (np.random.default_rng(1).random((16, 16)) * 1000).astype(np.int16)
    itk.imwrite(itk.image_from_array(pixels), str(series / "slice0.dcm"))
    pipeline = Compose(
        [
            LoadImaged(keys="image", reader="ITKReader"),  # a folder: the DICOM series in it
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            SqueezeDimd(keys="image", dim=-1),  # one slice
            ScaleIntensityd(keys="image"),
            RandAdversarialPerturbd(keys="image", label_key="label", network=net2d, attack_kwargs=PGD_KWARGS),
        ]
    )
    out = pipeline({"image": str(series), "label": 1})["image"]
    ref = Compose(pipeline.transforms[:4])({"image": str(series), "label": 1})["image"]
    assert out.shape == (1, 16, 16) and out.meta["adversarial"]["attack"] == "pgd"
    assert 0 < float((out.as_tensor() - ref.as_tensor()).abs().max()) <= EPS + 1e-7


def _per_image(name: str) -> bool:
    """Attacks applied per image (fitted attacks, universal perturbations and patches, have their own tests)."""
    return attack_class(name).threat_model == "per-image"


@pytest.mark.parametrize(
    "name", [n for n in available_attacks() if "classification" in attack_class(n).tasks and _per_image(n)]
)
def test_every_registered_attack_works_by_name_in_the_dictionary_transform(net2d, name):
    # composites (AutoAttack, transfer) included, with no special case
    small = {"eps": 8 / 255, **{k: v for k, v in CHEAP.items() if k in attack_arguments(name)}}
    transform = RandAdversarialPerturbd(
        keys="image", label_key="label", network=net2d, attack=name, attack_kwargs=small
    )
    transform.set_random_state(seed=1)
    image = MetaTensor(torch.rand(1, 16, 16), meta={"filename_or_obj": "slice.nii"})
    out = transform({"image": image, "label": torch.tensor(2)})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "slice.nii"
    assert (out - image).abs().max() <= 8 / 255 + 1e-7


def test_autoattack_instance_in_the_array_transform(net2d):
    aa = AutoAttack(net2d, eps=8 / 255, steps=2, queries=10, check=False)
    images, labels = torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2])
    out = RandAdversarialPerturb(net2d, aa, batched=True)(images, labels)
    assert out.shape == images.shape and (out - images).abs().max() <= 8 / 255 + 1e-7
