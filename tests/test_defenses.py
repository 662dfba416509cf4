# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial training objectives."""

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from monai_adv.defenses import HAT, TRADES, available_defenses, defense_class, make_defense, survey_step
from tests.cases import same_snapshot, snapshot
from tests.models import TinyClassifier, TinySegmenter, bars_dataset


@pytest.fixture
def problem():
    x, y = bars_dataset(64, seed=3)
    torch.manual_seed(0)
    return TinyClassifier(2, 1, 3), x, y


def _train(defense, net, x, y, steps=25):
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(steps):
        net.train()
        opt.zero_grad()
        loss, outputs = defense(net, x, y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("name", ["nat", "pgd_at", "fast_at", "trades", "mart", "hat"])
def test_each_objective_lowers_its_loss(problem, name):
    net, x, y = problem
    kwargs = {"eps": 8 / 255, "steps": 3}
    if name == "hat":
        torch.manual_seed(1)
        helper = TinyClassifier(2, 1, 3)
        _train(make_defense("nat"), helper, x, y, steps=20)
        kwargs["helper"] = helper.eval()
    if name == "fast_at":
        kwargs.pop("steps")
    torch.manual_seed(0)
    losses = _train(make_defense(name, **kwargs), net, x, y)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{name}: {losses[:5]} -> {losses[-5:]}"


def test_outputs_and_network_mode(problem):
    net, x, y = problem
    net.train()
    loss, outputs = make_defense("pgd_at", steps=2)(net, x, y)
    assert net.training, "the network is back in train mode for the update"
    assert outputs["clean"] is None and outputs["adversarial"].shape == (64, 3)
    assert loss.requires_grad and all(p.grad is None for p in net.parameters())
    _, outputs = make_defense("trades", steps=2)(net, x, y)
    assert outputs["clean"].shape == outputs["adversarial"].shape == (64, 3)


def test_attack_generation_leaves_batchnorm_statistics_alone(problem):
    net, x, y = problem
    net.train()
    before = snapshot(net)
    defense = make_defense("pgd_at", steps=2)
    x_adv = defense.inner_attack(net)(x, y)
    assert same_snapshot(before, snapshot(net))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-7


def test_trades_with_beta_zero_is_natural_cross_entropy(problem):
    net, x, y = problem
    loss, _ = TRADES(beta=0.0)(net, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(net(x), y))


def test_pgd_at_for_multilabel_and_segmentation_2d_3d():
    torch.manual_seed(0)
    multilabel = TinyClassifier(2, 1, 4)
    x = torch.rand(8, 1, 8, 8)
    y = (torch.rand(8, 4) > 0.5).float()
    losses = _train(make_defense("pgd_at", steps=2), multilabel, x, y, steps=15)
    assert losses[-1] < losses[0]
    for dims in (2, 3):
        seg = TinySegmenter(dims, 1, 2)
        x = torch.rand(2, 1, *(8,) * dims)
        y = (x > 0.5).long()
        for loss_name in ("ce", "dice"):
            losses = _train(make_defense("pgd_at", steps=2, loss=loss_name), seg, x, y, steps=15)
            assert losses[-1] < losses[0], (dims, loss_name, losses)


def test_survey_defaults():
    assert [survey_step(e / 255) * 255 for e in (1, 2, 4, 8)] == pytest.approx([0.5, 0.5, 1.0, 2.0])
    defense = make_defense("pgd_at")
    assert defense.steps == 10 and defense.eps == 8 / 255 and defense.alpha == pytest.approx(2 / 255)
    assert make_defense("fast_at", eps=8 / 255).alpha == pytest.approx(10 / 255)
    adversarial = {"nat", "pgd_at", "fast_at", "trades", "mart", "hat", "n_fgsm", "free_at", "awp"}
    assert set(available_defenses()) == adversarial | {"gaussian_aug", "smoothadv"}


def test_bad_input(problem):
    net, x, y = problem
    with pytest.raises(ValueError, match="`name` must be one of"):
        make_defense("bogus")
    with pytest.raises(TypeError, match=r"takes no argument\(s\) \['gamma'\]"):
        make_defense("trades", gamma=1.0)
    with pytest.raises(ValueError, match="HAT needs `helper`"):
        HAT()
    with pytest.raises(ValueError, match="larger than the whole `value_range`"):
        make_defense("pgd_at", eps=8.0)
    seg = TinySegmenter(2, 1, 2)
    with pytest.raises(ValueError, match="defined for classification, not segmentation"):
        make_defense("trades", steps=1)(seg, torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="`loss` must be one of"):
        make_defense("pgd_at", loss="hinge")


BAD_DEFENSE_INPUTS = [
    (
        "nan",
        lambda x: x.masked_fill(
            torch.zeros_like(x, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True), float("nan")
        ),
        ValueError,
        "NaN or Inf",
    ),
    ("outside_range", lambda x: x * 3, ValueError, "outside `value_range`"),
    ("integer", lambda x: (x * 255).to(torch.uint8), TypeError, "floating-point"),
]


@pytest.mark.parametrize("name", ["nat", "pgd_at", "fast_at", "trades", "mart", "hat"])
@pytest.mark.parametrize(
    "make_bad,error,pattern", [c[1:] for c in BAD_DEFENSE_INPUTS], ids=[c[0] for c in BAD_DEFENSE_INPUTS]
)
def test_every_defense_checks_its_inputs(name, make_bad, error, pattern):
    net = TinyClassifier(2, 1, 3)
    kwargs = {"helper": TinyClassifier(2, 1, 3).eval()} if name == "hat" else {}
    defense = make_defense(name, eps=2 / 255, steps=1, **kwargs) if name != "nat" else make_defense(name)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(error, match=pattern):
        defense(net, make_bad(x), torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize("name", ["nat", "pgd_at", "fast_at", "trades", "mart", "hat"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_defenses_compute_in_the_network_dtype(name, dtype):
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 3)
    kwargs = {"helper": TinyClassifier(2, 1, 3).eval()} if name == "hat" else {}
    defense = make_defense(name, eps=2 / 255, steps=1, **kwargs) if name != "nat" else make_defense(name)
    loss, outputs = defense(net, torch.rand(4, 1, 8, 8).to(dtype), torch.tensor([0, 1, 2, 0]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_fast_at_takes_the_shared_defense_arguments_with_a_warning():
    with pytest.warns(UserWarning, match="fast_at takes one FGSM step"):
        defense = make_defense("fast_at", eps=4 / 255, steps=10)
    assert defense.steps == 1
    assert make_defense("fast_at", steps=1).steps == 1
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        make_defense("fast_at", steps=0)


def test_trades_inner_attack_runs_the_network_in_eval_mode_without_changing_it():
    net = TinyClassifier(2, 1, 3).train()
    bn = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    modes = []
    net.register_forward_pre_hook(lambda m, inp: modes.append(m.training))
    make_defense("trades", eps=2 / 255, steps=2)(net, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    # clean and adversarial training passes in train mode; the 1 + 2 inner-attack passes in eval mode
    assert modes == [True, False, False, False, True]
    assert net.training and all(m.training for m in bn)


BUNDLES = sorted(
    p.parent.parent for p in (Path(__file__).resolve().parents[1] / "bundles").glob("*/configs/train_robust.json")
)


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart", "fast_at", "nat"])
def test_the_bundles_defense_override_builds_every_documented_defense(bundle, name):
    """``--defense NAME`` on train_robust.json: the same ``defense_kwargs`` (eps, steps, ...) for every defense."""
    from monai.bundle import ConfigParser

    files = [str(bundle / "configs" / c) for c in ("train.json", "train_robust.json")]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser["defense"] = name
    kwargs = parser.get_parsed_content("defense_kwargs")
    assert "steps" in kwargs
    if kwargs.get("loss", "ce") != "ce" and "segmentation" not in defense_class(name).tasks:
        with pytest.raises(ValueError, match="is a cross-entropy objective for classification"):
            make_defense(name, **kwargs)  # e.g. trades on the segmentation bundle: clear at construction
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defense = make_defense(parser.get_parsed_content("defense"), **kwargs)
    assert defense.name == name and defense.eps == kwargs["eps"]
    assert defense.steps == (1 if name == "fast_at" else kwargs["steps"])
    assert [str(w.message) for w in caught] == (
        ["fast_at takes one FGSM step: `steps`=10 is ignored."] if name == "fast_at" else []
    )


def test_a_per_call_argument_given_to_make_defense_points_to_the_call():
    with pytest.raises(TypeError, match=r"\['seed'\].*RobustTrainer\(seed=\.\.\.\)"):
        make_defense("pgd_at", eps=4 / 255, seed=0)
    with pytest.raises(TypeError, match=r"takes no argument\(s\) \['bogus'\]\.$"):
        make_defense("pgd_at", bogus=0)


@pytest.mark.parametrize("name", ["trades", "mart", "hat"])
def test_classification_objectives_reject_another_task_or_loss_at_construction(name):
    kwargs = {"helper": TinyClassifier(2, 1, 3).eval()} if name == "hat" else {}
    with pytest.raises(ValueError, match=r"`loss`='dice' is not supported"):
        make_defense(name, loss="dice", **kwargs)
    with pytest.raises(ValueError, match=f"The {name} defense supports \\('classification',\\), not segmentation"):
        make_defense(name, task="segmentation", **kwargs)
    assert make_defense(name, task="classification", loss="ce", **kwargs).loss == "ce"


@pytest.mark.parametrize("name", ["trades", "hat"])
def test_kl_inner_attack_keeps_the_mask_the_budget_and_is_batch_independent(problem, name):
    from tests.models import PerSample

    net, x, y = problem
    model = PerSample(net.double().eval())
    x = x[:6].double()
    kwargs = {"helper": TinyClassifier(2, 1, 3).double()} if name == "hat" else {}
    attack = make_defense(name, eps=16 / 255, steps=5, **kwargs).inner_attack(model, seed=7)
    roi = torch.zeros_like(x[:1])
    roi[..., 4:12, 4:12] = 1
    x_adv = attack(x, y[:6], mask=roi)
    assert torch.equal(x_adv[..., roi[0, 0] == 0], x[..., roi[0, 0] == 0])  # outside the mask: untouched
    inside = (x_adv - x)[..., roi[0, 0] == 1]
    assert inside.abs().max() <= 16 / 255 and inside.abs().max() > 0
    for i in range(6):  # a sample's example does not depend on the rest of its batch
        alone = attack(x[i : i + 1], y[i : i + 1], mask=roi)
        torch.testing.assert_close(alone[0], x_adv[i], rtol=0, atol=1e-12)
    # the loss ascended is the KL divergence from the clean prediction: it grew
    with torch.no_grad():
        clean = F.softmax(net(x), dim=1)
        kl = F.kl_div(F.log_softmax(net(x_adv), dim=1), clean, reduction="none").sum(dim=1)
    assert (kl > 0).all()
