# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Figures of monai_adv.visualize: valid PNGs, mid-slices, argument checks, and Grad-CAM leaving the model intact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.networks.nets import ResNet, UNet
from PIL import Image

from monai_adv.visualize import (
    default_target_layer,
    display_slice,
    gradcam_maps,
    mid_slice,
    plot_adversarial_examples,
    plot_gradcam,
    plot_robustness_curves,
)

__all__: list = []

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
EPS_LABELS = ["1/255", "2/255", "4/255", "8/255"]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_full_backward_hooks")


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny networks run fastest on one thread, and stay fast when other processes load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_png(path):
    assert path.is_file()
    with open(path, "rb") as stream:
        assert stream.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 0 and image.size[1] > 0
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def make_report(name, metric="accuracy", task="classification", strength=1.0):
    """A hand-built robustness report: FGSM, worst-case and PGD rows for four budgets (worst case drawn last)."""
    rows = []
    for attack, drop in (("fgsm", 0.08), ("worst-case", 0.2), ("pgd", 0.15)):
        for i, (eps, label) in enumerate(zip(EPS, EPS_LABELS)):
            value = max(0.0, 0.95 - drop * (i + 1) / strength)
            rows.append({"attack": attack, "eps": eps, "eps_label": label, "metrics": {metric: value, "recall": value}})
    return {
        "schema": "monai_adv.robustness_report",
        "schema_version": "1.0",
        "task": task,
        "primary_metric": metric,
        "model": {"name": name},
        "norm": "Linf",
        "eps": EPS,
        "clean": {metric: 0.95, "recall": 0.94},
        "results": rows,
    }


def resnet(spatial_dims=2, seed=0):
    torch.manual_seed(seed)
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [8, 16, 32, 64],
        spatial_dims=spatial_dims,
        n_input_channels=1,
        num_classes=2,
        conv1_t_stride=1,
        no_max_pool=True,
    )


def inputs(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=generator)
    return x, (x + 0.03 * torch.randn(*shape, generator=generator).sign()).clamp(0, 1)


# -- slices ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 8, 9), (8, 9)),
        ((3, 8, 9), (8, 9, 3)),
        ((2, 8, 9), (8, 9)),
        ((1, 8, 9, 5), (8, 9)),
        ((3, 8, 9, 5), (8, 9, 3)),
    ],
)
def test_display_slice_shapes(shape, expected):
    image = torch.rand(*shape)
    shown = display_slice(image)
    assert shown.shape == expected and shown.dtype == np.float64
    assert display_slice(image.numpy()).shape == expected


def test_display_slice_takes_the_axial_mid_slice():
    volume = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 4, 4, 5)
    assert np.all(display_slice(volume) == 2.0)
    labels = torch.zeros(1, 4, 4, 6, dtype=torch.long)
    labels[..., 3] = 7
    sliced = mid_slice(labels)
    assert sliced.shape == (4, 4) and np.all(sliced == 7) and np.issubdtype(sliced.dtype, np.integer)
    one_hot = torch.zeros(3, 4, 4)
    one_hot[2] = 1
    assert np.all(mid_slice(one_hot) == 2)


@pytest.mark.parametrize("shape", [(8, 9), (1, 1, 8, 9, 5, 2), (8,)])
def test_slices_reject_wrong_ndim(shape):
    with pytest.raises(ValueError, match="`image`"):
        display_slice(torch.rand(*shape))
    with pytest.raises(ValueError, match="`volume`"):
        mid_slice(torch.rand(*shape))


# -- robustness curves ----------------------------------------------------------------------------------------------


def test_curves_single_report(tmp_path):
    path = plot_robustness_curves(make_report("NAT"), tmp_path / "single.png")
    assert path == tmp_path / "single.png"
    assert_png(path)


def test_curves_two_methods(tmp_path):
    reports = {"NAT": make_report("NAT"), "PGD-AT": make_report("PGD-AT", strength=3.0)}
    path = plot_robustness_curves(reports, str(tmp_path / "sub" / "two.png"), title="robustness")
    assert_png(path)
    assert_png(plot_robustness_curves(reports, tmp_path / "recall.png", metric="recall"))


def test_curves_segmentation_dice(tmp_path):
    reports = {
        "NAT": make_report("NAT", metric="dice", task="segmentation"),
        "PGD-AT": make_report("PGD-AT", metric="dice", task="segmentation", strength=2.0),
    }
    assert_png(plot_robustness_curves(reports, tmp_path / "dice.png"))
    assert_png(plot_robustness_curves(reports["NAT"], tmp_path / "dice_single.png"))


def test_curves_overwrite_atomically(tmp_path):
    path = tmp_path / "curve.png"
    path.write_bytes(b"old")
    plot_robustness_curves(make_report("NAT"), path)
    assert_png(path)


