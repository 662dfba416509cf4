# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""N-FGSM, free adversarial training and AWP: the objectives, the trainer's replays, the benchmark's methods."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from torch import nn

from monai_adv.attacks import InfererModel
from monai_adv.benchmark.grid import GridConfig, _cells
from monai_adv.benchmark.training import TRAINING_METHODS
from monai_adv.defenses import AWP, NFGSM, PGDAT, FreeAT, make_defense
from monai_adv.engines import RobustTrainer
from tests.cases import same_snapshot, snapshot
from tests.models import CallCounter, PerSample, TinyClassifier, TinySegmenter, bars_dataset

EPS = 8 / 255
NEW = ("n_fgsm", "free_at", "awp")


def _batches(dims, segmentation=False, n=4, count=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1) + (16, 16) if dims == 2 else (n, 1) + (8, 8, 8)
    batches = []
    for _ in range(count):
        x = torch.rand(shape, generator=g)
        y = (x > 0.5).long() if segmentation else torch.randint(0, 3, (n,), generator=g)
        batches.append({"image": x, "label": y})
    return batches


def _trainer(net, defense, batches, **kwargs):
    return RobustTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.05),
        defense=defense,
        **kwargs,
    )


def _kwargs(name):
    return {"eps": EPS, "steps": 1} if name == "awp" else {"eps": EPS}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NEW)
def test_trains_a_classifier_with_robust_trainer(name, dims):
    torch.manual_seed(0)
    net = TinyClassifier(dims, 1, 3, width=4)
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    trainer = _trainer(net, name, _batches(dims), defense_kwargs=_kwargs(name), clean_accuracy=True, seed=1)
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert trainer.state.iteration == 2 and len(losses) == 2 * trainer.defense.replays
    assert torch.isfinite(torch.tensor(losses)).all()
    assert any(not torch.equal(p, p0) for p, p0 in zip(net.parameters(), before))
    out = trainer.state.output[0]
    assert 0.0 <= out["clean_accuracy"] <= 1.0 and 0.0 <= out["adversarial_accuracy"] <= 1.0
    assert out["pred"].shape == (3,) and net.training


@pytest.mark.parametrize("name", NEW)
def test_trains_a_3d_segmenter_with_dice(name):
    torch.manual_seed(0)
    net = TinySegmenter(3, 1, 2, width=4)
    before = [p.detach().clone() for p in net.parameters()]
    trainer = _trainer(net, name, _batches(3, segmentation=True), defense_kwargs={**_kwargs(name), "loss": "dice"})
    trainer.run()
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert any(not torch.equal(p, p0) for p, p0 in zip(net.parameters(), before))
    assert trainer.state.output[0]["adversarial_accuracy"] is None  # no accuracy of voxel maps


# ---- N-FGSM ----------------------------------------------------------------------------------------------------
@pytest.fixture
def bars():
    x, y = bars_dataset(8, seed=3)
    torch.manual_seed(0)
    return TinyClassifier(2, 1, 3, width=4), x, y


def test_n_fgsm_examples_leave_the_eps_ball_but_not_the_noise_reach(bars):
    net, x, y = bars
    x = x.clamp(0.1, 0.9)  # away from the range's bounds, where clipping shortens the perturbation
    defense = make_defense("n_fgsm", eps=EPS)
    assert defense.alpha == EPS and defense.k == 2.0
    x_adv = defense.inner_attack(net, seed=5)(x, y)
    dist = (x_adv - x).abs()
    assert dist.max() <= 3 * EPS + 1e-6 and (dist > EPS + 1e-6).any()  # no projection onto the eps-ball
    assert (dist > 2.5 * EPS).any() and x_adv.min() >= 0 and x_adv.max() <= 1
    edge = torch.zeros_like(x)  # at the range's bound the example is clipped into it
    assert make_defense("n_fgsm", eps=EPS).inner_attack(net, seed=5)(edge, y).min() >= 0
    torch.testing.assert_close(defense.inner_attack(net, seed=5)(x, y), x_adv, rtol=0, atol=0)
    assert not torch.equal(defense.inner_attack(net, seed=6)(x, y), x_adv)
    small = make_defense("n_fgsm", eps=EPS, k=0.5, alpha=EPS / 4).inner_attack(net, seed=5)(x, y)
    assert (small - x).abs().max() <= 0.75 * EPS + 1e-6


