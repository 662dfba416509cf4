# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""BPDA and EoT: exact forward passes, the gradients they give, and adaptive attacks on deliberately masked models.

The masked models wrap the small CNN trained on the bar images (the ``trained_bars`` fixture): input quantization
(zero gradients), saturated logits (vanishing cross-entropy gradients) and input noise (a randomized model).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monai_adv.attacks import APGD, BPDA, PGD, EoT, ExpectationOverTransformation, adaptive_model, model_state_guard
from monai_adv.attacks.sanity import sanity_flags, sanity_notes
from tests.models import CallCounter, Noisy

LEVELS = 8


class Quantize(nn.Module):
    """Rounds the input to ``levels`` levels in [0, 1]: its gradient is zero everywhere."""

    def __init__(self, levels: int = LEVELS) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


def soft_quantize(x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """A differentiable approximation of :class:`Quantize` (rounding smoothed by a sine)."""
    k = levels - 1
    return x - torch.sin(2 * math.pi * k * x) / (2 * math.pi * k)


class Scaled(nn.Module):
    """The logits of ``model`` times ``factor``."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor


def robust_accuracy(attack_model, score_model, x, y, attack=PGD, **kwargs) -> float:
    """Craft on ``attack_model``, score on ``score_model``."""
    x_adv = attack(attack_model, **kwargs)(x, y)
    with torch.no_grad():
        return float((score_model(x_adv).argmax(dim=1) == y).float().mean())


def expected_accuracy(model, x, y, passes: int = 32, seed: int = 123) -> float:
    """Accuracy of a randomized model averaged over ``passes`` seeded passes (over samples and passes)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(torch.stack([(model(x).argmax(dim=1) == y).float() for _ in range(passes)]).mean())


@pytest.fixture(scope="module")
def bars(trained_bars):
    model, x, y = trained_bars
    return model, x[:64], y[:64]


# ---- BPDA --------------------------------------------------------------------------------------------------------
def test_bpda_forward_is_exactly_the_wrapped_step():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 9, 9)
    for step in (Quantize(), lambda v: torch.nn.functional.max_pool2d(v, 3, 1, 1), torch.sign):
        out = BPDA(step)(x)
        assert torch.equal(out, step(x))
    with torch.inference_mode():  # the attacks' clean pass
        assert torch.equal(BPDA(Quantize())(x), Quantize()(x))
    assert BPDA(lambda v: v)(x) is not x  # an identity step still returns a new tensor


def test_bpda_backward_is_the_identity_or_the_approximation_gradient():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 5, 5, requires_grad=True)
    weights = torch.randn(2, 1, 5, 5)
    (plain,) = torch.autograd.grad((Quantize()(x) * weights).sum(), x)
    assert torch.count_nonzero(plain) == 0  # what BPDA is for
    (identity,) = torch.autograd.grad((BPDA(Quantize())(x) * weights).sum(), x)
    assert torch.equal(identity, weights)
    (approx,) = torch.autograd.grad((BPDA(Quantize(), soft_quantize)(x) * weights).sum(), x)
    leaf = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad((soft_quantize(leaf) * weights).sum(), leaf)
    assert torch.equal(approx, expected)
    out = BPDA(Quantize(), soft_quantize)(x)
    assert torch.equal(out, Quantize()(x))  # the approximation changes the gradient only
    # a step that changes the shape needs an approximation of the same output shape
    pool = BPDA(lambda v: torch.nn.functional.max_pool2d(v, 2), lambda v: torch.nn.functional.avg_pool2d(v, 2))
    x4 = torch.rand(2, 1, 4, 4, requires_grad=True)
    (pooled,) = torch.autograd.grad(pool(x4).sum(), x4)
    assert torch.equal(pooled, torch.full_like(pooled, 0.25))


