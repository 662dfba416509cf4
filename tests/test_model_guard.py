# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The model-state guard: attacks run the model in eval mode and leave it bit-for-bit as they found it."""

import copy
import threading

import pytest
import torch
from monai.inferers import SimpleInferer

from monai_adv.attacks import CW, FGSM, PGD, InfererModel, model_state_guard
from monai_adv.attacks.guard import eval_view
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


def test_guard_yields_an_eval_view_and_never_changes_the_model():
    model = _model_mid_training()
    before = snapshot(model)
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(RuntimeError, match="boom"), model_state_guard(model) as view:
        assert same_snapshot(before, snapshot(model))  # the network itself is untouched inside the guard
        assert not any(m.training for m in view.modules())
        assert not any(p.requires_grad for p in view.parameters())
        assert all(p.data_ptr() == q.data_ptr() for p, q in zip(view.parameters(), model.parameters()))
        out = view(x)
        raise RuntimeError("boom")
    assert same_snapshot(before, snapshot(model))
    assert torch.equal(out, copy.deepcopy(model).eval()(x))


def test_view_keeps_shared_modules_shared_and_unwraps_data_parallel():
    block = torch.nn.Linear(4, 4)
    net = torch.nn.Sequential(block, torch.nn.ReLU(), block)
    view = eval_view(torch.nn.DataParallel(net))
    assert view[0] is view[2] and view[0] is not block
    assert torch.equal(view(torch.ones(1, 4)), net(torch.ones(1, 4)))


def _watch_flags(model, stop, seen):
    """Record every moment the network's own flags differ from what they were (a racing guard shows up here)."""
    training = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    while not stop.is_set():
        if [m.training for m in model.modules()] != training or [p.requires_grad for p in model.parameters()] != grads:
            seen.append(True)


def test_threads_attacking_one_network_never_change_it():
    model = _model_mid_training()
    before = snapshot(model)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    expected = PGD(copy.deepcopy(model).eval(), eps=8 / 255, steps=5)(x, y)
    stop, seen, results, errors = threading.Event(), [], [], []

    def work():
        try:
            for _ in range(5):
                results.append(PGD(model, eps=8 / 255, steps=5)(x, y))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    watcher = threading.Thread(target=_watch_flags, args=(model, stop, seen))
    watcher.start()
    workers = [threading.Thread(target=work) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    watcher.join()
    assert not errors and len(results) == 20
    assert not seen, "the network's training/requires_grad flags changed while attacks ran"
    assert same_snapshot(before, snapshot(model))
    assert all(torch.equal(r, expected) for r in results)  # each thread got the attack of the eval-mode network


def test_thread_loader_with_the_transform_leaves_the_network_trainable():
    from monai.data import Dataset, ThreadDataLoader

    from monai_adv.transforms import RandAdversarialPerturbd

    model = _model_mid_training()
    before = snapshot(model)
    data = [{"image": torch.rand(1, 8, 8), "label": torch.tensor(i % 3)} for i in range(16)]
    transform = RandAdversarialPerturbd(
        keys="image", label_key="label", network=model, attack="pgd", attack_kwargs={"eps": 8 / 255, "steps": 3}
    )
    loader = ThreadDataLoader(Dataset(data, transform), batch_size=2, num_workers=4, use_thread_workers=True)
    batches = list(loader)
    assert len(batches) == 8
    assert same_snapshot(before, snapshot(model))
    assert model.training and all(p.requires_grad for n, p in model.named_parameters() if n != "head.bias")


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
