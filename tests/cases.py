# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Hypothesis strategies: random attack problems over tasks, spatial dims, norms, budgets, ranges and masks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from tests.models import TinyClassifier, TinySegmenter

SPATIAL = {1: (16,), 2: (8, 8), 3: (6, 6, 6)}
TASKS = ("classification", "binary", "multilabel", "segmentation", "segmentation_binary")
LOSSES = {
    "classification": ("ce", "cw", "dlr", "kl"),
    "binary": ("ce", "cw", "kl"),
    "multilabel": ("ce", "cw"),
    "segmentation": ("ce", "cw", "dice"),
    "segmentation_binary": ("ce", "cw", "dice"),
}


@dataclass
class Problem:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    mask: Optional[torch.Tensor]
    attack: str
    kwargs: Dict[str, Any]
    value_range: Optional[Tuple[float, float]]


def build_model(task: str, dims: int, channels: int) -> Tuple[nn.Module, int]:
    if task == "classification":
        return TinyClassifier(dims, channels, 3), 3
    if task == "binary":
        return TinyClassifier(dims, channels, 1), 1
    if task == "multilabel":
        return TinyClassifier(dims, channels, 4), 4
    k = 3 if task == "segmentation" else 1
    return TinySegmenter(dims, channels, k), k


def make_labels(task: str, n: int, k: int, spatial: Tuple[int, ...], g: torch.Generator, one_hot: bool) -> torch.Tensor:
    if task == "classification":
        return torch.randint(0, k, (n,), generator=g)
    if task == "binary":
        return torch.randint(0, 2, (n,), generator=g)
    if task == "multilabel":
        return torch.randint(0, 2, (n, k), generator=g).float()
    labels = torch.randint(0, max(k, 2), (n, 1, *spatial), generator=g)
    if one_hot and k > 1:
        return F.one_hot(labels[:, 0], k).movedim(-1, 1).float()
    return labels


@st.composite
def problems(
    draw,
    dtype: torch.dtype = torch.float32,
    attacks=("fgsm", "pgd", "cw", "apgd", "apgd_t", "fab_t", "square", "simba", "autoattack", "transfer", "sea", "fmn"),
) -> Problem:
    dims = draw(st.integers(1, 3))
    attack = draw(st.sampled_from(attacks))
    # APGD-T, FAB-T and FMN are defined for classification only, the segmentation ensemble for segmentation only
    only = {"apgd_t": TASKS[:2], "fab_t": TASKS[:2], "fmn": TASKS[:2], "sea": ("segmentation", "segmentation_binary")}
    task = draw(st.sampled_from(only.get(attack, TASKS)))
    norm = draw(st.sampled_from(["Linf", "L2"]))
    eps = draw(st.one_of(st.just(0.0), st.floats(1e-3, 0.5)))
    value_range = draw(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), None]))
    channels = draw(st.integers(1, 2))
    n = draw(st.integers(1, 3))
    use_mask = draw(st.booleans())
    train_mode = draw(st.booleans())
    data_seed = draw(st.integers(0, 10_000))
    seed = draw(st.integers(0, 2**31 - 1))
    spatial = SPATIAL[dims]

    torch.manual_seed(data_seed)
    model, k = build_model(task, dims, channels)
    model = model.to(dtype).train(train_mode)
    g = torch.Generator().manual_seed(data_seed)
    if value_range is None:
        x = 40.0 * torch.randn(n, channels, *spatial, generator=g)  # unbounded, e.g. CT-like intensities
    else:
        lo, hi = value_range
        x = lo + (hi - lo) * torch.rand(n, channels, *spatial, generator=g)
    x = x.to(dtype)
    y = make_labels(task, n, k, spatial, g, one_hot=draw(st.booleans()))
    mask = None
    if use_mask:
        shape = draw(st.sampled_from([(n, 1, *spatial), (1, 1, *spatial), (n, channels, *spatial), (1, *spatial)]))
        mask = (torch.rand(shape, generator=g) > 0.5).float()

    kwargs: Dict[str, Any] = {"eps": eps, "norm": norm, "value_range": value_range, "seed": seed}
    if attack == "autoattack":  # the composites: small settings of their parts
        kwargs.update(version="standard", steps=draw(st.integers(1, 3)))
        kwargs.update(queries=draw(st.integers(2, 10)), target_classes=draw(st.integers(1, 3)), check=False)
        return Problem(model, x, y, mask, attack, kwargs, value_range)
    if attack == "sea":  # small settings: every loss, a few steps over the radius schedule
        kwargs.update(steps=draw(st.integers(1, 4)), restarts=draw(st.integers(1, 2)))
        return Problem(model, x, y, mask, attack, kwargs, value_range)
    if attack == "transfer":
        surrogate, _ = build_model(task, dims, channels)  # another network of the same shape, a real transfer
        source = draw(st.sampled_from(["pgd", "fgsm"]))
        kwargs.update(surrogate=surrogate.to(dtype).eval(), source=source, loss=draw(st.sampled_from(LOSSES[task])))
        kwargs["source_kwargs"] = {"steps": draw(st.integers(1, 3))} if source == "pgd" else {}
        return Problem(model, x, y, mask, attack, kwargs, value_range)
    if attack not in ("cw", "fab_t", "fmn"):
        kwargs["loss"] = draw(st.sampled_from(LOSSES[task]))
    if attack == "simba":
        kwargs["basis"] = draw(st.sampled_from(["dct", "pixel"]))
        kwargs["freq_dims"] = draw(st.integers(1, 4))
    if attack in ("square", "simba"):
        kwargs["queries"] = draw(st.integers(1 if attack == "simba" else 2, 40))
        kwargs["early_stop"] = draw(st.booleans())
    elif attack == "fab_t":
        kwargs["steps"] = draw(st.integers(1, 8))
        kwargs["restarts"] = draw(st.integers(1, 2))
        kwargs["target_classes"] = draw(st.integers(1, 3))
        kwargs["early_stop"] = draw(st.booleans())
    elif attack == "fmn":
        kwargs["steps"] = draw(st.integers(1, 8))
        kwargs["early_stop"] = draw(st.booleans())
        kwargs["targeted"] = draw(st.sampled_from([False, "least_likely", "random"]))
        kwargs["target_classes"] = draw(st.integers(1, 3)) if kwargs["targeted"] is False else 1
    elif attack != "fgsm":
        kwargs["steps"] = draw(st.integers(1, 3) if attack in ("pgd", "cw") else st.integers(1, 12))
        kwargs["early_stop"] = draw(st.booleans())
    if attack in ("pgd", "apgd", "apgd_t"):
        kwargs["restarts"] = draw(st.integers(1, 2))
    if attack in ("fgsm", "pgd", "cw"):
        kwargs["best_iterate"] = draw(st.booleans())
        kwargs["random_start"] = attack == "pgd" or draw(st.booleans())
    if attack == "apgd_t":
        kwargs["target_classes"] = draw(st.integers(1, 3))
    return Problem(model, x, y, mask, attack, kwargs, value_range)


