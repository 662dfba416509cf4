# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Universal adversarial perturbations: budget, mask and range exact, one tensor for every image, deterministic,
stronger than random noise of the same norm on a trained model."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from monai_adv.attacks import UniversalPerturbation, apply_perturbation, make_attack
from tests.models import TinyClassifier, TinySegmenter, accuracy, bars_dataset


def _loader(x, y, batch=32, mask=None):
    if mask is None:
        return [(x[i : i + batch], y[i : i + batch]) for i in range(0, x.shape[0], batch)]
    return [
        {"image": x[i : i + batch], "label": y[i : i + batch], "roi": mask[i : i + batch]}
        for i in range(0, len(x), batch)
    ]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training


@given(
    dims=st.sampled_from([2, 3]),
    norm=st.sampled_from(["Linf", "L2"]),
    eps=st.floats(0.01, 0.5),
    lo=st.sampled_from([0.0, -1.0]),
    masked=st.booleans(),
    seed=st.integers(0, 3),
)
def test_budget_range_and_mask_are_exact(dims, norm, eps, lo, masked, seed):
    torch.manual_seed(seed)
    model = TinyClassifier(dims, 1, 3, width=4)
    size = (6,) * dims
    x = lo + torch.rand(6, 1, *size) * (1.0 - lo)
    y = torch.randint(0, 3, (6,))
    mask = (torch.rand(6, 1, *size) > 0.5).float() if masked else None
    attack = UniversalPerturbation(model, eps=eps, norm=norm, epochs=2, alpha=eps / 2, value_range=(lo, 1.0))
    delta = attack.fit(_loader(x, y, 3, mask) if masked else _loader(x, y, 3), mask_key="roi" if masked else None)
    norm_of = float(delta.abs().max()) if norm == "Linf" else float(delta.double().norm())
    assert delta.shape == (1, *size) and norm_of <= eps * (1 + 1e-6)
    x_adv = attack(x, y, mask=mask)
    diff = (x_adv.double() - x.double()).flatten(1)
    per_sample = diff.abs().amax(1) if norm == "Linf" else diff.norm(dim=1)
    assert float(per_sample.max()) <= eps * (1 + 1e-6)
    assert float(x_adv.min()) >= lo and float(x_adv.max()) <= 1.0
    if mask is not None:
        assert torch.equal(x_adv[mask == 0], x[mask == 0])


def test_the_fitted_perturbation_is_the_same_for_every_image():
    model = TinyClassifier(2, 1, 3, width=4)
    x, y = torch.full((5, 1, 8, 8), 0.5), torch.tensor([0, 1, 2, 0, 1])
    attack = UniversalPerturbation(model, eps=0.1, epochs=2)
    delta = attack.fit(_loader(x, y, 2))
    x_adv = attack(x, y)  # mid-grey images: no clipping, so every image moves by exactly the fitted tensor
    for row in x_adv:
        assert torch.allclose(row - 0.5, delta, atol=1e-7)
    assert torch.equal(apply_perturbation(x, delta, None, (0.0, 1.0)), x_adv)


def test_fit_is_deterministic_and_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3, width=4).train()
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 3, (12,))
    before, training = _state(model)
    first = UniversalPerturbation(model, eps=0.1, epochs=3).fit(_loader(x, y, 4))
    second = UniversalPerturbation(model, eps=0.1, epochs=3).fit(_loader(x, y, 4))
    assert torch.equal(first, second)
    after, still_training = _state(model)
    assert still_training is training and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_max_batch_gives_the_same_fit():
    torch.manual_seed(1)
    model = TinyClassifier(2, 1, 3, width=4)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    whole = UniversalPerturbation(model, eps=0.1, epochs=2).fit(_loader(x, y, 8))
    chunked = UniversalPerturbation(model, eps=0.1, epochs=2, max_batch=3).fit(_loader(x, y, 8))
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_uap_beats_random_noise_of_the_same_norm_on_a_trained_model(trained_bars):
    model, x_test, y_test = trained_bars
    x_fit, y_fit = bars_dataset(256, seed=2)
    eps = 32 / 255  # the trained model differs slightly with the thread count: a budget where the gap is wide
    attack = make_attack("uap", model, eps=eps, epochs=10)
    delta = attack.fit(_loader(x_fit, y_fit, 64))
    uap_accuracy = accuracy(model, attack(x_test, y_test), y_test)
    generator = torch.Generator().manual_seed(0)
    noise = (torch.randint(0, 2, delta.shape, generator=generator) * 2 - 1).float() * eps  # a corner of the ball
    noise_accuracy = accuracy(model, (x_test + noise).clamp(0, 1), y_test)
    assert accuracy(model, x_test, y_test) >= 0.95 and noise_accuracy >= 0.85
    assert uap_accuracy < noise_accuracy - 0.3, (uap_accuracy, noise_accuracy)  # 0.39 / 0.27 vs 0.94 (1 / 2 threads)
    result = attack.perturb(x_test, y_test)
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y_test)


def test_l2_and_targeted_uap(trained_bars):
    model, x_test, y_test = trained_bars
    x_fit, y_fit = bars_dataset(128, seed=3)
    l2 = UniversalPerturbation(model, eps=2.0, norm="L2", epochs=3, alpha=0.5)
    delta = l2.fit(_loader(x_fit, y_fit, 64))
    assert float(delta.double().norm()) <= 2.0 + 1e-6
    assert accuracy(model, l2(x_test, y_test), y_test) < accuracy(model, x_test, y_test)
    targeted = UniversalPerturbation(model, eps=24 / 255, epochs=3, target_class=0)
    targeted.fit(_loader(x_fit, y_fit, 64))
    predicted = model(targeted(x_test, y_test)).argmax(1)
    clean = model(x_test).argmax(1)
    assert float((predicted == 0).float().mean()) > float((clean == 0).float().mean())
    result = targeted.perturb(x_test, y_test)
    assert torch.equal(result.success, (predicted == 0) & (y_test != 0))  # images of class 0 are no success


