# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Diagnostics of false robustness: the pure checks on per-sample outcomes, the unbounded attack, the
batch-dependence flag, and the evaluator's notes on a masked model (and none on the normal trained model)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from monai.data import DataLoader
from torch import nn

from monai_adv.attacks import (
    APGD,
    AutoAttack,
    Square,
    autoattack_notes,
    sanity_flags,
    sanity_notes,
    unbounded_attack_check,
)
from monai_adv.attacks.diagnostics import (
    attack_kind,
    autoattack_masking_flags,
    evaluation_notes,
    full_range_budget,
    full_range_notes,
    gradient_free_only,
    gradient_masking_notes,
    monotonicity_notes,
    sample_voxels,
)
from monai_adv.benchmark.report import validate_report
from monai_adv.engines import RobustnessEvaluator
from tests.models import Noisy, PerSample
from tests.test_adaptive import Quantize, Scaled

B = torch.tensor


@pytest.fixture(scope="module")
def bars(trained_bars):
    model, x, y = trained_bars
    return model, x[:32], y[:32]


# ---- the pure checks -----------------------------------------------------------------------------------------------
def test_attack_kinds():
    for name in ("square", "Square", "simba_dct", "simba-pixel", "square-5000"):
        assert attack_kind(name) == "gradient-free", name
    for name in ("pgd", "fgsm", "cw", "apgd-ce", "apgd_t", "fab-t", "apgd-margin", "my_attack"):
        assert attack_kind(name) == "gradient", name
    for name in ("autoattack", "transfer", "worst-case"):
        assert attack_kind(name) == "composite", name
    assert attack_kind("my_attack", gradient_free=["My-Attack"]) == "gradient-free"


def test_autoattack_broken_by_square_after_the_gradient_attacks():
    broken_by = ["clean", None, "apgd-ce", "square", "square", "apgd-t"]
    chain = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert autoattack_masking_flags(broken_by, chain).tolist() == [False, False, False, True, True, False]
    (note,) = autoattack_notes(broken_by, chain)
    assert "Gradient masking suspected" in note and "square broke 2 of 5 attacked sample(s)" in note
    assert "(apgd-ce, apgd-t, fab-t)" in note and "BPDA" in note
    assert autoattack_notes(broken_by, ["square", "apgd-ce", "apgd-t"]) == []  # square ran first: no comparison
    assert autoattack_notes(broken_by, chain, tolerance=0.5) == []  # 2 of 5 is within a 50 % tolerance
    assert autoattack_notes(["clean", None, "apgd-ce"], chain) == []
    assert autoattack_masking_flags(["simba"], None, gradient_free=()).tolist() == [True]  # no chain: square is last


def test_gradient_masking_from_per_attack_rows():
    at_8 = {"pgd-20": B([1, 0, 0, 0]).bool(), "square-5000": B([1, 1, 1, 0]).bool(), "worst-case": B([1, 1, 1, 0])}
    attacks = {"pgd-20": "pgd", "square-5000": "square"}
    assert gradient_free_only(at_8, attacks).tolist() == [False, True, True, False]
    assert gradient_free_only({"pgd-20": at_8["pgd-20"]}, attacks) is None  # nothing to compare
    assert gradient_free_only({"square-5000": at_8["square-5000"]}, attacks) is None
    eligible = B([1, 1, 1, 1]).bool()
    (note,) = gradient_masking_notes({8 / 255: at_8, 4 / 255: {k: torch.zeros(4) for k in at_8}}, eligible, attacks)
    assert "square-5000" in note and "(pgd-20)" in note and "2 of 4 eligible sample(s) at 0.0313725" in note
    assert "worst-case" not in note
    # a composite attack (autoattack) is neither kind: square is compared with the gradient attacks only
    assert gradient_free_only({"autoattack": B([0, 0]), "square": B([1, 0]), "pgd": B([0, 0])}).tolist() == [1, 0]
    many = {"pgd": torch.zeros(200, dtype=torch.bool), "square": torch.zeros(200, dtype=torch.bool)}
    many["square"][0] = True  # 1 of 200 is within the 1 % tolerance
    assert gradient_masking_notes({0.1: many}) == []


