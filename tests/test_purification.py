# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Input purifiers, the Purified wrapper and its non-adaptive and adaptive evaluation on the trained bars CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_adv.attacks import BPDA, EoT
from monai_adv.defenses import (
    BitDepthReduction,
    GaussianNoisePurifier,
    GaussianSmoothing,
    LearnedDenoiser,
    MedianSmoothing,
    Purified,
    available_purifiers,
    evaluate_purification,
    make_purifier,
    purification_attack_models,
    train_denoiser,
)
from tests.models import TinyClassifier, bars_dataset

SHAPES = [(2, 1, 16, 16), (2, 1, 8, 8, 8)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FACTORIES = {
    "median": lambda dims: MedianSmoothing(3),
    "gaussian": lambda dims: GaussianSmoothing(1.0),
    "bit_depth": lambda dims: BitDepthReduction(3),
    "noise": lambda dims: GaussianNoisePurifier(0.1, seed=0),
    "noise_bit_depth": lambda dims: GaussianNoisePurifier(0.1, then=BitDepthReduction(3), seed=0),
    "denoiser": lambda dims: LearnedDenoiser(spatial_dims=dims),
}


def _seeded_input(shape, dtype):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.fixture(scope="module")
def bars(trained_bars):
    model, x, y = trained_bars
    return model, x[:64], y[:64]


def _short(results):
    return {k: round(v, 3) for k, v in results.items() if k.endswith("accuracy")}


# ---- the purifiers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_purifiers_keep_shape_dtype_device_range_and_are_reproducible(name, dtype, shape, device):
    x = _seeded_input(shape, dtype).to(device)
    torch.manual_seed(0)
    purifier = FACTORIES[name](len(shape) - 2).eval().to(device)
    out = purifier(x).detach()
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = FACTORIES[name](len(shape) - 2).eval().to(device)
    if name == "denoiser":
        again.load_state_dict(purifier.state_dict())
    if getattr(purifier, "randomized", False):
        assert not torch.equal(purifier(x), out)  # a new draw at each call
        purifier.reset()
        assert torch.equal(purifier(x), out)  # the same seed and call: the same draw
    assert torch.equal(again(x), out)


def test_seeded_noise_of_a_sample_depends_only_on_its_own_history():
    """Batch composition, process and resume independence: the k-th draw for an image is the same whatever else
    the purifier saw before or beside it."""
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    one = GaussianNoisePurifier(0.2, value_range=None, seed=5)
    first, second = one(x), one(x)  # two draws per image, e.g. two EoT samples
    assert not torch.equal(first, second)
    other = GaussianNoisePurifier(0.2, value_range=None, seed=5)  # another process, or a resumed run
    other(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)))  # that has seen other images
    assert torch.equal(other(x[[2, 0]]), first[[2, 0]])  # in another batch, in another order
    assert torch.equal(other(x[[0, 1, 2, 3]]), torch.cat([second[[0]], first[[1]], second[[2]], first[[3]]]))
    twins = GaussianNoisePurifier(0.2, value_range=None, seed=5)(x[[1, 1]])  # one image twice in a batch: two draws
    assert torch.equal(twins, torch.cat([first[[1]], second[[1]]]))


