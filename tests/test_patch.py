# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial patches, per image and universal, 2D and 3D: only the window changes, inside the value range and the
region of interest; placements per sample; deterministic; stronger than a random patch on a trained model."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_adv.attacks import attack_arguments, attack_class, make_attack
from monai_adv.attacks.patch import PatchAttack, UniversalPatch, draw_corners, patch_side, size_label
from tests.cases import same_snapshot, snapshot
from tests.models import PerSample, TinyClassifier, TinySegmenter, accuracy


def _loader(x, y, batch=4, mask=None):
    if mask is None:
        return [(x[i : i + batch], y[i : i + batch]) for i in range(0, x.shape[0], batch)]
    return [
        {"image": x[i : i + batch], "label": y[i : i + batch], "roi": mask[i : i + batch]}
        for i in range(0, len(x), batch)
    ]


def _windows(shape, location, side):
    """The windows (N, C, *spatial) of the corners, built by slicing (independently of the attack's code)."""
    window = torch.zeros(shape, dtype=torch.bool)
    for i, corner in enumerate(location.tolist()):
        if min(corner) >= 0:
            window[(i, slice(None)) + tuple(slice(c, c + side) for c in corner)] = True
    return window


def _check_contract(x, result, mask, lo=0.0, hi=1.0):
    """Outside the windows (and the mask) x_adv is x bit for bit; everything stays in the range; each placed
    window's centre lies in the mask."""
    x_adv, location, side = result.x_adv, result.details["location"], result.details["patch_side"]
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert location.shape == (x.shape[0], x.ndim - 2) and location.dtype == torch.long
    assert isinstance(side, int) and 1 <= side <= min(x.shape[2:])
    window = _windows(x.shape, location, side)
    if mask is not None:
        window &= mask.expand_as(x) != 0
    assert torch.equal(x_adv[~window], x[~window]), "changed a voxel outside the window or the mask"
    assert float(x_adv.min()) >= lo and float(x_adv.max()) <= hi, "left the value range"
    placed = (location >= 0).all(dim=1)
    assert bool(((location >= 0).all(dim=1) | (location == -1).all(dim=1)).all())
    for i in range(x.shape[0]):
        if placed[i]:
            assert all(c + side <= s for c, s in zip(location[i].tolist(), x.shape[2:]))
        else:
            assert torch.equal(x_adv[i], x[i])
    if mask is not None and result.details.get("location") is not None:
        centre = (mask.expand_as(x) != 0).any(dim=1)
        for i in range(x.shape[0]):
            if placed[i] and mask.shape[0] == x.shape[0]:
                point = tuple(c + side // 2 for c in location[i].tolist())
                assert bool(centre[(i,) + point]), "a window centre outside the mask"


def _check_universal(x, result, patch, mask):
    """Every placed window holds exactly the fitted patch (where the mask allows)."""
    side = patch.shape[-1]
    for i, corner in enumerate(result.details["location"].tolist()):
        if min(corner) < 0:
            continue
        box = (i, slice(None)) + tuple(slice(c, c + side) for c in corner)
        allowed = torch.ones_like(patch, dtype=torch.bool) if mask is None else mask.expand_as(x)[box] != 0
        assert torch.equal(result.x_adv[box][allowed], patch.to(x.dtype)[allowed])
        assert torch.equal(result.x_adv[box][~allowed], x[box][~allowed])


# ---- sizes ------------------------------------------------------------------------------------------------------


def test_patch_side_values():
    assert patch_side(16, (64, 64)) == 16
    assert patch_side(1, (8, 8, 8)) == 1
    assert patch_side(0.05, (100, 100)) == round(math.sqrt(500))
    assert patch_side(0.1, (16, 16)) == 5
    assert patch_side(0.1, (12, 12, 12)) == round(172.8 ** (1 / 3)) == 6
    assert patch_side(1.0, (8, 32)) == 8  # at most the smallest side
    assert patch_side(1e-6, (16, 16)) == 1  # at least one voxel
    assert patch_side(0.25, (64, 64, 64)) == 40


@pytest.mark.parametrize("size", [0, -3, 1.5, 0.0, -0.1, float("nan"), float("inf"), True, "5", None])
def test_patch_side_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="`size` must be an int >= 1 .* or a float in \\(0, 1\\]"):
        patch_side(size, (16, 16))