def test_robust_accuracy_against_the_budget():
    falling = {"pgd": {1 / 255: 0.8, 2 / 255: 0.6, 8 / 255: 0.1}}
    assert monotonicity_notes(falling) == []
    (rising,) = monotonicity_notes({"pgd": {1 / 255: 0.5, 2 / 255: 0.3, 4 / 255: 0.35}, "fgsm": {1 / 255: 0.5}})
    assert "rises with the budget" in rising and "pgd: 0.300 at 0.00784314 -> 0.350 at 0.0156863" in rising
    assert monotonicity_notes({"pgd": {1: 0.5, 2: 0.3, 4: 0.305}}) == []  # within the 0.01 tolerance
    plateau = {"pgd": {4 / 255: 0.6, 8 / 255: 0.595}, "worst-case": {4 / 255: 0.6, 8 / 255: 0.5}}
    (flat,) = monotonicity_notes(plateau, clean=0.9)
    assert "does not fall" in flat and "pgd: 0.600" in flat and "worst-case" not in flat
    assert monotonicity_notes(plateau, clean=0.605) == []  # nothing broken at the smallest budget: too small to tell
    assert monotonicity_notes(plateau) != []  # without the clean accuracy: flat is flat
    assert monotonicity_notes({"pgd": {4 / 255: 0.6, 6 / 255: 0.6}}) == []  # 1.5x: too narrow to tell
    assert monotonicity_notes({"pgd": {4 / 255: 0.0, 16 / 255: 0.0}}) == []  # flat at zero is fine


def test_full_range_budgets():
    assert full_range_budget(1.0, "Linf", (0.0, 1.0)) and not full_range_budget(0.5, "Linf", (0.0, 1.0))
    assert full_range_budget(2.0, "Linf", (-1.0, 1.0)) and not full_range_budget(1.0, "Linf", (-1.0, 1.0))
    assert full_range_budget(16.0, "L2", (0.0, 1.0), num_voxels=256)
    assert not full_range_budget(15.9, "L2", (0.0, 1.0), num_voxels=256)
    assert not full_range_budget(100.0, "L2", (0.0, 1.0)) and not full_range_budget(100.0, "Linf", None)
    (note,) = full_range_notes({1.0: {"pgd": 3, "worst-case": 0}, 0.1: {"pgd": 9}}, 10, "Linf", (0.0, 1.0))
    assert "eps=1" in note and "pgd 3 of 10" in note and "worst-case" not in note and "must be 0" in note
    assert full_range_notes({1.0: {"pgd": 0}}, 10, "Linf", (0.0, 1.0)) == []
    assert sample_voxels({"image": torch.zeros(4, 2, 8, 8)}) == 128 and sample_voxels(None) is None


def test_evaluation_notes_align_the_rows_by_sample():
    def rows(index, broken, eligible=(1, 1, 1, 1)):
        return {"index": B(index), "broken": B(broken).bool(), "eligible": B(eligible).bool()}

    cells = {  # the same samples in another order in each cell: square alone broke samples 7 and 9
        ("pgd", 0.5): rows([5, 7, 9, 11], [1, 0, 0, 0]),
        ("square", 0.5): rows([11, 9, 7, 5], [0, 1, 1, 1]),
        ("pgd", 1.0): rows([5, 7, 9, 11], [1, 1, 1, 1]),
        ("square", 1.0): rows([5, 7, 9, 11], [1, 1, 1, 1]),
    }
    notes = evaluation_notes(cells, {"pgd": "pgd", "square": "square"}, "Linf", (0.0, 1.0))
    assert len(notes) == 1 and "2 of 4 eligible sample(s) at 0.5" in notes[0]
    cells[("pgd", 1.0)] = rows([5, 7, 9, 11], [1, 0, 1, 1])
    notes = evaluation_notes(cells, {"pgd": "pgd", "square": "square"}, "Linf", (0.0, 1.0))
    assert any("whole value range" in n and "pgd 1 of 4" in n for n in notes)
    assert not any("whole value range" in n for n in evaluation_notes(cells, None, "Linf", (0.0, 1.0), masked=True))
    assert not any("whole value range" in n for n in evaluation_notes(cells, None, "Linf", (0.0, 1.0), "segmentation"))


# ---- on real models ------------------------------------------------------------------------------------------------
def test_unbounded_attack_breaks_every_sample_of_a_working_evaluation(bars):
    """PGD-20 at eps 1 (the whole [0, 1] range): the trained network keeps 0 of 32 samples; quantized in front,
    11 of 32 survive (zero gradients: only the random start moves them); with saturated logits 11 of 32 survive
    the cross-entropy and 0 the CW margin."""
    net, x, y = bars
    notes, survived = unbounded_attack_check(net, x, y)
    assert notes == [] and survived.dtype == torch.bool and not survived.any()
    masked = nn.Sequential(Quantize(), net).eval()
    notes, survived = unbounded_attack_check(masked, x, y)
    print("quantized survivors", int(survived.sum()))
    assert int(survived.sum()) >= 5 and "unbroken" in notes[0] and "BPDA" in notes[0]
    saturated = Scaled(net, 1e4).eval()
    _, ce = unbounded_attack_check(saturated, x, y)
    _, margin = unbounded_attack_check(saturated, x, y, loss="cw")
    print("saturated survivors", int(ce.sum()), int(margin.sum()))
    assert int(ce.sum()) >= 5 and not margin.any()
    _, l2 = unbounded_attack_check(net, x[:8], y[:8], norm="L2")
    assert not l2.any()
    with pytest.raises(ValueError, match="eps"):
        unbounded_attack_check(net, x, y, value_range=None)