def test_purifiers_compute_what_they_claim():
    spike = torch.full((1, 1, 7, 7), 0.4)
    spike[0, 0, 3, 3] = 1.0
    assert torch.equal(MedianSmoothing(3)(spike), torch.full_like(spike, 0.4))  # impulse removed
    assert torch.allclose(GaussianSmoothing(1.5)(torch.full((1, 2, 6, 6, 6), 0.3)), torch.tensor(0.3), atol=1e-6)
    wide = torch.full((1, 1, 15, 15), 0.4)
    wide[0, 0, 7, 7] = 1.0
    smoothed = GaussianSmoothing(1.0)(wide)  # the kernel (radius 4) stays inside: the mass is kept
    assert float(smoothed[0, 0, 7, 7]) < 0.6 and abs(float(smoothed.sum() - wide.sum())) < 1e-4
    x = _seeded_input((2, 1, 8, 8), torch.float32)
    levels = BitDepthReduction(3)(x) * 7
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert float((BitDepthReduction(3)(x) - x).abs().max()) <= 1 / 14 + 1e-6  # the nearest level
    shifted = BitDepthReduction(2, value_range=(-1.0, 1.0))(x * 2 - 1)
    assert torch.allclose(shifted.unique(), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    noisy = GaussianNoisePurifier(0.1, value_range=None, seed=3)(torch.full((4, 1, 32, 32), 0.5))
    assert abs(float((noisy - 0.5).std()) - 0.1) < 0.01
    assert torch.equal(LearnedDenoiser(spatial_dims=2)(x), x)  # untrained: the identity
    assert LearnedDenoiser(spatial_dims=2)(torch.rand(2, 1, 15, 13)).shape == (2, 1, 15, 13)  # padded and cropped
    assert LearnedDenoiser(spatial_dims=3)(torch.rand(2, 1, 8, 8, 8)).shape == (2, 1, 8, 8, 8)


def test_declarations_and_registry():
    assert available_purifiers() == ("bit_depth", "denoiser", "gaussian", "median", "noise")
    expected = {
        "median": MedianSmoothing,
        "gaussian": GaussianSmoothing,
        "bit_depth": BitDepthReduction,
        "noise": GaussianNoisePurifier,
        "denoiser": LearnedDenoiser,
    }
    for name, cls in expected.items():
        assert type(make_purifier(name)) is cls
    assert make_purifier("Bit-Depth", bits=2).bits == 2
    assert not MedianSmoothing().differentiable and not BitDepthReduction().differentiable
    assert GaussianSmoothing().differentiable and LearnedDenoiser().differentiable
    noise = GaussianNoisePurifier(0.1)
    assert noise.randomized and noise.differentiable and noise.bpda_backward() is None
    assert not GaussianNoisePurifier(0.1, then="median").differentiable
    net = TinyClassifier(2, 1, 3)
    purified = Purified(net, "median")
    assert isinstance(purified.purifier, MedianSmoothing) and purified.network is net
    x = _seeded_input((2, 1, 16, 16), torch.float32)
    with torch.no_grad():
        assert torch.equal(purified.eval()(x), net(MedianSmoothing()(x)))


def test_attack_models_per_kind_of_purifier():
    net = TinyClassifier(2, 1, 3)
    smooth = Purified(net, GaussianSmoothing())
    models = purification_attack_models(smooth)
    assert models["non_adaptive"] is smooth and models["adaptive"] is smooth  # white-box through the filter
    quantized = Purified(net, BitDepthReduction(3))
    models = purification_attack_models(quantized)
    assert models["non_adaptive"] is net  # transferred from the bare classifier
    assert isinstance(models["adaptive"].preprocess, BPDA) and models["adaptive"].preprocess.approximation is None
    assert purification_attack_models(quantized, non_adaptive="purified")["non_adaptive"] is quantized
    median = purification_attack_models(Purified(net, MedianSmoothing(3)))["adaptive"]
    assert type(median.preprocess.approximation).__name__ == "_WindowMean"
    identity = purification_attack_models(Purified(net, MedianSmoothing(3)), backward="identity")["adaptive"]
    assert identity.preprocess.approximation is None
    noisy = Purified(net, GaussianNoisePurifier(0.1))
    models = purification_attack_models(noisy, samples=5)
    assert models["non_adaptive"] is noisy and isinstance(models["adaptive"], EoT) and models["adaptive"].samples == 5
    both = purification_attack_models(Purified(net, GaussianNoisePurifier(0.1, then="bit_depth")), samples=4)
    assert both["non_adaptive"] is net and isinstance(both["adaptive"], EoT)
    assert isinstance(both["adaptive"].model.preprocess, BPDA)


# ---- BPDA on a purifier ------------------------------------------------------------------------------------------
def test_bpda_forward_is_the_purified_model_and_backward_the_classifier_gradient(bars):
    """BPDA with the identity backward: the forward pass is exactly the purified model's; the input gradient is
    the classifier's gradient at the purified input (the purifier's Jacobian replaced by the identity). With the
    median's window-mean approximation, it is that gradient pulled back through the window mean."""
    model, x, y = bars
    for purifier, backward in ((BitDepthReduction(3), "identity"), (MedianSmoothing(3), "auto")):
        purified = Purified(model, purifier).eval()
        adaptive = purification_attack_models(purified, backward=backward)["adaptive"]
        leaf = x.clone().requires_grad_(True)
        out = adaptive(leaf)
        with torch.no_grad():
            assert torch.equal(out, purified(x))
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y), leaf)
        purified_input = purifier(x).requires_grad_(True)
        (at_purified,) = torch.autograd.grad(F.cross_entropy(model(purified_input), y), purified_input)
        if backward == "identity":
            expected = at_purified
        else:
            window = x.clone().requires_grad_(True)
            (expected,) = torch.autograd.grad(purifier.bpda_backward()(window), window, at_purified)
        assert torch.allclose(grad, expected, atol=1e-7) and float(grad.abs().sum()) > 0
    leaf = x.clone().requires_grad_(True)
    masked = Purified(model, BitDepthReduction(3)).eval()
    (plain,) = torch.autograd.grad(F.cross_entropy(masked(leaf), y), leaf)
    assert torch.count_nonzero(plain) == 0  # what BPDA is for