def test_n_fgsm_trains_on_its_example_with_one_extra_pass(bars):
    net, x, y = bars
    counter = CallCounter(net).train()
    seen = []  # the inputs of the training pass (the example's pass runs on the eval view, without the hook)
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    defense = make_defense("n_fgsm", eps=EPS)
    expected = defense.inner_attack(net, seed=3)(x, y)  # before the training pass updates the statistics
    loss, outputs = defense(counter, x, y, seed=3)
    hook.remove()
    assert counter.calls == 2 and outputs["clean"] is None and outputs["adversarial"].shape == (8, 3)
    assert loss.requires_grad and all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(seen[-1], expected, rtol=0, atol=0)


def test_n_fgsm_noise_is_batch_independent(bars):
    net, x, y = bars
    model = PerSample(net.double().eval())
    x = x[:4].double()
    attack = make_defense("n_fgsm", eps=EPS).inner_attack(model, seed=7)
    x_adv = attack(x, y[:4])
    for i in range(4):
        torch.testing.assert_close(attack(x[i : i + 1], y[i : i + 1])[0], x_adv[i], rtol=0, atol=1e-12)
    roi = torch.zeros_like(x[:1])
    roi[..., 4:12, 4:12] = 1
    masked = attack(x, y[:4], mask=roi)
    assert torch.equal(masked[..., roi[0, 0] == 0], x[..., roi[0, 0] == 0])


# ---- free adversarial training ---------------------------------------------------------------------------------
def test_free_at_steps_the_optimizer_replays_times_per_batch():
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3, width=4)
    trainer = _trainer(net, "free_at", _batches(2, count=3), defense_kwargs={"eps": EPS, "replays": 3})
    steps, fired, completed = [], [], []
    trainer.optimizer.register_step_post_hook(lambda *args: steps.append(1))
    for event in IterationEvents:
        trainer.add_event_handler(event, lambda engine, e=event: fired.append(e))
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: completed.append(e.state.output))
    trainer.run()
    assert trainer.state.iteration == 3 and len(steps) == 9
    assert all(fired.count(e) == 9 for e in IterationEvents)  # INNER_ITERATION_STARTED/COMPLETED included
    assert fired[:6] == [
        IterationEvents.INNER_ITERATION_STARTED,
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
        IterationEvents.INNER_ITERATION_COMPLETED,
    ]
    assert len({id(o) for o in completed}) == 9  # a new output per replay, the last one kept
    assert 0.0 <= trainer.state.output[0]["adversarial_accuracy"] <= 1.0
    assert trainer.defense.delta.abs().max() <= EPS and trainer.defense.delta.abs().max() > 0


def test_free_at_with_amp_flag_replays_too():
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3, width=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast and the grad scaler are disabled without CUDA
        trainer = _trainer(net, make_defense("free_at", eps=EPS, replays=2), _batches(2), amp=True)
        steps = []
        trainer.optimizer.register_step_post_hook(lambda *args: steps.append(1))
        trainer.run()
    assert trainer.amp and trainer.scaler is not None  # the grad scaler's path
    assert len(steps) == 4
    assert trainer.defense.delta.abs().max() > 0


def test_free_at_perturbation_persists_across_batches_and_resets_on_a_new_shape(bars):
    net, x, y = bars
    net.train()
    defense = make_defense("free_at", eps=EPS, replays=2)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = x.clamp(0.1, 0.9)
    loss, outputs = defense(net, x, y)  # a single call: one replay, from zero
    assert torch.equal(seen[-1], x) and outputs["clean"] is None
    loss.backward()
    defense.after_backward()
    first = defense.delta.clone()
    # from zero, one step of alpha = eps: every coordinate at -eps, 0 or eps
    assert torch.isin(first.abs(), torch.tensor([0.0, EPS])).all() and (first != 0).any()
    x2, y2 = bars_dataset(8, seed=4)
    x2 = x2.clamp(0.1, 0.9)
    loss, _ = defense(net, x2, y2)  # the next batch starts from the last perturbation
    torch.testing.assert_close(seen[-1], x2 + first, rtol=0, atol=1e-7)
    loss.backward()  # no after_backward: the next call applies the pending update
    loss, _ = defense(net, x2, y2)
    second = defense.delta.clone()
    assert second.abs().max() <= EPS + 1e-7 and not torch.equal(second, first)
    torch.testing.assert_close(seen[-1], x2 + second, rtol=0, atol=1e-7)
    defense(net, x2[:5], y2[:5])  # a new shape: from zero again
    assert torch.equal(seen[-1], x2[:5])
    defense.reset()
    assert defense.delta is None


