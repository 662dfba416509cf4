# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""MetaTensor in, MetaTensor out; label types; grad modes the attacks are called under."""

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialPad

from monai_adv.attacks import PGD
from tests.models import TinyClassifier, TinySegmenter

torch.manual_seed(0)
CLS = TinyClassifier(3, 1, 3).eval()
X = torch.rand(2, 1, 8, 8, 8)
Y = torch.tensor([0, 2])


def test_metatensor_keeps_its_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    padded = SpatialPad(spatial_size=(8, 8, 8))(
        MetaTensor(X[0, :, :6], affine=affine, meta={"filename_or_obj": "a.nii"})
    )
    batch = torch.stack([padded, padded.clone()])
    assert isinstance(batch, MetaTensor) and batch.applied_operations
    x_adv = PGD(CLS, eps=4 / 255, steps=2)(batch, Y)
    assert isinstance(x_adv, MetaTensor)
    assert x_adv.meta["filename_or_obj"] == batch.meta["filename_or_obj"]
    assert torch.equal(x_adv.affine, batch.affine)
    assert x_adv.applied_operations == batch.applied_operations
    assert x_adv.is_batch == batch.is_batch
    assert not torch.equal(x_adv.as_tensor(), batch.as_tensor())
    assert (x_adv.as_tensor() - batch.as_tensor()).abs().max() <= 4 / 255


def test_metatensor_labels_and_numpy_labels():
    ref = PGD(CLS, eps=4 / 255, steps=2)(X, Y)
    torch.testing.assert_close(PGD(CLS, eps=4 / 255, steps=2)(X, MetaTensor(Y)), ref, rtol=0, atol=0)
    torch.testing.assert_close(PGD(CLS, eps=4 / 255, steps=2)(X, np.array([0, 2])), ref, rtol=0, atol=0)
    torch.testing.assert_close(PGD(CLS, eps=4 / 255, steps=2)(X, Y[:, None].float()), ref, rtol=0, atol=0)


def test_works_under_no_grad_and_inference_mode():
    ref = PGD(CLS, eps=4 / 255, steps=2)(X, Y)
    with torch.no_grad():
        torch.testing.assert_close(PGD(CLS, eps=4 / 255, steps=2)(X, Y), ref, rtol=0, atol=0)
    with torch.inference_mode():
        x_inf, y_inf = X.clone(), Y.clone()
        out = PGD(CLS, eps=4 / 255, steps=2)(x_inf, y_inf)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_input_that_requires_grad_gives_a_detached_result():
    x = X.clone().requires_grad_(True)
    out = PGD(CLS, eps=4 / 255, steps=2)(x, Y)
    assert not out.requires_grad and x.grad is None


def test_half_precision_input_keeps_its_dtype():
    model = TinySegmenter(2, 1, 2).eval().to(torch.bfloat16)
    x = torch.rand(2, 1, 8, 8).to(torch.bfloat16)
    y = torch.randint(0, 2, (2, 1, 8, 8))
    out = PGD(model, eps=8 / 255, steps=2)(x, y)
    assert out.dtype == torch.bfloat16 and ((out.double() - x.double()).abs() <= 8 / 255).all()


def test_unbounded_intensities():
    hu = torch.randn(2, 1, 8, 8, 8) * 400 - 200  # CT-like Hounsfield units
    out = PGD(CLS, eps=20.0, steps=3, value_range=None)(hu, Y)
    assert (out - hu).abs().max() <= 20.0
    assert out.min() < -500 and out.max() > 200, "no clamping to a value range"
    assert not torch.equal(out, hu)