def test_patch_side_rejects_a_side_larger_than_the_image():
    with pytest.raises(ValueError, match="`size`=20 voxels does not fit"):
        patch_side(20, (16, 16))


def test_size_label():
    assert size_label(0.05) == "5%" and size_label(0.125) == "12.5%" and size_label(1.0) == "100%"
    assert size_label(16) == "16 px" and size_label(1) == "1 px"


# ---- placement --------------------------------------------------------------------------------------------------


def test_corners_are_uniform_among_the_admissible_windows():
    region = torch.zeros(1, 10, 10, dtype=torch.bool)
    for point in [(2, 2), (5, 7), (9, 9)]:  # (9, 9) is no window centre of side 4: its corner 7 + 4 > 10
        region[(0,) + point] = True
    u = torch.rand(3000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    corners = draw_corners((10, 10), 4, u, region.expand(3000, 10, 10))
    values, counts = torch.unique(corners, dim=0, return_counts=True)
    found = {tuple(c): k for c, k in zip(values.tolist(), counts.tolist())}
    assert set(found) == {(0, 0), (3, 5)}
    assert abs(found[(0, 0)] - 1500) < 150
    free = draw_corners((10, 12), 4, u)
    assert int(free[:, 0].min()) == 0 and int(free[:, 0].max()) == 6 and int(free[:, 1].max()) == 8


def test_placement_in_a_large_volume_is_cheap_and_inside_the_mask():
    region = torch.zeros(3, 64, 64, 64, dtype=torch.bool)
    region[0, 30:34, 10:12, 50:60] = True
    region[1] = torch.rand(64, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.999
    u = torch.rand(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    corners = draw_corners((64, 64, 64), 9, u, region)
    assert corners[2].tolist() == [-1, -1, -1]  # an empty region: no window
    for i in range(2):
        assert all(0 <= c <= 64 - 9 for c in corners[i].tolist())
        assert bool(region[(i,) + tuple(c + 4 for c in corners[i].tolist())])


# ---- the contract -----------------------------------------------------------------------------------------------


def _attack(kind, model, x, y, mask=None, **kwargs):
    """(result, fitted patch or None) of a per-image or a universal patch attack."""
    steps, epochs = kwargs.pop("steps", 3), kwargs.pop("epochs", 2)
    if kind == "image":
        return PatchAttack(model, steps=steps, **kwargs).perturb(x, y, mask=mask), None
    attack = UniversalPatch(model, epochs=epochs, **kwargs)
    fit_mask = None if mask is None else mask.expand(x.shape[0], *mask.shape[1:])
    patch = attack.fit(_loader(x, y, 2, fit_mask), mask_key="roi" if mask is not None else None)
    return attack.perturb(x, y, mask=mask), patch


@pytest.mark.parametrize("kind", ["image", "universal"])
@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 1, 12, 12, 12)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 2.0)])
def test_only_the_window_changes_inside_the_range(kind, shape, masked, value_range):
    torch.manual_seed(0)
    dims = len(shape) - 2
    model = TinyClassifier(dims, 1, 3).eval()
    lo, hi = value_range
    x = lo + (hi - lo) * torch.rand(shape)
    y = torch.tensor([0, 1])
    mask = None
    if masked:
        mask = torch.zeros(shape)
        mask[(slice(None), slice(None)) + (slice(3, 9),) * dims] = 1
    result, patch = _attack(kind, model, x, y, mask, size=0.1, value_range=value_range, early_stop=False)
    _check_contract(x, result, mask, lo, hi)
    assert bool((result.details["location"] >= 0).all())  # every sample attacked: early_stop=False
    assert result.details["patch_side"] == patch_side(0.1, shape[2:])
    assert not torch.equal(result.x_adv, x)
    assert result.success.shape == (2,) and result.loss.shape == (2,)
    if patch is not None:
        assert patch.shape == (1,) + (result.details["patch_side"],) * dims
        _check_universal(x, result, patch, mask)