def test_free_at_perturbation_is_checkpointed_by_its_state_dict(bars):
    net, x, y = bars
    defense = make_defense("free_at", eps=EPS)
    assert defense.state_dict() == {"delta": None}
    defense(net.train(), x, y)[0].backward()
    state = defense.state_dict()
    assert state["delta"].abs().max() == EPS
    restored = make_defense("free_at", eps=EPS)
    restored.load_state_dict(state)
    assert torch.equal(restored.delta, defense.delta)
    with pytest.raises(ValueError, match="`state`"):
        restored.load_state_dict({})


# ---- AWP -------------------------------------------------------------------------------------------------------
def _grads(net, loss):
    return torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)


def test_awp_never_modifies_the_parameters_in_place(bars):
    net, x, y = bars
    net.train()
    defense = make_defense("awp", eps=EPS, steps=2)
    before = snapshot(net)
    x_adv = defense.inner_attack(net, seed=0)(x, y)
    defense.weight_perturbation(net, x, x_adv, y)
    assert same_snapshot(before, snapshot(net)), "the perturbation pass changed the state (or statistics)"
    params = {k: v.clone() for k, v in net.state_dict().items()}
    loss, outputs = defense(net, x, y, seed=0)
    state = net.state_dict()
    for name, _ in net.named_parameters():
        assert torch.equal(state[name], params[name]), name
    tracked = [k for k in state if k.endswith("num_batches_tracked")]
    assert all(int(state[k]) == int(params[k]) + 1 for k in tracked), "one training pass updates the statistics"
    assert outputs["adversarial"].shape == (8, 3) and loss.requires_grad


def test_awp_gradient_is_taken_at_the_perturbed_weights(bars):
    net, x, y = bars
    net.train()
    initial = copy.deepcopy(net.state_dict())  # each call's training pass updates the batch-norm statistics

    def gradient(defense):
        net.load_state_dict(initial)
        return _grads(net, defense(net, x, y, seed=4)[0])

    awp, pgd = make_defense("awp", eps=EPS, steps=2), make_defense("pgd_at", eps=EPS, steps=2)
    assert isinstance(awp, AWP) and isinstance(pgd, PGDAT)
    assert torch.equal(awp.inner_attack(net, seed=4)(x, y), pgd.inner_attack(net, seed=4)(x, y))
    g_pgd, g_awp = gradient(pgd), gradient(awp)
    assert any(not torch.allclose(a, b) for a, b in zip(g_awp, g_pgd))
    g_zero = gradient(make_defense("awp", eps=EPS, steps=2, gamma=0.0))
    assert all(torch.equal(a, b) for a, b in zip(g_zero, g_pgd))
    net.load_state_dict(initial)
    # the same gradient as plain PGD-AT on a copy whose weights are moved by v
    x_adv = awp.inner_attack(net, seed=4)(x, y)
    v = awp.weight_perturbation(net, x, x_adv, y)
    moved = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(v.get(name, torch.zeros_like(p)))
    g_moved = _grads(moved, F.cross_entropy(moved(x_adv), y))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_awp, g_moved))


@pytest.mark.parametrize("base", ["pgd_at", "trades"])
def test_awp_perturbation_is_gamma_relative_along_the_loss_gradient(bars, base):
    net, x, y = bars
    net.train()
    defense = make_defense("awp", eps=EPS, steps=2, gamma=0.01, base=base)
    x_adv = defense.inner_attack(net, seed=1)(x, y)
    v = defense.weight_perturbation(net, x, x_adv, y)
    expected = {n for n, p in net.named_parameters() if p.ndim > 1}
    assert set(v) == expected == {"features.0.weight", "features.3.weight", "head.weight"}  # no bias nor norm
    copy_net = copy.deepcopy(net)
    logits_adv = copy_net(x_adv)
    if base == "pgd_at":
        loss = F.cross_entropy(logits_adv, y)
    else:
        logits = copy_net(x)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        loss = F.cross_entropy(logits, y) + 6.0 * kl
    grads = dict(zip([n for n, _ in copy_net.named_parameters()], _grads(copy_net, loss)))
    for name, p in net.named_parameters():
        if name in v:
            assert float(v[name].norm() / p.detach().norm()) == pytest.approx(0.01, rel=1e-5)
            assert F.cosine_similarity(v[name].flatten(), grads[name].flatten(), dim=0) > 0.9999