def snapshot(model: nn.Module) -> Dict[str, Any]:
    """Everything an attack must leave untouched: state, training flags, requires_grad flags and .grad fields."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def same_snapshot(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    if a["training"] != b["training"] or a["requires_grad"] != b["requires_grad"]:
        return False
    if a["state"].keys() != b["state"].keys():
        return False
    if not all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"]):
        return False
    return all(
        (g1 is None and g2 is None) or (g1 is not None and g2 is not None and torch.equal(g1, g2))
        for g1, g2 in zip(a["grad"], b["grad"])
    )


def comparable_report(report: Dict[str, Any]) -> Dict[str, Any]:
    """A robustness report without what differs between two runs of the same evaluation: when and how it was made
    (time, command line, process) and the wall times."""
    report = json.loads(json.dumps(report))
    report.pop("created")
    report.pop("provenance", None)
    report["clean"].pop("seconds")
    for row in report["results"] + report.get("patches", []) + report.get("corruptions", {}).get("results", []):
        row.pop("seconds")
    for entry in report.get("fitted", []):
        entry.pop("seconds")
    return report


def evaluated_run_folder(model: nn.Module, x: torch.Tensor, y: torch.Tensor, folder, name: str, attacks, eps, **info):
    """A real evaluation of ``model`` on ``(x, y)`` written as a run folder: its JSON report, tables, robustness
    curves and adversarial-example figure (what ``report.html`` is made from). Returns the report."""
    from monai.data import DataLoader

    from monai_adv.benchmark.report import write_reports
    from monai_adv.engines import RobustnessEvaluator
    from monai_adv.visualize import plot_adversarial_examples, plot_robustness_curves

    evaluator = RobustnessEvaluator(
        "cpu", DataLoader(list(zip(x, y)), batch_size=32), model, attacks, eps, keep_examples=4
    )
    evaluator.run()
    report = evaluator.report(model={"name": name}, **info)
    write_reports({name: report}, folder)
    plot_robustness_curves({name: report}, folder / "robustness_curves.png")
    examples = evaluator.state.examples
    plot_adversarial_examples(examples["image"], examples["adversarial_image"], folder / "adversarial_examples.png")
    return report