def test_bpda_checks_and_registers_its_modules():
    with pytest.raises(ValueError, match="identity backward"):
        BPDA(lambda v: v[..., :2])(torch.rand(1, 1, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        BPDA(lambda v: (v > 0.5).long())(torch.rand(1, 1, 4, 4))
    with pytest.raises(TypeError, match="`forward`"):
        BPDA("round")
    step = nn.Sequential(nn.BatchNorm2d(1), Quantize()).train()
    wrapped = nn.Sequential(BPDA(step), nn.Flatten(), nn.Linear(16, 3))
    assert "0.transform.0" in dict(wrapped.named_modules())  # model guards see the step's modules
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    PGD(wrapped, eps=0.1, steps=2)(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    assert step.training and all(torch.equal(before[k], v) for k, v in wrapped.state_dict().items())
    with model_state_guard(wrapped) as view:
        assert not view[0].transform.training


# ---- EoT ---------------------------------------------------------------------------------------------------------
def test_eot_averages_the_passes_and_their_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    noisy = Noisy(net, sigma=0.3)
    x = torch.rand(4, 1, 4, 4, requires_grad=True)
    eot = EoT(noisy, samples=5)
    assert ExpectationOverTransformation is EoT and dict(eot.named_modules())["model"] is noisy
    torch.manual_seed(1)
    out = eot(x)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    torch.manual_seed(1)
    passes = [noisy(x) for _ in range(5)]
    assert torch.allclose(out, torch.stack(passes).mean(dim=0), atol=1e-6)
    grads = [torch.autograd.grad(p[:, 0].sum(), x)[0] for p in passes]
    assert torch.allclose(grad, torch.stack(grads).mean(dim=0), atol=1e-6)
    counter = CallCounter(net)
    assert torch.allclose(EoT(counter, samples=3)(x), net(x), atol=1e-6) and counter.calls == 3
    torch.manual_seed(1)
    log_probs = EoT(noisy, samples=5, output="log_probs")(x)
    assert torch.allclose(log_probs, torch.stack([p.log_softmax(dim=1) for p in passes]).mean(dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="samples"):
        EoT(net, samples=0)
    with pytest.raises(ValueError, match="output"):
        EoT(net, output="probs")


def test_adaptive_model_builds_the_model_to_craft_on(bars):
    model, x, y = bars
    assert adaptive_model(model) is model
    adaptive = adaptive_model(model, preprocess=Quantize())
    defended = nn.Sequential(Quantize(), model)
    with torch.no_grad():
        assert torch.equal(adaptive(x), defended(x))  # the same forward pass: it may replace the defense
    eot = adaptive_model(model, preprocess=Quantize(), backward=soft_quantize, eot_samples=4)
    assert isinstance(eot, ExpectationOverTransformation) and eot.samples == 4
    assert isinstance(eot.model.preprocess, BPDA) and eot.model.preprocess.approximation is soft_quantize
    with pytest.raises(ValueError, match="preprocess"):
        adaptive_model(model, backward=soft_quantize)
    with pytest.raises(ValueError, match="eot_samples"):
        adaptive_model(model, eot_samples=0)


# ---- (a) input quantization ----------------------------------------------------------------------------------------
def test_quantized_input_masks_gradients_and_bpda_recovers_the_attack(bars):
    """Quantization to 8 levels in front of the trained network. At eps 16/255 (PGD-10; APGD-10):

    - masked: the attack crafted on and scored on ``nn.Sequential(Quantize(), net)``: 1.00 (1.00);
    - BPDA: crafted on ``nn.Sequential(BPDA(Quantize()), net)``, scored on the masked model: 0.11 (0.03);
    - reference: crafted on the unmasked network, scored through the quantizer: 0.27.
    """
    net, x, y = bars
    masked = nn.Sequential(Quantize(), net).eval()
    adaptive = nn.Sequential(BPDA(Quantize()), net).eval()
    flags = sanity_flags(masked, x, y)
    assert bool(flags["gradient_zero"].all()) and not flags["saturated"].any()
    notes = " ".join(sanity_notes(flags))
    assert "exactly zero for 64 sample(s)" in notes and "BPDA" in notes
    assert not sanity_flags(adaptive, x, y)["gradient_zero"].any()
    eps = 16 / 255
    results = {
        "masked": robust_accuracy(masked, masked, x, y, eps=eps, steps=10),
        "bpda": robust_accuracy(adaptive, masked, x, y, eps=eps, steps=10),
        "transfer": robust_accuracy(net, masked, x, y, eps=eps, steps=10),
        "apgd_masked": robust_accuracy(masked, masked, x, y, APGD, eps=eps, steps=10),
        "apgd_bpda": robust_accuracy(adaptive, masked, x, y, APGD, eps=eps, steps=10),
    }
    print(results)
    assert results["masked"] >= 0.9 and results["apgd_masked"] >= 0.9
    assert results["bpda"] <= results["transfer"] + 0.05 and results["bpda"] <= 0.3
    assert results["apgd_bpda"] <= results["transfer"] + 0.05 and results["apgd_bpda"] <= 0.3


# ---- (b) saturated logits ------------------------------------------------------------------------------------------
def test_saturated_logits_are_flagged_and_a_margin_loss_recovers_the_attack(bars):
    """Logits x 1e4: the float32 softmax is exactly one-hot, the cross-entropy gradient exactly zero. At eps 16/255,
    PGD-10 robust accuracy: cross-entropy 1.00; CW margin 0.12; cross-entropy crafted on the logits scaled back
    (x 1e-4) 0.11; the unscaled network under cross-entropy 0.11."""
    net, x, y = bars
    saturated = Scaled(net, 1e4).eval()
    flags = sanity_flags(saturated, x, y)
    assert bool(flags["saturated"].all()) and bool(flags["gradient_zero"].all())
    notes = sanity_notes(flags)
    assert any("one-hot" in n and 'loss="cw"' in n for n in notes)
    assert not any("possible gradient masking" in n for n in notes)  # the saturation explains every zero
    eps = 16 / 255
    ce = robust_accuracy(saturated, saturated, x, y, eps=eps, steps=10)
    margin = robust_accuracy(saturated, saturated, x, y, eps=eps, steps=10, loss="cw")
    rescaled = robust_accuracy(Scaled(saturated, 1e-4), saturated, x, y, eps=eps, steps=10)
    reference = robust_accuracy(net, net, x, y, eps=eps, steps=10)
    print({"ce": ce, "margin": margin, "rescaled": rescaled, "reference": reference})
    assert ce >= 0.9
    assert margin <= reference + 0.1 and rescaled <= reference + 0.1


# ---- (c) a randomized model ----------------------------------------------------------------------------------------
def test_eot_beats_single_pass_attacks_on_a_randomized_model(bars):
    """Gaussian input noise (sigma 0.1) on every pass. Robust accuracy of the noisy model in expectation: each
    example scored by 32 seeded passes, averaged over samples and passes. PGD-10 at eps 12/255, last iterate (no
    selection of a lucky pass): single-pass gradients 0.42; EoT with 8 passes 0.29 (clean 0.96)."""
    net, x, y = bars
    noisy = Noisy(net, sigma=0.1)
    flags = sanity_flags(noisy, x, y)
    assert bool(flags["randomized"].all()) and not flags["batch_dependent"].any()
    assert any("EoT" in note for note in sanity_notes(flags))
    eps, found = 12 / 255, {}
    for name, crafted in (("single", noisy), ("eot", EoT(noisy, samples=8))):
        torch.manual_seed(0)
        x_adv = PGD(crafted, eps=eps, steps=10, early_stop=False, best_iterate=False)(x, y)
        found[name] = expected_accuracy(noisy, x_adv, y)
    found["clean"] = expected_accuracy(noisy, x, y)
    print(found)
    assert found["clean"] >= 0.9
    assert found["eot"] <= found["single"] - 0.07