# ---- adaptive evaluation on the trained CNN ----------------------------------------------------------------------
def test_adaptive_attacks_break_the_deterministic_non_differentiable_purifiers(bars):
    """PGD-10 at eps 16/255 on 64 test images, scored on the purified model (clean accuracy 1.00 for both):

    - bit depth 3: non-adaptive (transferred from the bare classifier) 0.25, adaptive (BPDA identity) 0.08;
    - median 3x3: non-adaptive 1.00, adaptive (BPDA, window-mean backward) 0.27; BPDA identity backward 0.84.
    """
    model, x, y = bars
    eps = 16 / 255
    quantized = evaluate_purification(Purified(model, BitDepthReduction(3)), x, y, eps=eps, steps=10)
    median = evaluate_purification(Purified(model, MedianSmoothing(3)), x, y, eps=eps, steps=10)
    median_identity = evaluate_purification(
        Purified(model, MedianSmoothing(3)), x, y, eps=eps, steps=10, backward="identity"
    )
    print({"bit_depth": _short(quantized), "median": _short(median), "median_identity": _short(median_identity)})
    for results in (quantized, median, median_identity):
        assert results["quote"] == "worst_case" and results["passes"] == 1 and results["samples"] == 1
        assert results["clean_accuracy"] >= 0.95
        assert results["worst_case_accuracy"] <= min(results["adaptive_accuracy"], results["non_adaptive_accuracy"])
    assert quantized["adaptive_accuracy"] <= quantized["non_adaptive_accuracy"] - 0.1
    assert median["adaptive_accuracy"] <= median["non_adaptive_accuracy"] - 0.4
    assert median_identity["adaptive_accuracy"] < median_identity["non_adaptive_accuracy"]
    assert median["adaptive_accuracy"] <= median_identity["adaptive_accuracy"] - 0.3
    assert "BPDA" in quantized["adaptive_model"] and "bare classifier" in quantized["non_adaptive_model"]
    again = evaluate_purification(Purified(model, BitDepthReduction(3)), x, y, eps=eps, steps=10)
    assert again == quantized


def test_eot_beats_single_pass_attacks_on_randomized_purifiers(bars):
    """PGD-10 at eps 12/255, each example scored by 8 seeded passes of the purified model (mean over samples and
    passes). Gaussian noise sigma 0.1: clean 0.96, single-pass gradient 0.70, EoT-8 0.54. Noise then a 3x3 median
    (randomized, non-differentiable): clean 1.00, transferred from the bare classifier 0.92, EoT-8 of BPDA 0.59."""
    model, x, y = bars
    eps = 12 / 255
    state = torch.get_rng_state()
    noise = evaluate_purification(Purified(model, GaussianNoisePurifier(0.1, seed=0)), x, y, eps=eps, steps=10)
    both = evaluate_purification(
        Purified(model, GaussianNoisePurifier(0.1, then="median", seed=0)), x, y, eps=eps, steps=10
    )
    print({"noise": _short(noise), "noise_median": _short(both)})
    assert torch.equal(torch.get_rng_state(), state)  # the seeded call leaves the global generator as it was
    for results in (noise, both):
        assert results["passes"] == 8 and results["samples"] == 8 and results["quote"] == "worst_case"
        assert results["clean_accuracy"] >= 0.9
        assert results["adaptive_accuracy"] <= results["non_adaptive_accuracy"] - 0.1
    assert "EoT over 8 passes" in both["adaptive_model"] and "BPDA" in both["adaptive_model"]
    unseeded = GaussianNoisePurifier(0.1)  # global generator: the call's seed makes it reproducible
    first = evaluate_purification(Purified(model, unseeded), x[:16], y[:16], eps=eps, steps=2, samples=2, passes=2)
    assert evaluate_purification(Purified(model, unseeded), x[:16], y[:16], eps=eps, steps=2, samples=2, passes=2) == (
        first
    )


