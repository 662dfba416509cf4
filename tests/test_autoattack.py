# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""AutoAttack: per-sample worst case, report, binary/multi-label/segmentation chains, sanity checks."""

import warnings

import pytest
import torch
from monai.data import MetaTensor

from monai_adv.attacks import APGD, APGDT, FAB, PGD, AutoAttack, Square, sanity_checks
from tests.models import Noisy, TinyClassifier, TinySegmenter

SMALL = {"steps": 20, "queries": 300}


def test_worst_case_is_at_most_every_component(trained_bars4):
    model, x, y = trained_bars4
    eps = 10 / 255
    aa = AutoAttack(model, eps=eps, **SMALL)
    result = aa.perturb(x, y)
    report = result.details
    components = {
        "apgd-ce": APGD(model, eps=eps, steps=20),
        "apgd-t": APGDT(model, eps=eps, steps=20),
        "fab-t": FAB(model, eps=eps, steps=20),
        "square": Square(model, eps=eps, queries=300),
    }
    print(report["broken_counts"], report["seconds"])
    robust_accuracy = 1 - result.success.float().mean().item()
    for name, attack in components.items():
        alone = attack.perturb(x, y).success
        assert bool((result.success | ~alone).all()), f"a sample {name} breaks alone survived AutoAttack"
        assert robust_accuracy <= 1 - alone.float().mean().item()
    assert report["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert sum(report["broken_counts"].values()) + report["broken_by"].count("clean") == int(result.success.sum())
    assert [b is not None for b in report["broken_by"]] == result.success.tolist()
    assert torch.equal(result.clean_success, torch.tensor([b == "clean" for b in report["broken_by"]]))
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1) != y, result.success)
    assert (result.x_adv - x).abs().max() <= eps


def test_binary_task_substitutes_dlr_and_says_so():
    torch.manual_seed(0)
    model = TinyClassifier(2, 1, 1).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 1, 0, 1, 0])
    aa = AutoAttack(model, eps=8 / 255, check=False, **SMALL)
    notes = " ".join(aa.perturb(x, y).details["notes"])
    assert "Targeted DLR needs 4 classes" in notes
    rand = AutoAttack(model, eps=8 / 255, version="rand", check=False, steps=2)
    assert "DLR is undefined with 2 classes" in " ".join(rand.perturb(x, y).details["notes"])


def test_multilabel_and_segmentation_chains_in_3d():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8, 8)
    multilabel = TinyClassifier(3, 1, 4).eval()
    aa = AutoAttack(multilabel, eps=8 / 255, check=False, **SMALL)
    result = aa.perturb(x, torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0]]))
    assert result.task == "multilabel" and result.details["attacks"] == ["apgd-ce", "apgd-margin", "square"]
    segmenter = TinySegmenter(3, 1, 3).eval()
    aa = AutoAttack(segmenter, eps=8 / 255, check=False, **SMALL)
    result = aa.perturb(x, torch.randint(0, 3, (2, 1, 8, 8, 8)))
    assert result.task == "segmentation" and result.details["attacks"] == ["apgd-ce", "apgd-dice", "square"]
    assert result.x_adv.shape == x.shape and (result.x_adv - x).abs().max() <= 8 / 255


def test_a_3d_volume_runs_through_every_classification_attack():
    torch.manual_seed(0)
    model = TinyClassifier(3, 1, 4).eval()
    x, y = torch.rand(2, 1, 8, 8, 8), torch.tensor([0, 3])
    for version in ("standard", "plus"):
        aa = AutoAttack(model, eps=8 / 255, version=version, check=False, steps=3, queries=20)
        assert (aa(x, y) - x).abs().max() <= 8 / 255
    for norm, eps in (("L2", 0.5),):
        aa = AutoAttack(model, eps=eps, norm=norm, check=False, steps=3, queries=20)
        assert ((aa(x, y) - x).flatten(1).norm(dim=1) <= eps + 1e-6).all()


def test_custom_chain_by_name_and_instance_and_metatensor(trained_bars):
    model, x, y = trained_bars
    x, y = MetaTensor(x[:32], meta={"filename_or_obj": "bars"}), y[:32]
    aa = AutoAttack(model, eps=12 / 255, version="custom", attacks=["fgsm", PGD(model, eps=12 / 255, steps=10)])
    result = aa.perturb(x, y)
    assert isinstance(result.x_adv, MetaTensor) and result.x_adv.meta["filename_or_obj"] == "bars"
    assert result.details["attacks"] == ["fgsm", "PGD"]


def test_bad_arguments(trained_bars):
    model = trained_bars[0]
    with pytest.raises(ValueError, match='`attacks` must list at least one attack for version="custom"'):
        AutoAttack(model, version="custom")
    with pytest.raises(ValueError, match='`attacks` is only for version="custom"'):
        AutoAttack(model, attacks=["pgd"])
    with pytest.raises(ValueError, match="`version` must be one of"):
        AutoAttack(model, version="faster")


def test_sanity_checks_flag_what_makes_a_number_untrustworthy(trained_bars):
    model, x, y = trained_bars
    x, y = x[:16], y[:16]
    assert sanity_checks(model, x, y) == []
    probs = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    assert any("probabilities" in w for w in sanity_checks(probs, x, y))
    assert any("randomized" in w for w in sanity_checks(Noisy(model), x, y))
    assert any("exactly zero" in w for w in sanity_checks(lambda v: model((v * 4).round() / 4), x, y))
    assert any("Clean accuracy is zero" in w for w in sanity_checks(model, x, (y + 1) % 3))
    aa = AutoAttack(Noisy(model), eps=8 / 255, version="rand", steps=2)
    with pytest.warns(UserWarning, match="randomized"):
        first = aa.perturb(x, y)
    assert any("randomized" in note for note in first.details["notes"])
    # checked once per instance: a second batch neither warns again nor loses the note
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        second = aa.perturb(x[:4], y[:4])
    assert any("randomized" in note for note in second.details["notes"])


def test_result_of_a_sample_does_not_depend_on_its_batch():
    from tests.models import PerSample

    torch.manual_seed(0)
    model = PerSample(TinyClassifier(2, 1, 4).double().eval())
    x, y = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    aa = AutoAttack(model, eps=16 / 255, check=False, steps=5, queries=30)
    batch = aa(x, y)
    for i in range(5):
        torch.testing.assert_close(aa(x[i : i + 1], y[i : i + 1])[0], batch[i], rtol=0, atol=1e-6)
