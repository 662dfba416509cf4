# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Every registered attack and one training step of every defense on the survey's architectures as MONAI builds
them: DenseNet-121, ResNet-18 and EfficientNet-B0 (MobileNetV2 is not in MONAI) with 1 and 3 input channels, and a
3D UNet and SegResNet attacked and trained through ``SlidingWindowInferer``.

The default run uses smaller inputs than the networks are made for (64x64 images; 32^3 volumes tiled by eight
16^3 windows), skips the registered aliases of an attack already run (e.g. "pgd_linf" for "pgd") and trains the
3-channel 2D networks only in the slow run, so that it stays short on two CPU cores; ``pytest -m slow`` runs all of
it, and the same tests at 224x224 and on 96^3 volumes tiled by eight 48^3 windows. The networks are untrained:
these tests check that everything runs and keeps the contract (budget, value range, the network left as found), not
how strong an attack is. Costs at full size: ``python -m benchmarks.full_size_cost`` (docs/performance.md).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from benchmarks.full_size_networks import ARCHS_2D, ARCHS_3D, build_2d, build_3d
from monai_adv.attacks import (
    InfererModel,
    attack_arguments,
    attack_class,
    attack_defaults,
    available_attacks,
    eval_view,
    make_attack,
)
from monai_adv.defenses import available_defenses, defense_class, make_defense
from monai_adv.engines import RobustTrainer
from tests.cases import same_snapshot, snapshot

NUM_CLASSES = 3  # e.g. ISIC 2017's three diagnoses: enough for the (targeted) DLR losses
EPS = 4 / 255
EPS_L2 = 0.5


# size: (2D image side, 3D volume side, 3D window side, window overlap)
SIZES = {"small": (64, 32, 16, 0.0), "full": (224, 96, 48, 0.0)}  # as benchmarks.full_size_cost
SIZE_PARAMS = [pytest.param("small", id="small"), pytest.param("full", id="full", marks=pytest.mark.slow)]
NETS_2D = [(arch, c) for arch in ARCHS_2D for c in (1, 3)]
NETS_3D = list(ARCHS_3D)
# attacks on class logits only (targeted ones, FMN), and DLR, which needs classes
NOT_FOR_SEGMENTATION = {n for n in available_attacks() if "segmentation" not in attack_class(n).tasks} | {"apgd_dlr"}
NOT_FOR_CLASSIFICATION = {n for n in available_attacks() if "classification" not in attack_class(n).tasks}


def _inferer(size: str) -> SlidingWindowInferer:
    _, _, roi, overlap = SIZES[size]
    return SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=4, overlap=overlap)


@dataclass
class Case:
    """An architecture ready to attack: the module whose state is checked, the callable the attacks get (the
    network, or the network through the inferer), a batch, labels (the network's own clean predictions, so that
    every sample starts correctly handled) and a surrogate of the same input shape for the transfer attack."""

    network: nn.Module
    model: Callable
    x: torch.Tensor
    y: torch.Tensor
    surrogate: Callable
    segmentation: bool


def _own_labels(model: Callable, x: torch.Tensor, segmentation: bool) -> torch.Tensor:
    with torch.no_grad():
        logits = eval_view(model)(x)
    return logits.argmax(dim=1, keepdim=segmentation)


def _case_2d(arch: str, channels: int, size: str) -> Case:
    torch.manual_seed(0)
    network = build_2d(arch, channels, NUM_CLASSES)
    side = SIZES[size][0]
    x = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(1))  # 2: BatchNorm trains
    surrogate = build_2d("resnet18", channels, NUM_CLASSES).eval()
    return Case(network, network, x, _own_labels(network, x, False), surrogate, False)


def _case_3d(arch: str, size: str) -> Case:
    torch.manual_seed(0)
    network = build_3d(arch, NUM_CLASSES)
    side = SIZES[size][1]
    x = torch.rand(1, 1, side, side, side, generator=torch.Generator().manual_seed(1))
    model = InfererModel(network, _inferer(size))
    other = build_3d("unet3d", NUM_CLASSES).eval()  # another network (or another initialization)
    surrogate = InfererModel(other, _inferer(size))
    return Case(network, model, x, _own_labels(model, x, True), surrogate, True)


_CASES: Dict[Tuple[Any, ...], Case] = {}


def get_case(key: Tuple[Any, ...]) -> Case:
    """One case per architecture and size for the whole session (building DenseNet-121 takes a while)."""
    if key not in _CASES:
        _CASES[key] = _case_3d(*key) if key[0] in NETS_3D else _case_2d(*key)
    return _CASES[key]