@settings(max_examples=20)
@given(data=st.data())
def test_contract_over_random_shapes_sizes_and_masks(data):
    dims = data.draw(st.sampled_from([2, 3]))
    spatial = tuple(data.draw(st.integers(5, 10)) for _ in range(dims))
    channels, n = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    size = data.draw(st.one_of(st.integers(1, 5), st.floats(0.001, 1.0)))
    kind = data.draw(st.sampled_from(["image", "universal"]))
    seed = data.draw(st.integers(0, 1000))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyClassifier(dims, channels, 3, width=4).eval()
    x = torch.rand(n, channels, *spatial, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    mask = None
    if data.draw(st.booleans()):
        mask = (torch.rand(n, data.draw(st.sampled_from([1, channels])), *spatial, generator=g) > 0.6).float()
    location = "random"
    if data.draw(st.booleans()):
        side = patch_side(size, spatial)
        location = tuple(data.draw(st.integers(0, s - side)) for s in spatial)
    result, patch = _attack(kind, model, x, y, mask, size=size, location=location, seed=seed, epochs=1, steps=2)
    _check_contract(x, result, mask if location == "random" else None)
    if location != "random":
        window = _windows(x.shape, result.details["location"], result.details["patch_side"])
        if mask is not None:
            window &= mask.expand_as(x) != 0
        assert torch.equal(result.x_adv[~window], x[~window])
        placed = (result.details["location"] >= 0).all(dim=1)
        assert (result.details["location"][placed] == torch.tensor(location)).all()
    if patch is not None:
        _check_universal(x, result, patch, mask)


@pytest.mark.parametrize("task", ["segmentation", "binary", "multilabel"])
@pytest.mark.parametrize("kind", ["image", "universal"])
def test_other_tasks(task, kind):
    torch.manual_seed(0)
    x = torch.rand(3, 1, 12, 12)
    if task == "segmentation":
        model, y = TinySegmenter(2, 1, 3).eval(), torch.randint(0, 3, (3, 1, 12, 12))
    elif task == "binary":
        model, y = TinyClassifier(2, 1, 1).eval(), torch.tensor([0, 1, 1])
    else:
        model, y = TinyClassifier(2, 1, 4).eval(), torch.randint(0, 2, (3, 4)).float()
    result, patch = _attack(kind, model, x, y, size=0.2, early_stop=False)
    _check_contract(x, result, None)
    assert result.task == ("classification" if task == "binary" else task)
    assert result.success.dtype == torch.bool and result.success.shape == (3,)
    if patch is not None:
        _check_universal(x, result, patch, None)


def test_targeted():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3).eval()
    x, y, target = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    result = PatchAttack(model, size=0.2, steps=5, targeted=True).perturb(x, y, target=target)
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) == target)
    universal = UniversalPatch(model, size=0.2, epochs=1, target_class=2)
    universal.fit(_loader(x, y))
    result = universal.perturb(x, y)
    with torch.no_grad():
        assert torch.equal(result.success, (model(result.x_adv).argmax(1) == 2) & (y != 2))  # class 2 already: no
    segmenter = TinySegmenter(2, 1, 3).eval()
    labels = torch.randint(0, 3, (4, 1, 16, 16))
    universal = UniversalPatch(segmenter, size=0.2, epochs=1, target_class=1)
    universal.fit(_loader(x, labels))
    _check_contract(x, universal.perturb(x, labels), None)


def test_a_sample_without_an_admissible_window_is_left_unchanged():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3).eval()
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 1])
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 6:10, 6:10] = 1  # the second sample has an empty region
    for kind in ("image", "universal"):
        result, _ = _attack(kind, model, x, y, mask, size=0.1, early_stop=False)
        assert result.details["location"][1].tolist() == [-1, -1] and (result.details["location"][0] >= 0).all()
        assert torch.equal(result.x_adv[1], x[1])
        assert any("left unchanged" in note for note in result.details["notes"])
        _check_contract(x, result, mask)