def test_curves_reject_missing_metric(tmp_path):
    with pytest.raises(ValueError, match="'auc'"):
        plot_robustness_curves(make_report("NAT"), tmp_path / "x.png", metric="auc")
    report = make_report("NAT")
    del report["results"][2]["metrics"]["accuracy"]
    with pytest.raises(ValueError, match="results\\[2\\]"):
        plot_robustness_curves({"NAT": make_report("NAT"), "bad": report}, tmp_path / "x.png")
    report = make_report("NAT")
    del report["clean"]["accuracy"]
    with pytest.raises(ValueError, match="clean"):
        plot_robustness_curves(report, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_curves_reject_empty_results(tmp_path):
    report = make_report("NAT")
    report["results"] = []
    with pytest.raises(ValueError, match="no results"):
        plot_robustness_curves(report, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no results"):
        plot_robustness_curves({"NAT": make_report("NAT"), "empty": report}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="`reports`"):
        plot_robustness_curves({}, tmp_path / "x.png")


# -- adversarial examples -------------------------------------------------------------------------------------------


def test_examples_2d_classification(tmp_path):
    x, x_adv = inputs(5, 1, 24, 24)
    path = plot_adversarial_examples(
        x,
        x_adv,
        tmp_path / "examples.png",
        labels=torch.tensor([0, 1, 0, 1, 1]),
        clean_predictions=torch.tensor([0, 1, 0, 1, 0]),
        adversarial_predictions=torch.tensor([1, 0, 1, 1, 0]),
        class_names=["benign", "malignant"],
        max_samples=3,
    )
    assert_png(path)
    with Image.open(path) as image:
        assert image.size[1] < image.size[0] * 1.5  # three rows of three panels, not five


def test_examples_3d_and_rgb(tmp_path):
    x, x_adv = inputs(2, 1, 16, 16, 8)
    assert_png(plot_adversarial_examples(x, x_adv, tmp_path / "volume.png", labels=[1, 0], amplify=10.0))
    x, x_adv = inputs(2, 3, 16, 16)
    assert_png(plot_adversarial_examples(x.numpy(), x_adv.numpy(), tmp_path / "rgb.png"))


def test_examples_multilabel(tmp_path):
    x, x_adv = inputs(3, 1, 20, 20)
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert_png(
        plot_adversarial_examples(
            x,
            x_adv,
            tmp_path / "multilabel.png",
            labels=labels,
            clean_predictions=labels,
            adversarial_predictions=1 - labels,
            class_names=["effusion", "nodule", "mass"],
        )
    )


def test_examples_segmentation(tmp_path):
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), num_res_units=0).eval()
    x, x_adv = inputs(2, 1, 32, 32)
    label = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    label[:, :, 8:20, 10:24] = 1
    with torch.no_grad():
        clean = net(x).argmax(1, keepdim=True)
        adv = net(x_adv).argmax(1, keepdim=True)
    segmentation = {"label": label, "clean": clean, "adversarial": adv}
    assert_png(plot_adversarial_examples(x, x_adv, tmp_path / "seg.png", segmentation=segmentation))
    label3d = torch.zeros(1, 1, 16, 16, 8, dtype=torch.long)
    label3d[:, :, 4:10, 4:10, 2:6] = 2
    x3, x3_adv = inputs(1, 1, 16, 16, 8)
    segmentation = {"label": label3d, "clean": label3d, "adversarial": torch.zeros_like(label3d)}
    assert_png(plot_adversarial_examples(x3, x3_adv, tmp_path / "seg3d.png", segmentation=segmentation))


def test_examples_reject_bad_shapes(tmp_path):
    x, x_adv = inputs(2, 1, 16, 16)
    with pytest.raises(ValueError, match="`adversarial`"):
        plot_adversarial_examples(x, x_adv[:, :, :8], tmp_path / "x.png")
    with pytest.raises(ValueError, match="`images`"):
        plot_adversarial_examples(x[0], x_adv[0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="`labels`"):
        plot_adversarial_examples(x, x_adv, tmp_path / "x.png", labels=[0, 1, 1])
    with pytest.raises(ValueError, match="`adversarial_predictions`"):
        plot_adversarial_examples(x, x_adv, tmp_path / "x.png", adversarial_predictions=torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match='segmentation\\["clean"\\]'):
        plot_adversarial_examples(
            x, x_adv, tmp_path / "x.png", segmentation={"clean": torch.zeros(2, 1, 8, 8, dtype=torch.long)}
        )
    assert not (tmp_path / "x.png").exists()


# -- Grad-CAM -------------------------------------------------------------------------------------------------------


def test_default_target_layer():
    model = resnet()
    name = default_target_layer(model)
    assert name.startswith("layer4.") and isinstance(dict(model.named_modules())[name], nn.Conv2d)
    assert isinstance(dict(resnet(3).named_modules())[default_target_layer(resnet(3))], nn.Conv3d)
    with pytest.raises(ValueError, match="`model`"):
        default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))