def tiny_settings(name: str, case: Case) -> Dict[str, Any]:
    """Each attack with the fewest steps or queries that still runs all of its parts."""
    kwargs: Dict[str, Any] = {"eps": EPS, "seed": 0}
    cls = attack_class(name).__name__
    if name == "pgd_l2":
        kwargs["eps"] = EPS_L2
    if cls in ("PGD", "CW", "APGD", "APGDT", "FAB"):
        kwargs["steps"] = 2
    if cls in ("APGDT", "FAB"):
        kwargs["target_classes"] = 1
    if cls in ("Square", "SimBA"):
        kwargs["queries"] = 3
    if cls == "AutoAttack":  # APGD-CE -> APGD-T -> FAB-T -> Square (segmentation: APGD-CE -> APGD-Dice -> Square)
        kwargs.update(steps=1, queries=2, target_classes=1, check=False)  # the sanity checks: tests/test_autoattack.py
    if cls == "TransferAttack":
        kwargs.update(surrogate=case.surrogate, source="pgd", source_kwargs={"steps": 1})
    if "early_stop" in attack_arguments(name):
        kwargs["early_stop"] = False  # every step runs, as on a robust network
    return kwargs


def _attack_params():
    """Every registered name; an alias of another name's attack (same class and preset, e.g. "pgd_linf" for
    "pgd") only in the slow run."""
    seen, params = set(), []
    for name in available_attacks():
        if attack_class(name).threat_model != "per-image":  # fitted attacks: tests/test_universal.py, test_patch.py
            continue
        key = (attack_class(name), tuple(sorted(attack_defaults(name).items(), key=str)))
        params.append(pytest.param(name, marks=pytest.mark.slow) if key in seen else name)
        seen.add(key)
    return params


def _check_adversarial(attack, x_adv: torch.Tensor, x: torch.Tensor) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and type(x_adv) is type(x)
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, "left the value range"
    diff = (x_adv.double() - x.double()).flatten(1)
    if attack.norm == "Linf":
        assert diff.abs().amax(dim=1).max() <= attack.eps, "left the eps-ball"
    else:
        assert diff.norm(dim=1).max() <= attack.eps * (1 + 1e-6), "left the eps-ball"


def _run_attack(case: Case, name: str) -> None:
    network = case.network
    train_flags = [m.training for m in network.modules()]
    network.train()  # as in the middle of training: the attack must run it in eval mode and leave it so
    params = list(network.parameters())
    params[0].requires_grad_(False)  # a frozen layer, as in fine-tuning
    params[-1].grad = torch.ones_like(params[-1])  # a pending gradient
    before = snapshot(network)
    x, y = case.x[:1], case.y[:1]  # one image: the attacks' cost is in the network
    try:
        attack = make_attack(name, case.model, **tiny_settings(name, case))
        x_in = x.clone()
        result = attack.perturb(x, y)
        assert torch.equal(x, x_in), "the input was modified in place"
        _check_adversarial(attack, result.x_adv, x)
        assert result.clean_success is not None and result.clean_success.shape == (1,)
        if result.success is not None:
            assert result.success.shape == (1,) and result.success.dtype == torch.bool
        assert result.task == ("segmentation" if case.segmentation else "classification")
        assert same_snapshot(before, snapshot(network)), "the attack changed the network"
    finally:
        params[0].requires_grad_(True)
        params[-1].grad = None
        for module, flag in zip(network.modules(), train_flags):
            module.training = flag


@pytest.mark.parametrize("size", SIZE_PARAMS)
@pytest.mark.parametrize(
    "name", [p for p in _attack_params() if getattr(p, "values", [p])[0] not in NOT_FOR_CLASSIFICATION]
)
@pytest.mark.parametrize("arch,channels", NETS_2D, ids=[f"{a}-{c}ch" for a, c in NETS_2D])
def test_every_attack_on_2d_classifiers(arch, channels, name, size):
    _run_attack(get_case((arch, channels, size)), name)


@pytest.mark.parametrize("size", SIZE_PARAMS)
@pytest.mark.parametrize(
    "name", [p for p in _attack_params() if getattr(p, "values", [p])[0] not in NOT_FOR_SEGMENTATION]
)
@pytest.mark.parametrize("arch", NETS_3D)
def test_every_attack_on_3d_segmenters_through_sliding_windows(arch, name, size):
    _run_attack(get_case((arch, size)), name)


@pytest.mark.parametrize("name", sorted(NOT_FOR_SEGMENTATION))
def test_attacks_for_class_logits_refuse_segmentation_clearly(name):
    case = get_case(("unet3d", "small"))
    with pytest.raises(ValueError, match="segmentation|classification"):
        make_attack(name, case.model, **tiny_settings(name, case))(case.x, case.y)