def test_batch_statistics_are_flagged_as_batch_dependent(bars):
    """(d) BatchNorm normalizing with the batch's statistics at test time (running statistics dropped)."""
    net, x, y = bars
    batch_stats = copy.deepcopy(net)
    norm = batch_stats.features[1]
    norm.running_mean = norm.running_var = None
    norm.track_running_stats = False
    flags = sanity_flags(batch_stats, x, y)
    assert bool(flags["batch_dependent"].all()) and not flags["randomized"].any()
    assert any("depends on the rest of the batch" in note for note in sanity_notes(flags))
    assert not sanity_flags(batch_stats, x[:1], y[:1])["batch_dependent"].any()  # one sample: nothing to compare
    assert not sanity_flags(PerSample(batch_stats), x[:4], y[:4])["batch_dependent"].any()
    for model in (net, Noisy(net)):  # the trained network; a randomized one (can't tell)
        assert not sanity_flags(model, x, y)["batch_dependent"].any()
    assert sanity_notes(sanity_flags(net, x, y)) == []


def test_autoattack_square_breaks_what_its_gradient_attacks_did_not(bars):
    net, x, y = bars
    masked = nn.Sequential(Quantize(), net).eval()
    found = {}
    for name, model in (("masked", masked), ("network", net)):
        chain = [APGD(model, eps=16 / 255, steps=10), Square(model, eps=16 / 255, queries=100)]
        details = AutoAttack(model, version="custom", attacks=chain, eps=16 / 255, check=False).perturb(x, y).details
        found[name] = autoattack_notes(details["broken_by"], details["attacks"])
        print(name, details["broken_counts"])
    assert len(found["masked"]) == 1 and "Square broke" in found["masked"][0] and "(APGD)" in found["masked"][0]
    assert found["network"] == []


def _loader(x, y):
    return DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=12)


def test_evaluator_notes_flag_a_masked_model_and_not_the_trained_one(bars):
    """(e) PGD-10 and Square (100 queries) at eps 16/255 and 1 on 24 samples. Quantized model: robust accuracy
    PGD 1.00 / 0.33, Square 0.67 / 0.00: notes for zero gradients, square-only breaks and the survivors at eps 1.
    The trained network: PGD 0.04 / 0.00: no note."""
    net, x, y = bars
    masked = nn.Sequential(Quantize(), net).eval()
    suite = ["pgd", {"attack": "square", "name": "square-100", "queries": 100}]
    reports = {}
    for name, model in (("masked", masked), ("network", net)):
        evaluator = RobustnessEvaluator(x.device, _loader(x[:24], y[:24]), model, suite, [16 / 255, 1.0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluator.run()
        reports[name] = evaluator.report()
        validate_report(reports[name])
        issued = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert all(note in issued for note in reports[name]["notes"])
        print(name, [(r["attack"], r["eps_label"], r["metrics"]["accuracy"]) for r in reports[name]["results"]])
    notes = reports["masked"]["notes"]
    assert any("exactly zero for 24 sample(s)" in n for n in notes)
    assert any("Gradient masking suspected" in n and "square-100" in n and "(pgd)" in n for n in notes)
    assert any("whole value range" in n and "pgd" in n for n in notes)
    assert reports["network"]["notes"] == []


class PartlyMasked(nn.Module):
    """The network's logits, with their gradient cut for the samples it predicts as horizontal bars (class 0)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        cut = (logits.argmax(dim=1) == 0).reshape(-1, 1)
        return torch.where(cut, logits.detach(), logits)


def test_evaluator_notes_a_robust_accuracy_plateau(bars):
    """Gradients cut for the samples predicted as class 0 (10 of 32): PGD-10 breaks every other sample at 24/255
    and nothing more at 64/255: robust accuracy 0.31 at both budgets, the share of class 0."""
    net, x, y = bars
    evaluator = RobustnessEvaluator(x.device, _loader(x, y), PartlyMasked(net).eval(), ["pgd"], [24 / 255, 64 / 255])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator.run()
    report = evaluator.report()
    print([(r["eps_label"], r["metrics"]["accuracy"]) for r in report["results"]])
    assert any("exactly zero for 10 sample(s)" in n for n in report["notes"])
    assert any("does not fall as the budget grows" in n and "pgd: 0.312 at 24/255" in n for n in report["notes"])
