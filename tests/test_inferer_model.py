# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""InfererModel's options: gradient checkpointing of the window batches, and autocast."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from monai_adv.attacks import PGD, InfererModel
from tests.cases import same_snapshot, snapshot
from tests.models import CallCounter, TinyClassifier


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


def _volume(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, 24, 24, 24, generator=g), torch.randint(0, 2, (2, 1, 24, 24, 24), generator=g)


def _windows():
    return SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)


def test_checkpointing_gives_the_same_gradient_and_attack(unet):
    x, y = _volume()
    plain = InfererModel(unet, _windows())
    checkpointed = InfererModel(unet, _windows(), checkpoint=True)
    grads = []
    for model in (plain, checkpointed):
        x_in = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_in), y[:, 0])
        grads.append(torch.autograd.grad(loss, x_in)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
    x_plain = PGD(plain, eps=4 / 255, steps=3)(x, y)
    x_ckpt = PGD(checkpointed, eps=4 / 255, steps=3)(x, y)
    assert torch.equal(x_plain, x_ckpt)


def test_checkpointing_recomputes_each_window_batch_in_the_backward_pass(unet):
    x, y = _volume(1)
    counting = CallCounter(unet)
    model = InfererModel(counting, _windows(), checkpoint=True)
    with torch.no_grad():
        model(x)
    forward_calls = counting.calls
    counting.calls = 0
    x_in = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x_in), y[:, 0])
    assert counting.calls == forward_calls  # no recomputation yet
    torch.autograd.grad(loss, x_in)
    assert counting.calls == 2 * forward_calls  # each window batch once more in the backward pass


def test_checkpointed_attack_leaves_the_network_as_found(unet):
    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).train()
    before = snapshot(net)
    x, y = _volume(2)
    PGD(InfererModel(net, _windows(), checkpoint=True), eps=4 / 255, steps=2)(x, y)
    assert same_snapshot(before, snapshot(net))


def test_bfloat16_autocast_returns_float32_logits_close_to_full_precision():
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3).eval()
    x = torch.rand(8, 1, 16, 16)
    full = InfererModel(net)(x)
    half = InfererModel(net, amp_dtype=torch.bfloat16)(x)
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)  # the network did run in bfloat16
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)
    y = full.argmax(1)
    x_adv = PGD(InfererModel(net, amp_dtype=torch.bfloat16), eps=8 / 255, steps=3)(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-7 and x_adv.dtype == torch.float32


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="`amp_dtype` must be None, torch.bfloat16 or torch.float16"):
        InfererModel(TinyClassifier(), amp_dtype=torch.float64)
    with pytest.raises(TypeError, match="`inferer` must be callable"):
        InfererModel(TinyClassifier(), "sliding_window", checkpoint=True)
