# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Natural corruptions from MONAI's random intensity transforms: severities, seeding, errors and pipelines."""

import json

import monai.transforms
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, RandGaussianNoise, RandomizableTransform

from monai_adv.transforms.corruptions import (
    CORRUPTION_NOTES,
    CORRUPTIONS,
    SEVERITIES,
    Corrupt,
    CorruptD,
    Corruptd,
    CorruptDict,
    corrupt,
    corruption_names,
    corruption_parameters,
    make_corruption,
)

NAMES = list(CORRUPTIONS)
#: corruptions that draw random numbers (the others are deterministic: blur, contrast, Gibbs, low resolution)
RANDOM = ["gaussian_noise", "rician_noise", "bias_field", "kspace_spike", "coarse_dropout"]


def _smooth(n, shape, seed=0, value_range=(0.0, 1.0)):
    """``n`` smooth random images (n, 1, *shape) spanning ``value_range``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, *shape), generator=g)
    pool = F.avg_pool2d if len(shape) == 2 else F.avg_pool3d
    for _ in range(2):
        x = pool(x, 5, 1, 2, count_include_pad=False)
    flat = x.flatten(1)
    lo, hi = flat.min(1)[0], flat.max(1)[0]
    view = (-1,) + (1,) * (x.ndim - 1)
    x = (x - lo.view(view)) / (hi - lo).view(view)
    return x * (value_range[1] - value_range[0]) + value_range[0]


@pytest.fixture(scope="module")
def batches():
    return {2: _smooth(2, (24, 24), seed=1), 3: _smooth(2, (12, 12, 12), seed=2)}


def test_registry_and_parameters():
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert NAMES == [
        "gaussian_noise",
        "rician_noise",
        "bias_field",
        "gibbs_ringing",
        "kspace_spike",
        "gaussian_blur",
        "contrast",
        "coarse_dropout",
        "low_resolution",
    ]
    for name, spec in CORRUPTIONS.items():
        assert len(spec.levels) == len(SEVERITIES) and spec.description and spec.units
        assert isinstance(getattr(monai.transforms, spec.transform), type)
        for severity in SEVERITIES:
            params = corruption_parameters(name, severity)
            assert json.loads(json.dumps(params)) == params
            params["changed"] = 1  # a copy: the registry is untouched
            assert "changed" not in corruption_parameters(name, severity)
    assert corruption_parameters("gaussian_noise", 2) == {"std": 0.04}
    assert "MONAI" in CORRUPTION_NOTES


def test_corruption_names():
    assert corruption_names("all") == NAMES
    assert corruption_names("contrast, gaussian_noise") == ["contrast", "gaussian_noise"]
    assert corruption_names(("bias_field",)) == ["bias_field"]
    with pytest.raises(ValueError, match="`corruptions`.*gaussian_noise"):
        corruption_names("gaussian_noise,motion")
    with pytest.raises(ValueError, match="`corruptions`.*more than once"):
        corruption_names(["contrast", "contrast"])
    with pytest.raises(ValueError, match="`corruptions`"):
        corruption_names("")


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 2.0)])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_every_severity_changes_and_stays_in_range(batches, name, dims, value_range):
    lo, hi = value_range
    x = batches[dims] * (hi - lo) + lo
    for severity in SEVERITIES:
        y = corrupt(x, name, severity, value_range=value_range)
        assert y.shape == x.shape and y.dtype == x.dtype and type(y) is torch.Tensor
        assert float(y.min()) >= lo and float(y.max()) <= hi
        # every corruption changes every sample of these non-constant images (a hole fills with lo, which the
        # smooth images reach only at one voxel)
        assert bool(((y - x).flatten(1).abs().amax(1) > 1e-4).all()), (name, severity)


@pytest.mark.parametrize("name", NAMES)
def test_range_is_affine(batches, name):
    """With the same draws, corrupting x on (-1, 2) is corrupting (x + 1) / 3 on (0, 1) and mapping back."""
    x = batches[2][0]
    t01, t = make_corruption(name, 3, (0.0, 1.0)), make_corruption(name, 3, (-1.0, 2.0))
    t01.set_random_state(seed=7)
    t.set_random_state(seed=7)
    a, b = torch.as_tensor(t01(x.clone())), torch.as_tensor(t(x * 3 - 1))
    torch.testing.assert_close(b, a * 3 - 1, atol=1e-5, rtol=1e-5)


def test_reproducible_and_seeded(batches):
    for dims in (2, 3):
        x = batches[dims]
        for name in NAMES:
            a, b = corrupt(x, name, 3, seed=11), corrupt(x, name, 3, seed=11)
            assert torch.equal(a, b), name
            if name in RANDOM:
                assert not torch.equal(a, corrupt(x, name, 3, seed=12)), name
    assert torch.equal(x, batches[3])  # the input is never written to


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    x = _smooth(3, (16, 16), seed=3)
    full = corrupt(x, name, 4, seed=2)
    for i in range(3):
        torch.testing.assert_close(corrupt(x[i : i + 1], name, 4, seed=2)[0], full[i], rtol=0, atol=0)
    order = [2, 0, 1]
    torch.testing.assert_close(corrupt(x[order], name, 4, seed=2), full[order], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_severity_is_monotone_on_average(name):
    x = _smooth(8, (32, 32), seed=4)
    change = [float((corrupt(x, name, s, seed=0) - x).abs().mean()) for s in SEVERITIES]
    assert all(b >= a for a, b in zip(change, change[1:])), (name, change)
    assert change[-1] > change[0] * 1.5, (name, change)


def test_same_draws_at_every_severity():
    """A sample's random stream does not depend on the severity: severity 4's noise is twice severity 2's."""
    x = _smooth(2, (16, 16), seed=8)  # each sample spans [0, 1], so value_range=None scales like (0, 1), unclipped
    two, four = (corrupt(x, "gaussian_noise", s, seed=3, value_range=None) - x for s in (2, 4))
    torch.testing.assert_close(four, 2 * two, atol=1e-5, rtol=1e-5)


