# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The model-state guard: attacks run the model in eval mode and leave it bit-for-bit as they found it."""

import pytest
import torch
from monai.inferers import SimpleInferer

from monai_adv.attacks import CW, FGSM, PGD, InfererModel, model_state_guard
from tests.cases import same_snapshot, snapshot
from tests.models import TinyClassifier


def _model_mid_training():
    """A BatchNorm model in train mode, with moved running stats, .grad fields and a frozen layer."""
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 3).train()
    x = torch.rand(16, 1, 8, 8)
    torch.nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,))).backward()  # fills .grad, updates BN
    model.head.bias.requires_grad_(False)
    model.features[1].eval()  # a submodule in a different mode from its parent
    return model


@pytest.mark.parametrize("attack_cls", [FGSM, PGD, CW])
def test_batchnorm_model_in_train_mode_is_untouched(attack_cls):
    model = _model_mid_training()
    before = snapshot(model)
    bn = model.features[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    attack_cls(model, eps=8 / 255)(x, y)
    assert same_snapshot(before, snapshot(model))
    assert model.training and not model.features[1].training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])


def test_attack_runs_the_model_in_eval_mode():
    model = _model_mid_training()
    modes = []
    model.register_forward_pre_hook(lambda m, inp: modes.append(m.training))
    PGD(model, steps=3)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert modes and not any(modes)


def test_guard_restores_state_after_an_error():
    model = _model_mid_training()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), model_state_guard(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert same_snapshot(before, snapshot(model))


def test_inferer_model_guards_the_wrapped_network():
    model = _model_mid_training()
    before = snapshot(model)
    wrapped = InfererModel(model, SimpleInferer())
    PGD(wrapped, steps=2)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert same_snapshot(before, snapshot(model))


def test_no_parameter_gradient_is_computed():
    model = TinyClassifier(2, 1, 3).eval()
    for p in model.parameters():
        p.grad = None
    PGD(model, steps=2)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert all(p.grad is None for p in model.parameters())


def test_inferer_model_rejects_a_non_callable_inferer():
    with pytest.raises(TypeError, match="`inferer` must be callable"):
        InfererModel(TinyClassifier(), "sliding_window")
