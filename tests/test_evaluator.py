# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""RobustnessEvaluator: its numbers equal a hand-written loop over the same batches; report schema; bad input."""

import dataclasses
import json
import warnings

import jsonschema
import numpy as np
import pytest
import torch
from monai.data import DataLoader

from monai_adv.benchmark.report import csv_table, markdown_table, validate_report, write_reports
from monai_adv.engines import RobustnessEvaluator, build_attack, parse_attack_specs
from tests.models import Noisy, TinyClassifier, TinySegmenter, train_classifier

EPS = [4 / 255, 12 / 255]
ATTACKS = ["fgsm", "pgd-20", {"attack": "pgd", "name": "pgd-5-l2", "norm": "L2", "steps": 5}]


def _loader(x, y, batch_size=48):
    return DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=batch_size)


def _auc_by_ranks(scores, positive):
    """Mann-Whitney statistic: the fraction of (positive, negative) pairs ordered right, ties counting half."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def _hand_metrics(logits, y, classes):
    pred = logits.argmax(1).numpy()
    y = y.numpy()
    recalls, precisions, f1s = [], [], []
    for c in range(classes):
        tp, fp, fn = ((pred == c) & (y == c)).sum(), ((pred == c) & (y != c)).sum(), ((pred != c) & (y == c)).sum()
        if tp + fp + fn == 0:
            continue
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    probs = torch.softmax(logits, 1).numpy()
    aucs = [_auc_by_ranks(probs[:, c], y == c) for c in range(classes) if 0 < (y == c).sum() < len(y)]
    return {
        "accuracy": float((pred == y).mean()),
        "recall": float(np.mean(recalls)),
        "precision": float(np.mean(precisions)),
        "f1": float(np.mean(f1s)),
        "auc": float(np.mean(aucs)),
    }


@pytest.fixture(scope="module")
def evaluated(trained_bars):
    model, x, y = trained_bars
    x, y = x[:120], y[:120]
    evaluator = RobustnessEvaluator("cpu", _loader(x, y), model, ATTACKS, EPS, seed=3)
    evaluator.run()
    return model, x, y, evaluator, evaluator.report(model={"name": "tiny"}, data={"name": "bars"})


def test_evaluator_equals_hand_written_loop(evaluated):
    model, x, y, evaluator, report = evaluated
    model.eval()
    with torch.no_grad():
        clean_logits = model(x)
    assert report["clean"]["accuracy"] == pytest.approx(_hand_metrics(clean_logits, y, 3)["accuracy"])
    rows = {(r["attack"], r["eps"]): r for r in report["results"]}
    for eps in EPS:
        correct_all = torch.ones(len(y), dtype=torch.bool)
        for spec in parse_attack_specs(ATTACKS):
            adv_logits, deltas = [], []
            for start in range(0, len(y), 48):  # the evaluator's batches
                xb, yb = x[start : start + 48], y[start : start + 48]
                x_adv = build_attack(spec, model, eps, seed=3).perturb(xb, yb).x_adv
                with torch.no_grad():
                    adv_logits.append(model(x_adv))
                deltas.append((x_adv - xb).flatten(1).double())
            adv_logits, delta = torch.cat(adv_logits), torch.cat(deltas)
            expected = _hand_metrics(adv_logits, y, 3)
            row = rows[(spec.name, eps)]
            for key, value in expected.items():
                assert row["metrics"][key] == pytest.approx(value, abs=1e-9), (spec.name, eps, key)
            correct = adv_logits.argmax(1) == y
            clean_correct = clean_logits.argmax(1) == y
            assert row["success_rate"] == pytest.approx(float((clean_correct & ~correct).sum() / clean_correct.sum()))
            assert row["linf_max"] == pytest.approx(float(delta.abs().amax()))
            assert row["linf_max"] <= (eps if spec.name != "pgd-5-l2" else 1.0) + 1e-9
            assert row["l2_mean"] == pytest.approx(float(delta.norm(dim=1).mean()))
            assert row["samples"] == len(y)
            assert row["queries_per_sample"] > 0 and row["seconds"] > 0
            correct_all &= correct
        worst = rows[("worst-case", eps)]
        assert worst["metrics"]["accuracy"] == pytest.approx(float(correct_all.double().mean()))
        assert worst["metrics"]["accuracy"] <= min(rows[(s, eps)]["metrics"]["accuracy"] for s in ("fgsm", "pgd-20"))
    # the attacks do something on this model: PGD at 12/255 breaks samples
    assert rows[("pgd-20", 12 / 255)]["metrics"]["accuracy"] < report["clean"]["accuracy"]
    assert evaluator.state.metrics["pgd-20@12/255/accuracy"] == rows[("pgd-20", 12 / 255)]["metrics"]["accuracy"]


def test_query_counts(evaluated):
    *_, report = evaluated
    rows = {(r["attack"], r["eps"]): r for r in report["results"]}
    # FGSM: its clean pass is its gradient pass; PGD-20: at most 1 + 20 + a final scoring pass per sample
    assert rows[("fgsm", EPS[0])]["queries_per_sample"] == pytest.approx(1.0)
    assert 2 <= rows[("pgd-20", EPS[1])]["queries_per_sample"] <= 22


def test_report_schema_and_tables(evaluated, tmp_path):
    *_, report = evaluated
    validate_report(report)
    json.dumps(report, allow_nan=False)
    paths = write_reports({"tiny": report, "copy": report}, tmp_path)
    validate_report(json.loads(paths["json:tiny"].read_text()))
    table = markdown_table(report)
    assert "| pgd-20 |" in table and "4/255" in table and "**worst-case**" in table
    lines = csv_table(report).strip().splitlines()
    assert lines[0].startswith("method,attack,eps")
    assert len(lines) == 1 + 5 + len(report["results"]) * 5
    with pytest.raises(jsonschema.ValidationError, match="'1.0'"):
        validate_report({**report, "schema_version": "0.1"})
    with pytest.raises(jsonschema.ValidationError, match="results"):
        validate_report({k: v for k, v in report.items() if k != "results"})


def test_model_state_untouched(trained_bars):
    model, x, y = trained_bars
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    RobustnessEvaluator("cpu", _loader(x[:16], y[:16]), model, ["pgd"], [8 / 255]).run()
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


def test_batch_composition_does_not_matter(trained_bars):
    model, x, y = trained_bars
    reports = []
    for batch_size in (16, 40):
        ev = RobustnessEvaluator("cpu", _loader(x[:40], y[:40], batch_size), model, ["pgd-20", "fgsm"], [12 / 255])
        ev.run()
        reports.append(ev.report())
    for a, b in zip(reports[0]["results"], reports[1]["results"]):
        assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]


def test_transfer_setting(trained_bars):
    target, x, y = trained_bars
    x_train, y_train = x[:200], y[:200]
    torch.manual_seed(1)
    surrogate = train_classifier(TinyClassifier(2, 1, 3, width=6), x_train, y_train, epochs=8, seed=1)
    ev = RobustnessEvaluator("cpu", _loader(x[:64], y[:64]), target, ["pgd-20"], [16 / 255], surrogate=surrogate)
    ev.run()
    report = ev.report()
    assert report["setting"] == "transfer"
    spec = parse_attack_specs(["pgd-20"])[0]
    x_adv = build_attack(spec, surrogate, 16 / 255).perturb(x[:64], y[:64]).x_adv
    with torch.no_grad():
        expected = float((target(x_adv).argmax(1) == y[:64]).double().mean())
    assert report["results"][0]["metrics"]["accuracy"] == pytest.approx(expected)


def test_segmentation_and_multilabel():
    torch.manual_seed(0)
    seg = TinySegmenter(2, 1, 3)
    x = torch.rand(6, 1, 12, 12)
    y = torch.randint(0, 3, (6, 1, 12, 12))
    ev = RobustnessEvaluator(
        "cpu", _loader(x, y, 4), seg, ["fgsm", {"attack": "pgd", "loss": "dice", "steps": 3}], [8 / 255]
    )
    ev.run()
    report = ev.report()
    validate_report(report)
    assert report["task"] == "segmentation" and report["primary_metric"] == "dice"
    from monai.metrics import DiceMetric

    seg.eval()
    with torch.no_grad():
        pred = seg(x).argmax(1)
    onehot = lambda t: torch.nn.functional.one_hot(t, 3).movedim(-1, 1).float()  # noqa: E731
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(onehot(pred), onehot(y[:, 0]))
    assert report["clean"]["dice"] == pytest.approx(float(dice[~torch.isnan(dice)].mean()))
    worst = [r for r in report["results"] if r["attack"] == "worst-case"][0]
    assert worst["metrics"]["dice"] <= min(r["metrics"]["dice"] for r in report["results"]) + 1e-12

    torch.manual_seed(0)
    multi = TinyClassifier(2, 1, 4)
    labels = torch.randint(0, 2, (10, 4)).float()
    ev = RobustnessEvaluator("cpu", _loader(torch.rand(10, 1, 16, 16), labels, 5), multi, ["pgd"], [8 / 255])
    ev.run()
    report = ev.report()
    validate_report(report)
    assert report["task"] == "multilabel" and set(report["clean"]) >= {"accuracy", "auc", "f1"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"eps": []}, ValueError, "eps"),
        ({"eps": 0.1}, ValueError, "eps"),
        ({"eps": [0.1, 0.1]}, ValueError, "two budgets shown as '0.1'"),
        ({"eps": [1 / 255, 1 / 255 + 1e-12]}, ValueError, "two budgets shown as '1/255'"),
        ({"eps": [1 / 255, 0.0039215687]}, ValueError, "overwrite each other"),
        ({"eps": [-0.1]}, ValueError, "eps"),
        ({"attacks": []}, ValueError, "attacks"),
        ({"attacks": ["nope"]}, ValueError, "Unknown attack 'nope'"),
        ({"attacks": ["pgd", "pgd"]}, ValueError, "distinct"),
        ({"attacks": [{"name": "x"}]}, ValueError, '"attack" key'),
        ({"attacks": [{"attack": "pgd", "bogus": 1}]}, TypeError, "bogus"),
        ({"task": "detection"}, ValueError, "task"),
        ({"norm": "L1"}, ValueError, "norm"),
        ({"surrogate": 3}, TypeError, "surrogate"),
        ({"keep_examples": -1}, ValueError, "keep_examples"),
    ],
)
def test_bad_input(trained_bars, kwargs, error, match):
    model, x, y = trained_bars
    args = {"attacks": ["fgsm"], "eps": [0.01], **kwargs}
    with pytest.raises(error, match=match):
        RobustnessEvaluator("cpu", _loader(x[:4], y[:4]), model, **args)


def test_report_before_run(trained_bars):
    model, x, y = trained_bars
    with pytest.raises(RuntimeError, match="run"):
        RobustnessEvaluator("cpu", _loader(x[:4], y[:4]), model, ["fgsm"], [0.01]).report()


def test_nan_logits_are_an_error_not_a_score():
    net = TinyClassifier(2, 1, 3).eval()
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match="NaN or Inf logits on the clean input for 8 of 8"):
        RobustnessEvaluator("cpu", _loader(x, y), net, ["fgsm"], [0.01]).run()


def test_logits_that_turn_nan_under_attack_are_an_error():
    net = TinyClassifier(2, 1, 3).eval()

    def model(v):  # finite on clean inputs, NaN once an image changes
        logits = net(v)
        return logits if bool(v.eq(x[: v.shape[0]]).all()) else logits * float("nan")

    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match="NaN or Inf logits"):
        RobustnessEvaluator("cpu", _loader(x, y, 8), model, ["fgsm"], [0.01]).run()


def test_evaluator_scores_in_eval_mode_without_flipping_the_networks_flags():
    net = TinyClassifier(2, 1, 3).train()
    seen = []
    net.register_forward_pre_hook(lambda module, inputs: seen.append((module.training, net.training)))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    RobustnessEvaluator("cpu", _loader(x, y, 8), net, ["fgsm"], [0.01]).run()
    assert seen and all(not called and original for called, original in seen)


class _ClaimsSuccess:
    """Wraps an attack and reports success on every sample, whatever the examples do."""

    def __init__(self, attack):
        self.attack = attack

    def perturb(self, x, y, mask=None, target=None):
        result = self.attack.perturb(x, y, mask=mask)
        return dataclasses.replace(result, success=torch.ones_like(result.clean_success))


def _claiming_evaluator(model, x, y, **kwargs):
    ev = RobustnessEvaluator("cpu", _loader(x, y), model, ["pgd"], [1 / 255], task="classification", **kwargs)
    ev._attacks = {key: _ClaimsSuccess(attack) for key, attack in ev._attacks.items()}
    ev.run()
    return ev.report()["results"][0]


def test_success_rate_is_the_attacks_own_success_except_in_the_transfer_setting(trained_bars):
    model, x, y = trained_bars
    x, y = x[:32], y[:32]
    # white-box: broken = clean-correct samples the attack says it fooled (here all of them)
    row = _claiming_evaluator(model, x, y)
    assert row["success_rate"] == 1.0 and row["metrics"]["accuracy"] > 0.5
    # transfer: the result's success is the surrogate's; the rate is read from the target's predictions
    row = _claiming_evaluator(model, x, y, surrogate=model)
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    assert row["success_rate"] == pytest.approx(1 - row["metrics"]["accuracy"] / float(clean_correct.double().mean()))
    assert row["success_rate"] < 0.5


def test_segmentation_attacks_get_the_evaluators_success_ratio():
    torch.manual_seed(0)
    seg = TinySegmenter(2, 1, 2)
    x, y = torch.rand(4, 1, 12, 12), torch.randint(0, 2, (4, 1, 12, 12))
    ev = RobustnessEvaluator("cpu", _loader(x, y, 4), seg, ["fgsm", "pgd"], [8 / 255], seg_success_ratio=0.9)
    ev.run()
    assert {attack.seg_success_ratio for attack in ev._attacks.values()} == {0.9}
    assert all(r["success_rate"] is not None for r in ev.report()["results"])


class _NeedsScale(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.scales = net, []

    def forward(self, x, scale):
        self.scales.append(float(scale))
        return self.net(x) * scale


def test_extra_arguments_of_prepare_batch_reach_the_network_in_the_attacks(trained_bars):
    from monai.engines.utils import default_prepare_batch

    model, x, y = trained_bars

    def prepare(batchdata, device=None, non_blocking=False, **kwargs):
        return (*default_prepare_batch(batchdata, device, non_blocking, **kwargs), (), {"scale": 1.0})

    net = _NeedsScale(model)
    ev = RobustnessEvaluator("cpu", _loader(x[:16], y[:16]), net, ["pgd"], [8 / 255], prepare_batch=prepare)
    ev.run()
    assert len(net.scales) > 2 and set(net.scales) == {1.0}
    plain = RobustnessEvaluator("cpu", _loader(x[:16], y[:16]), model, ["pgd"], [8 / 255])
    plain.run()  # the same network and attack as without the extra argument
    assert ev.report()["results"][0]["metrics"]["accuracy"] == plain.report()["results"][0]["metrics"]["accuracy"]


def test_autoattack_by_name_and_sanity_checks_once_per_run(trained_bars):
    model, x, y = trained_bars
    suite = [{"attack": "autoattack", "name": "aa", "steps": 2, "queries": 5}, "fgsm"]
    evaluator = RobustnessEvaluator(
        "cpu", _loader(x[:24], y[:24], batch_size=8), Noisy(model, sigma=0.02), suite, EPS, seed=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluator.run()
    randomized = [w for w in caught if "randomized" in str(w.message)]
    assert len(randomized) == 1  # 3 batches x 2 budgets x 2 attacks: checked once
    report = evaluator.report()
    validate_report(report)
    assert any("randomized" in note for note in report["notes"])
    assert {r["attack"] for r in report["results"]} == {"aa", "fgsm", "worst-case"}
    quiet = RobustnessEvaluator("cpu", _loader(x[:8], y[:8]), model, ["fgsm"], EPS, check=False)
    quiet.run()
    assert quiet.report()["notes"] == []