def test_gradcam_maps_shape_and_range():
    x, _ = inputs(3, 1, 24, 24)
    for layer in (None, "layer4"):
        maps = gradcam_maps(resnet(), x, target_layer=layer)
        assert maps.shape == (3, 1, 24, 24)
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    with pytest.raises(ValueError, match="target_layer"):
        gradcam_maps(resnet(), x, target_layer="layer9")
    with pytest.raises(ValueError, match="`images`"):
        gradcam_maps(resnet(), x[0])


def test_gradcam_maps_per_sample_class():
    """Each sample's map is that of its own predicted class, as if computed alone."""
    model = resnet()
    x = torch.rand(6, 1, 24, 24) * torch.linspace(0.2, 1.0, 6).view(6, 1, 1, 1)
    with torch.no_grad():  # shift the class-1 bias so that half of the samples are predicted as each class
        logits = model.eval()(x)
        margin = (logits[:, 1] - logits[:, 0]).sort().values
        model.fc.bias[1] -= (margin[2] + margin[3]) / 2
        predictions = model(x).argmax(1)
    assert len(predictions.unique()) == 2, "the test needs both classes predicted"
    maps = gradcam_maps(model, x)
    alone = torch.cat([gradcam_maps(model, x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(maps, alone, atol=1e-5, rtol=1e-4)


def test_gradcam_plot_2d_two_models(tmp_path):
    x, x_adv = inputs(3, 1, 24, 24)
    _, x_adv_robust = inputs(3, 1, 24, 24, seed=1)
    entries = [
        {"name": "NAT", "model": resnet(seed=0), "images": x, "adversarial": x_adv, "target_layer": None},
        {
            "name": "PGD-AT",
            "model": resnet(seed=1),
            "images": x,
            "adversarial": x_adv_robust,
            "target_layer": "layer4",
            "class_names": ["benign", "malignant"],
        },
    ]
    assert_png(plot_gradcam(entries, tmp_path / "gradcam.png", max_samples=2))


def test_gradcam_plot_3d_two_models(tmp_path):
    x, x_adv = inputs(2, 1, 16, 16, 16)
    entries = [
        {"name": "NAT", "model": resnet(3, seed=0), "images": x, "adversarial": x_adv, "target_layer": None},
        {"name": "PGD-AT", "model": resnet(3, seed=1), "images": x, "adversarial": x_adv.flip(-1)},
    ]
    assert_png(plot_gradcam(entries, tmp_path / "gradcam3d.png"))


def test_gradcam_plot_rejects_bad_entries(tmp_path):
    x, x_adv = inputs(2, 1, 16, 16)
    with pytest.raises(ValueError, match="`entries`"):
        plot_gradcam([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="entries\\[0\\]"):
        plot_gradcam([{"name": "NAT", "images": x, "adversarial": x_adv}], tmp_path / "x.png")
    with pytest.raises(ValueError, match='entries\\[1\\]\\["adversarial"\\]'):
        plot_gradcam(
            [
                {"model": resnet(), "images": x, "adversarial": x_adv},
                {"model": resnet(), "images": x, "adversarial": x_adv[:1]},
            ],
            tmp_path / "x.png",
        )
    assert not (tmp_path / "x.png").exists()


def assert_no_hooks(model):
    for name, module in model.named_modules():
        for registry in HOOK_DICTS:
            assert len(getattr(module, registry, {})) == 0, f"{registry} left on {name!r}"
        assert module._is_full_backward_hook is None


def test_gradcam_leaves_model_unchanged(tmp_path):
    model = resnet()
    model.train()
    model.layer1.eval()  # a mixed state must come back as it was
    params = list(model.parameters())
    existing = torch.randn_like(params[0])
    params[0].grad = existing
    expected_grad = existing.clone()
    state = copy.deepcopy(model.state_dict())
    training = {name: module.training for name, module in model.named_modules()}

    x, x_adv = inputs(2, 1, 24, 24)
    gradcam_maps(model, x)
    plot_gradcam([{"name": "NAT", "model": model, "images": x, "adversarial": x_adv}], tmp_path / "g.png")

    assert {name: module.training for name, module in model.named_modules()} == training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    assert params[0].grad is existing
    torch.testing.assert_close(params[0].grad, expected_grad, rtol=0, atol=0)
    assert all(p.grad is None for p in params[1:])
    assert_no_hooks(model)


def test_gradcam_restores_inplace_flag_and_frozen_models():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = inputs(2, 1, 12, 12)
    maps = gradcam_maps(model, x, target_layer="1")
    assert maps.shape == (2, 1, 12, 12)
    assert model[1].inplace is True
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert_no_hooks(model)