def test_awp_trains_through_a_wrapper_and_refuses_data_parallel(bars):
    net, x, y = bars
    net.train()
    frozen = net.features[0].weight.requires_grad_(False)
    defense = make_defense("awp", eps=EPS, steps=1)
    wrapped = InfererModel(net)
    assert "network.features.0.weight" not in defense.perturbed_names(wrapped)
    loss, _ = defense(wrapped, x, y)
    loss.backward()
    assert frozen.grad is None and net.head.weight.grad is not None
    for bad in (nn.DataParallel(net), InfererModel(nn.DataParallel(net))):
        with pytest.raises(ValueError, match="does not support DistributedDataParallel"):
            defense(bad, x, y)
    with pytest.raises(TypeError, match="nn.Module"):
        defense(lambda t: net(t), x, y)
    with pytest.raises(ValueError, match="supports \\('classification',\\), not segmentation"):
        make_defense("awp", base="trades", task="segmentation")


# ---- arguments, registry and benchmark -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kwargs,argument",
    [
        ("free_at", {"replays": 0}, "replays"),
        ("free_at", {"alpha": -1.0}, "alpha"),
        ("free_at", {"eps": -1.0}, "eps"),
        ("n_fgsm", {"k": -1.0}, "k"),
        ("n_fgsm", {"alpha": 0.0}, "alpha"),
        ("n_fgsm", {"norm": "L1"}, "norm"),
        ("awp", {"gamma": -0.1}, "gamma"),
        ("awp", {"base": "mart"}, "base"),
        ("awp", {"beta": 3.0}, "beta"),
        ("awp", {"base": "trades", "beta": -1.0}, "beta"),
        ("awp", {"steps": 0}, "steps"),
    ],
)
def test_bad_arguments_name_the_argument(name, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make_defense(name, **kwargs)


@pytest.mark.parametrize("bundle", ["brain_lesion_robust_classification", "brain_lesion_robust_segmentation"])
@pytest.mark.parametrize("name", NEW)
def test_the_bundles_defense_override_builds_the_new_defenses(bundle, name):
    from pathlib import Path

    from monai.bundle import ConfigParser

    folder = Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs"
    parser = ConfigParser(
        ConfigParser.load_config_files([str(folder / "train.json"), str(folder / "train_robust.json")])
    )
    parser["defense"] = name
    kwargs = parser.get_parsed_content("defense_kwargs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # steps=10 is ignored by the single-step defenses, with a warning
        defense = make_defense(parser.get_parsed_content("defense"), **kwargs)
    assert defense.name == name and defense.eps == kwargs["eps"] and defense.loss == kwargs.get("loss", "ce")


def test_shared_defense_arguments_and_registry():
    for name in ("n_fgsm", "free_at"):
        with pytest.warns(UserWarning, match="`steps`=10 is ignored"):
            assert make_defense(name, eps=4 / 255, steps=10).eps == 4 / 255
    assert isinstance(make_defense("n-fgsm"), NFGSM) and isinstance(make_defense("free_at"), FreeAT)
    assert make_defense("free_at").replays == 4 and make_defense("free_at").alpha == EPS
    assert make_defense("pgd_at").replays == 1 and make_defense("awp").gamma == 5e-3
    assert set(NEW) <= set(TRAINING_METHODS)
    cells = _cells(GridConfig(methods=["nat", "n_fgsm", "free_at", "awp"], eps=[EPS]))
    assert {(task, method) for task, method, _ in cells} == {
        (task, method) for task in ("classification", "segmentation") for method in ("nat", *NEW)
    }


@pytest.mark.parametrize("name, terms", [("trades", ("natural", "kl")), ("mart", ("boosted_ce", "weighted_kl"))])
def test_defenses_report_their_loss_terms(bars, name, terms):
    """The terms reach the trainer's output as loss_<term> (logged by the tracking handlers) and make the loss."""
    net, x, y = bars
    defense = make_defense(name, eps=4 / 255, steps=2, beta=6.0)
    loss, outputs = defense(net, x, y, seed=0)
    assert float(loss) == pytest.approx(float(outputs[terms[0]] + 6.0 * outputs[terms[1]]), rel=1e-6)
    trainer = _trainer(net, defense, [{"image": x, "label": y}], decollate=False)
    trainer.run()
    assert all(f"loss_{term}" in trainer.state.output for term in terms)