# ---- the model, the batch, the seed -----------------------------------------------------------------------------


def test_model_left_exactly_as_found():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3).train()
    params = list(model.parameters())
    params[0].grad = torch.randn_like(params[0])
    params[-1].requires_grad_(False)
    before = snapshot(model)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    universal = UniversalPatch(model, size=0.1, epochs=2)
    universal.fit(_loader(x, y))
    assert same_snapshot(before, snapshot(model))
    universal.perturb(x, y)
    PatchAttack(model, size=0.1, steps=3).perturb(x, y)
    assert same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("kind", ["image", "universal"])
def test_a_sample_alone_equals_its_row_in_the_batch(kind):
    torch.manual_seed(0)
    model = PerSample(TinyClassifier(2, 1, 3).double().eval())
    x, y = torch.rand(4, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    mask = torch.zeros(4, 1, 16, 16, dtype=torch.float64)
    mask[:, :, 2:14, 4:12] = 1
    mask[2, :, :8] = 0
    if kind == "image":
        attack = PatchAttack(model, size=0.1, steps=4, restarts=2, early_stop=True)
    else:
        attack = UniversalPatch(model, size=0.1, patch=torch.rand(1, 5, 5, dtype=torch.float64))
    batch = attack.perturb(x, y, mask=mask)
    flip = torch.arange(3, -1, -1)
    flipped = attack.perturb(x[flip], y[flip], mask=mask[flip])
    assert torch.equal(flipped.details["location"][flip], batch.details["location"])
    torch.testing.assert_close(flipped.x_adv[flip], batch.x_adv, rtol=0, atol=1e-6)
    for i in range(4):
        alone = attack.perturb(x[i : i + 1], y[i : i + 1], mask=mask[i : i + 1])
        assert torch.equal(alone.details["location"][0], batch.details["location"][i])
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-6)
        assert bool(alone.success[0] == batch.success[i])
    chunked = type(attack)(model, size=0.1, max_batch=3, **({"steps": 4, "restarts": 2} if kind == "image" else {}))
    if kind != "image":
        chunked.fitted = attack.fitted
    joined = chunked.perturb(x, y, mask=mask)
    assert joined.details["patch_side"] == 5 and torch.equal(joined.details["location"], batch.details["location"])
    torch.testing.assert_close(joined.x_adv, batch.x_adv, rtol=0, atol=1e-6)


def test_fit_is_deterministic_for_a_seed_and_chunks_do_not_change_it():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3).double().eval()
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 3, (8,))
    first = UniversalPatch(model, size=0.1, epochs=2, seed=3).fit(_loader(x, y))
    again = UniversalPatch(model, size=0.1, epochs=2, seed=3).fit(_loader(x, y))
    chunked = UniversalPatch(model, size=0.1, epochs=2, seed=3, max_batch=3).fit(_loader(x, y))
    other = UniversalPatch(model, size=0.1, epochs=2, seed=4).fit(_loader(x, y))
    assert torch.equal(first, again) and torch.equal(first, chunked)
    assert not torch.equal(first, other)
    attack = PatchAttack(model, size=0.1, steps=3, seed=3)
    assert torch.equal(attack(x, y), PatchAttack(model, size=0.1, steps=3, seed=3)(x, y))


# ---- strength on a trained model --------------------------------------------------------------------------------