def test_channels_dtypes_devices_and_metatensor():
    x = _smooth(4, (16, 16), seed=5).reshape(2, 2, 16, 16)  # two channels
    for name in NAMES:
        assert corrupt(x, name, 2).shape == x.shape
    y64 = corrupt(x.double(), "gaussian_noise", 2)
    assert y64.dtype == torch.float64
    y16 = corrupt(x.half(), "bias_field", 2)
    assert y16.dtype == torch.float16 and y16.shape == x.shape
    meta = MetaTensor(x, meta={"filename_or_obj": "a.nii"})
    out = corrupt(meta, "contrast", 3)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.nii"
    torch.testing.assert_close(out.as_tensor(), corrupt(x, "contrast", 3))
    unbounded = corrupt(x * 100, "gaussian_noise", 5, value_range=None)  # scaled by each sample's own range
    assert float((unbounded - x * 100).std()) > 5
    assert corrupt(x[:0], "contrast", 1).shape == (0, 2, 16, 16)


def test_bad_input():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="`name`"):
        corrupt(x, "motion", 1)
    for severity in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"`severity`.*\[1, 2, 3, 4, 5\]"):
            corrupt(x, "contrast", severity)
    with pytest.raises(ValueError, match="`severity`"):
        corruption_parameters("contrast", 0)
    with pytest.raises(ValueError, match="`x`"):
        corrupt(torch.rand(8), "contrast", 1)
    with pytest.raises(ValueError, match="`x`"):
        corrupt(torch.rand(2, 1, 8), "contrast", 1)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`x`.*NaN"):
        corrupt(bad, "contrast", 1)
    with pytest.raises(TypeError, match="`x`"):
        corrupt(torch.zeros(2, 1, 8, 8, dtype=torch.int64), "contrast", 1)
    with pytest.raises(ValueError, match="`value_range`"):
        corrupt(x, "contrast", 1, value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="`img`"):
        Corrupt("contrast", 1)(torch.rand(8, 8))
    with pytest.raises(ValueError, match="`prob`"):
        Corrupt("contrast", 1, prob=2.0)


def test_make_corruption():
    noise = make_corruption("gaussian_noise", 3, value_range=(0.0, 2.0))
    assert isinstance(noise, RandGaussianNoise) and noise.prob == 1.0 and noise.std == pytest.approx(0.12)
    for name in NAMES:
        for value_range in [(0.0, 1.0), (-1.0, 2.0), None]:
            t = make_corruption(name, 5, value_range)
            assert isinstance(t, RandomizableTransform)
            for shape in [(1, 16, 16), (2, 8, 8, 8)]:
                t.set_random_state(seed=3)
                a = torch.as_tensor(t(torch.rand(shape, generator=torch.Generator().manual_seed(0))))
                assert a.shape == shape


def test_corrupt_array_transform():
    img = _smooth(1, (16, 16), seed=6)[0]
    t = Corrupt("kspace_spike", 4).set_random_state(seed=1)
    a = t(img)
    assert a.shape == img.shape and not torch.equal(a, img)
    assert torch.equal(t(img, randomize=False), a)  # the draws of the last randomize()
    assert torch.equal(Corrupt("kspace_spike", 4).set_random_state(seed=1)(img), a)
    assert not torch.equal(t(img), a)
    as_numpy = Corrupt("gaussian_noise", 2).set_random_state(seed=1)(img.numpy())
    assert isinstance(as_numpy, torch.Tensor) and as_numpy.dtype == torch.float32  # as MONAI's transforms do
    assert torch.equal(Corrupt("contrast", 2, prob=0.0)(img), img)


def test_corruptd_in_compose():
    sample = {"image": _smooth(1, (12, 12, 12), seed=7)[0], "label": 1}
    pipeline = Compose([Corruptd(keys="image", name="bias_field", severity=3)])
    pipeline.set_random_state(seed=0)
    a = pipeline(dict(sample))
    pipeline.set_random_state(seed=0)
    b = pipeline(dict(sample))
    assert torch.equal(a["image"], b["image"]) and a["label"] == 1
    assert not torch.equal(a["image"], sample["image"])
    assert float(a["image"].min()) >= 0.0 and float(a["image"].max()) <= 1.0
    assert not torch.equal(pipeline(dict(sample))["image"], a["image"])  # the state moves on
    unchanged = Compose([Corruptd(keys="image", name="bias_field", severity=3, prob=0.0)])(dict(sample))
    assert torch.equal(torch.as_tensor(unchanged["image"]), sample["image"])
    # every key gets the same draws
    two = Corruptd(keys=["a", "b"], name="gaussian_noise", severity=2).set_random_state(seed=4)
    out = two({"a": sample["image"], "b": sample["image"].clone()})
    assert torch.equal(out["a"], out["b"])
    assert CorruptD is Corruptd and CorruptDict is Corruptd
    with pytest.raises(KeyError):
        Corruptd(keys="missing", name="contrast", severity=1)(dict(sample))
    assert Corruptd(keys="missing", name="contrast", severity=1, allow_missing_keys=True)(dict(sample))["label"] == 1