def test_the_sliding_window_really_tiles():
    """The default run's 3D volumes are covered by several windows, so the attacks' gradients cross windows."""
    seen = []

    def count(windows: torch.Tensor) -> torch.Tensor:
        seen.append(windows.shape[0])
        return windows

    for size in SIZES:
        _, volume, roi, overlap = SIZES[size]
        seen.clear()

        with torch.no_grad():
            _inferer(size)(torch.zeros(1, 1, volume, volume, volume), count)
        per_axis = math.ceil((volume - roi) / (roi * (1 - overlap))) + 1
        assert sum(seen) == per_axis**3 >= 8


# ---- defenses: one training step through RobustTrainer ----


def _defense_settings(name: str, network: nn.Module) -> Dict[str, Any]:
    if name == "gaussian_aug":  # no attack: noise of std sigma, not clipped to the value range
        return {"sigma": 0.25}
    if name == "smoothadv":  # an L2 attack on the smoothed classifier, with noise
        return {"sigma": 0.25, "eps": EPS, "steps": 1, "m": 2}
    kwargs: Dict[str, Any] = {"eps": EPS}
    if name not in ("nat", "fast_at"):
        kwargs["steps"] = 1
    if name == "hat":
        kwargs["helper"] = copy.deepcopy(network).eval()  # stands for the naturally trained network
    return kwargs


def _train_one_step(case: Case, name: str, inferer: Optional[Callable]) -> None:
    network = copy.deepcopy(case.network).train()
    params = list(network.parameters())
    params[0].requires_grad_(False)  # a frozen first layer
    flags = [m.training for m in network.modules()]
    grad_flags = [p.requires_grad for p in params]
    initial = [p.detach().clone() for p in params]
    defense = make_defense(name, **_defense_settings(name, network))
    seen = []
    hook = network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": case.x, "label": case.y}],
        network=network,
        optimizer=torch.optim.SGD([p for p in params if p.requires_grad], lr=0.1),
        defense=defense,
        inferer=inferer,
        seed=0,
    )
    trainer.run()
    hook.remove()
    assert trainer.state.iteration == 1
    output = trainer.state.output[0]
    assert torch.isfinite(torch.as_tensor(output["loss"])).all()
    if not case.segmentation and name != "nat":
        assert 0.0 <= output["adversarial_accuracy"] <= 1.0
    # every input the network saw (clean, adversarial, HAT's helper examples) is in the value range and, in 2D
    # where the network sees the whole image, inside the budget (HAT's helper examples: h times the budget)
    noisy = name in ("gaussian_aug", "smoothadv")  # Gaussian noise on the inputs, not clipped to the range
    assert seen and (noisy or all(s.min() >= 0.0 and s.max() <= 1.0 for s in seen))
    if not case.segmentation and not noisy:
        # HAT's helper examples lie h times further; N-FGSM's noise and step are not projected back (k + 1)
        bound = EPS * (defense.h if name == "hat" else defense.k + 1 if name == "n_fgsm" else 1.0) + 1e-6
        assert all((s - case.x).abs().max() <= bound for s in seen if s.shape == case.x.shape)
    assert [m.training for m in network.modules()] == flags
    assert [p.requires_grad for p in params] == grad_flags
    assert torch.equal(params[0], initial[0]), "the frozen layer was trained"
    assert any(not torch.equal(p, p0) for p, p0 in zip(params[1:], initial[1:])), "no parameter was trained"


# the 3-channel networks train in the slow run only (the first convolution is the only difference)
DEFENSE_NETS_2D = [pytest.param(a, c, id=f"{a}-{c}ch", marks=[pytest.mark.slow] if c == 3 else []) for a, c in NETS_2D]


@pytest.mark.parametrize("size", SIZE_PARAMS)
@pytest.mark.parametrize("name", list(available_defenses()))
@pytest.mark.parametrize("arch,channels", DEFENSE_NETS_2D)
def test_one_training_step_of_every_defense_on_2d_classifiers(arch, channels, name, size):
    _train_one_step(get_case((arch, channels, size)), name, None)


def _segmentation_defenses():
    return [n for n in available_defenses() if "segmentation" in defense_class(n).tasks]


@pytest.mark.parametrize("size", SIZE_PARAMS)
@pytest.mark.parametrize("name", _segmentation_defenses())
@pytest.mark.parametrize("arch", NETS_3D)
def test_one_training_step_of_every_segmentation_defense_through_sliding_windows(arch, name, size):
    _train_one_step(get_case((arch, size)), name, _inferer(size))


@pytest.mark.parametrize("name", [n for n in available_defenses() if n not in _segmentation_defenses()])
def test_classification_only_defenses_refuse_segmentation_clearly(name):
    case = get_case(("unet3d", "small"))
    with pytest.raises(ValueError, match="classification"):
        defense = make_defense(name, **_defense_settings(name, case.network))
        defense(case.model, case.x, case.y)