def test_patches_on_a_trained_model(trained_bars):
    model, x_test, y_test = trained_bars
    x_fit, y_fit, x, y = x_test[:128], y_test[:128], x_test[128:], y_test[128:]
    clean = accuracy(model, x, y)
    universal = UniversalPatch(model, size=0.15, epochs=5, seed=0)
    patch = universal.fit(_loader(x_fit, y_fit, 32))
    fitted = universal.perturb(x, y)
    noise = torch.rand(patch.shape, generator=torch.Generator().manual_seed(1))
    random = UniversalPatch(model, size=0.15, patch=noise, seed=0).perturb(x, y)
    assert torch.equal(random.details["location"], fitted.details["location"])  # the same placements
    per_image = PatchAttack(model, size=0.15, steps=20, seed=0).perturb(x, y)
    accuracies = {
        name: accuracy(model, result.x_adv, y)
        for name, result in (("random", random), ("universal", fitted), ("per_image", per_image))
    }
    assert clean >= 0.95
    assert accuracies["universal"] <= accuracies["random"] - 0.2, accuracies
    assert accuracies["per_image"] <= accuracies["universal"] - 0.1, accuracies
    assert int(per_image.success.sum()) > int(fitted.success.sum())
    assert universal.fit_history and len(universal.fit_history) == 5

    roi = torch.zeros(1, 1, 16, 16)
    roi[..., 10:15, 2:7] = 1
    result = PatchAttack(model, size=0.15, steps=5, seed=0, early_stop=False).perturb(x[:16], y[:16], mask=roi)
    side = result.details["patch_side"]
    for corner in result.details["location"].tolist():
        assert 10 <= corner[0] + side // 2 < 15 and 2 <= corner[1] + side // 2 < 7
    _check_contract(x[:16], result, roi.expand(16, 1, 16, 16))


# ---- registration and errors ------------------------------------------------------------------------------------


def test_registration():
    assert attack_class("patch") is UniversalPatch and attack_class("universal_patch") is UniversalPatch
    assert attack_class("image_patch") is PatchAttack
    for name in ("patch", "image_patch"):
        cls = attack_class(name)
        assert cls.threat_model == "patch" and cls.budget == "size"
        assert "eps" not in attack_arguments(name) and "norm" not in attack_arguments(name)
        assert {"size", "location", "max_batch", "seed"} <= set(attack_arguments(name))
    assert "targeted" not in attack_arguments("patch") and "target_class" in attack_arguments("patch")
    assert isinstance(make_attack("image_patch", TinyClassifier(), size=8, steps=2), PatchAttack)


def test_errors():
    model = TinyClassifier(2, 1, 3).eval()
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 1])
    for cls in (PatchAttack, UniversalPatch):
        with pytest.raises(ValueError, match="`value_range` must be a pair"):
            cls(model, value_range=None)
        for size in (0, 1.5, -3):
            with pytest.raises(ValueError, match="`size` must be"):
                cls(model, size=size)
        with pytest.raises(TypeError, match="takes no argument"):
            cls(model, eps=0.1)
        with pytest.raises(TypeError, match="takes no argument"):
            cls(model, norm="L2")
        with pytest.raises(ValueError, match="`location`"):
            cls(model, location="centre")
        with pytest.raises(ValueError, match="`location`"):
            cls(model, location=(-1, 2))
    with pytest.raises(ValueError, match="`location`=\\(12, 0\\)"):
        PatchAttack(model, size=5, location=(12, 0), steps=1).perturb(x, y)
    with pytest.raises(ValueError, match="`location`"):
        PatchAttack(model, size=5, location=(0, 0, 0), steps=1).perturb(x, y)  # a 3D corner for 2D images
    with pytest.raises(ValueError, match="does not fit"):
        PatchAttack(model, size=20, steps=1).perturb(x, y)
    with pytest.raises(TypeError, match="takes no argument"):
        UniversalPatch(model, targeted=True)
    with pytest.raises(RuntimeError, match="not fitted"):
        UniversalPatch(model).perturb(x, y)
    with pytest.raises(ValueError, match="`patch` must have shape"):
        UniversalPatch(model, patch=torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match="`patch` has side 4"):
        UniversalPatch(model, size=5, patch=torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="inside `value_range`"):
        UniversalPatch(model, patch=torch.full((1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="does not fit images"):
        UniversalPatch(model, patch=torch.rand(2, 4, 4)).perturb(x, y)  # two channels for one-channel images
    with pytest.raises(ValueError, match="`location`"):
        UniversalPatch(model, size=5, location=(0, 14), epochs=1).fit(_loader(x, y))