# ---- the learned denoiser ----------------------------------------------------------------------------------------
def test_learned_denoiser_learns_to_remove_gaussian_noise():
    x_train, _ = bars_dataset(512, seed=0)
    x_val, _ = bars_dataset(128, seed=1)
    noisy = (x_val + 0.1 * torch.randn(x_val.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    torch.manual_seed(0)
    denoiser = LearnedDenoiser(spatial_dims=2)
    loader = [x_train[i : i + 64] for i in range(0, 512, 64)]
    history = train_denoiser(denoiser, loader, noise="gaussian", sigma=0.1, epochs=2, lr=3e-3)
    assert len(history) == 2 and history[1] < history[0] and not denoiser.training
    with torch.no_grad():
        before, after = F.mse_loss(noisy, x_val), F.mse_loss(denoiser(noisy), x_val)
    print({"noisy": float(before), "denoised": float(after)})
    assert after < 0.7 * before


def test_learned_denoiser_trains_on_adversarial_examples_of_a_fixed_classifier(bars):
    model, x, y = bars
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    denoiser = LearnedDenoiser(spatial_dims=2)
    loader = [{"image": x[i : i + 32], "label": y[i : i + 32]} for i in range(0, 64, 32)]
    history = train_denoiser(
        denoiser, loader, noise="adversarial", classifier=model, attack_kwargs={"eps": 8 / 255, "steps": 2}, epochs=2
    )
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(history)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    results = evaluate_purification(Purified(model, denoiser), x[:16], y[:16], eps=8 / 255, steps=2)
    assert results["adaptive_model"] == "the purified model (its own gradient)"
    assert results["adaptive_accuracy"] == results["non_adaptive_accuracy"]  # one white-box attack
    with pytest.raises(ValueError, match="classifier"):
        train_denoiser(denoiser, loader, noise="adversarial")
    with pytest.raises(ValueError, match="labels"):
        train_denoiser(denoiser, [x[:8]], noise="adversarial", classifier=model)


# ---- bad arguments -----------------------------------------------------------------------------------------------
def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="`bits`"):
        BitDepthReduction(bits=0)
    with pytest.raises(ValueError, match="`value_range`"):
        BitDepthReduction(bits=3, value_range=None)
    for size in (4, 0, (3, 2)):
        with pytest.raises(ValueError, match="`kernel_size`"):
            MedianSmoothing(kernel_size=size)
    with pytest.raises(ValueError, match="`kernel_size`"):
        MedianSmoothing(kernel_size=(3, 3))(torch.rand(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="`name`"):
        make_purifier("jpeg")
    with pytest.raises(TypeError, match="bits"):
        make_purifier("median", bits=3)
    with pytest.raises(ValueError, match="`sigma`"):
        GaussianSmoothing(sigma=0.0)
    with pytest.raises(ValueError, match="`sigma`"):
        GaussianNoisePurifier(sigma=-0.1)
    net = TinyClassifier(2, 1, 3)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="`non_adaptive`"):
        purification_attack_models(Purified(net, "median"), non_adaptive="oblivious")
    with pytest.raises(ValueError, match="`backward`"):
        purification_attack_models(Purified(net, "gaussian"), backward=GaussianSmoothing())
    with pytest.raises(ValueError, match="`samples`"):
        purification_attack_models(Purified(net, "noise"), samples=0)
    with pytest.raises(ValueError, match="`passes`"):
        evaluate_purification(Purified(net, "median"), x, y, passes=4)
    with pytest.raises(TypeError, match="`purified`"):
        evaluate_purification(net, x, y)
    with pytest.raises(ValueError, match="`noise`"):
        train_denoiser(LearnedDenoiser(), [x], noise="salt")
    with pytest.raises(ValueError, match="MedianSmoothing"):
        MedianSmoothing()(torch.rand(4, 4))