def test_segmentation_and_3d():
    torch.manual_seed(0)
    segmenter = TinySegmenter(3, 1, 2, width=4)
    x = torch.rand(4, 1, 8, 8, 8)
    labels = (x > 0.5).long()
    attack = UniversalPerturbation(segmenter, eps=0.05, epochs=2, task="segmentation")
    delta = attack.fit(_loader(x, labels, 2))
    assert delta.shape == (1, 8, 8, 8)
    result = attack.perturb(x, labels)
    assert result.task == "segmentation" and result.x_adv.shape == x.shape


def test_bad_use_is_refused():
    model = TinyClassifier(2, 1, 3, width=4)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="not fitted"):
        UniversalPerturbation(model, eps=0.1)(x, y)
    attack = UniversalPerturbation(model, eps=0.1, epochs=1)
    attack.fit(_loader(x, y))
    with pytest.raises(ValueError, match="do not match the universal perturbation"):
        attack(torch.rand(2, 1, 6, 6), y)
    with pytest.raises(TypeError, match="`data` must be an iterable of batches"):
        attack.fit(x)
    with pytest.raises(ValueError, match="no batch with samples"):
        attack.fit([])
    with pytest.raises(KeyError, match="'label'"):
        attack.fit([{"image": x}])
    with pytest.raises(ValueError, match="`perturbation` has Linf norm"):
        UniversalPerturbation(model, eps=0.1, perturbation=torch.full((1, 8, 8), 0.2))
    with pytest.raises(TypeError, match="targeted"):
        UniversalPerturbation(model, eps=0.1, targeted=True)
    with pytest.raises(ValueError, match="`target_class`"):
        UniversalPerturbation(model, eps=0.1, target_class=-1)
    given_delta = torch.full((1, 8, 8), 0.05)
    applied = UniversalPerturbation(model, eps=0.1, perturbation=given_delta)(torch.full((2, 1, 8, 8), 0.5), y)
    assert torch.allclose(applied, torch.full_like(applied, 0.55))


def test_apply_perturbation_transform_equals_the_attack(tmp_path):
    from monai.data import MetaTensor
    from monai.transforms import Compose, EnsureTyped

    from monai_adv.transforms import ApplyPerturbation, ApplyPerturbationd

    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3, width=4)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    roi = (torch.rand(6, 1, 8, 8) > 0.3).float()
    attack = UniversalPerturbation(model, eps=0.2, epochs=2)
    delta = attack.fit(_loader(x, y, 3))
    path = tmp_path / "uap.pt"
    torch.save(delta, path)
    expected = attack(x, y, mask=roi)
    pipeline = Compose([EnsureTyped(keys="image"), ApplyPerturbationd("image", str(path), mask_key="roi")])
    for i in range(6):
        sample = {"image": MetaTensor(x[i], meta={"filename_or_obj": f"{i}.nii"}), "roi": roi[i], "label": y[i]}
        out = pipeline(sample)["image"]
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == f"{i}.nii"
        assert torch.equal(out.as_tensor(), expected[i])
    assert torch.equal(ApplyPerturbation(attack)(x), attack(x, y))  # the fitted attack itself, on a batch
    with pytest.raises(ValueError, match="does not take the perturbation"):
        ApplyPerturbation(delta)(torch.rand(1, 6, 6))
    with pytest.raises(ValueError, match="not fitted"):
        ApplyPerturbation(UniversalPerturbation(model, eps=0.1))
    with pytest.raises(FileNotFoundError, match="`perturbation`"):
        ApplyPerturbation(tmp_path / "missing.pt")
    with pytest.raises(KeyError, match="`mask_key`"):
        ApplyPerturbationd("image", delta, mask_key="roi")({"image": x[0]})


def test_outside_the_mask_nothing_changes_even_out_of_range_and_targeted_success_needs_a_change():
    x = torch.tensor([[[[1.5, -0.4], [0.5, 0.5]]]])
    mask = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    out = apply_perturbation(x, torch.full((1, 2, 2), 0.7), mask, (0.0, 1.0))
    assert torch.equal(out[mask == 0], x[mask == 0]) and torch.equal(out[mask == 1], torch.ones(2))
    model = TinyClassifier(2, 1, 3, width=4)
    images = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    tiny = UniversalPerturbation(model, eps=1e-6, target_class=0, perturbation=torch.zeros(1, 8, 8))
    result = tiny.perturb(images, predicted)  # right and already of class 0 where predicted == 0: no success
    assert not bool(result.success.any())
    with pytest.raises(ValueError, match="`target_class` pushes every image to one class"):
        tiny.perturb(images, torch.zeros(4, 1, 8, 8, dtype=torch.long))


def test_bfloat16_network_fits():
    model = TinyClassifier(2, 1, 3, width=4).to(torch.bfloat16)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    delta = UniversalPerturbation(model, eps=0.1, epochs=1).fit(_loader(x, y, 2))
    assert delta.shape == (1, 8, 8) and float(delta.abs().max()) <= 0.1 + 1e-6
