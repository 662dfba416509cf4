# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``monai-adv evaluate --purifier / --detector``: a model defended by input purification or by a detector,
evaluated by the non-adaptive attack such defenses are usually reported with and by the adaptive attack to quote."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from monai_adv.apps.arguments import CommandError
from monai_adv.budgets import eps_label
from monai_adv.defenses import (
    FeatureSqueezingDetector,
    MahalanobisDetector,
    Purified,
    evaluate_detection,
    make_purifier,
)
from monai_adv.defenses.purification import purification_attack_models
from monai_adv.engines.robustness_results import WORST_CASE

__all__ = ["DETECTORS", "purified_network", "purification_section", "detection_section", "worst_of_both"]

#: the detectors ``--detector`` names
DETECTORS = {"mahalanobis": MahalanobisDetector, "feature_squeezing": FeatureSqueezingDetector}


def _build(cls: Any, what: str, name: str, kwargs: Mapping[str, Any], **defaults: Any) -> Any:
    """``cls(**defaults, **kwargs)`` with the defaults it takes; a bad keyword is a one-line command error."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    try:
        return cls(**{k: v for k, v in defaults.items() if k in accepted}, **kwargs)
    except (TypeError, ValueError) as e:
        raise CommandError(f"{what} {name}: {e}") from None


def purified_network(network: torch.nn.Module, name: str, kwargs: Mapping[str, Any], value_range, seed: int):
    """The network behind the purifier ``name`` (``--purifier name:k=v``) and its two crafting models."""
    if name == "denoiser":
        raise CommandError(
            "--purifier denoiser: a learned denoiser needs training; use the Python API (train_denoiser)"
        )
    try:
        purifier = make_purifier(name, **_with_defaults(name, kwargs, value_range, seed))
    except (TypeError, ValueError) as e:
        raise CommandError(f"--purifier {name}: {e}") from None
    purifier = purifier.to(next(network.parameters()).device) if any(True for _ in network.parameters()) else purifier
    purified = Purified(network, purifier)
    return purified, purification_attack_models(purified)


def _with_defaults(name: str, kwargs: Mapping[str, Any], value_range, seed: int) -> Dict[str, Any]:
    from monai_adv.defenses.purifiers import purifier_class

    try:
        accepted = set(inspect.signature(purifier_class(name).__init__).parameters)
    except ValueError as e:
        raise CommandError(f"--purifier: {e}") from None
    defaults = {"value_range": value_range, "seed": seed}
    return {**{k: v for k, v in defaults.items() if k in accepted and k not in kwargs}, **kwargs}


def worst_of_both(non_adaptive: Any, adaptive: Any, value_range) -> List[Dict[str, Any]]:
    """Per budget, the accuracy of each sample's worst outcome over both runs (robust only if right under the
    non-adaptive and the adaptive attacks), from the per-sample rows of the two evaluations' results."""
    rows = []
    for eps in adaptive.eps_values:
        correct = []
        for results in (non_adaptive, adaptive):
            key = (WORST_CASE, eps) if (WORST_CASE, eps) in results.cells else (results.attack_names[0], eps)
            cell = results.cells[key].rows()
            correct.append((cell["index"], cell["correct"].bool()))
        if not torch.equal(correct[0][0], correct[1][0]):
            raise RuntimeError("the non-adaptive and the adaptive evaluations scored different samples")
        both = correct[0][1] & correct[1][1]
        rows.append({"eps": eps, "eps_label": eps_label(eps, value_range), "accuracy": float(both.float().mean())})
    return rows


def purification_section(
    name: str,
    kwargs: Mapping[str, Any],
    models: Mapping[str, Any],
    non_adaptive: Mapping[str, Any],
    worst_case: Sequence[Mapping[str, Any]],
) -> Dict[str, Any]:
    """The report's ``defense`` section: what the purifier is, which models crafted the examples, the non-adaptive
    run's rows next to the report's own (adaptive) ones, and per budget the worst case of both, to quote."""
    return {
        "kind": "purification",
        "purifier": name,
        "kwargs": dict(kwargs),
        "quote": "worst_case",
        "worst_case": [dict(row) for row in worst_case],
        "crafting_models": {key: repr(model) for key, model in models.items()},
        "non_adaptive": {"clean": non_adaptive["clean"], "results": non_adaptive["results"]},
        "explanation": (
            "The examples of the report's rows were crafted on the adaptive model (BPDA through a non-differentiable "
            "purifier, EoT over a randomized one) and scored on the purified network; the non-adaptive rows are the "
            "attack such defenses are usually reported with (the purifier's own gradient, or the bare classifier's "
            "examples transferred through the purifier). Quote worst_case: per sample, right under both attacks."
        ),
    }


def detection_section(
    network: torch.nn.Module,
    name: str,
    kwargs: Mapping[str, Any],
    fit_batches: Iterable,
    fit_name: str,
    evaluation: Iterable,
    eps_values: Sequence[float],
    value_range,
    seed: int,
    steps: int = 50,
    max_batch: Optional[int] = None,
) -> Dict[str, Any]:
    """Fit the detector ``name`` on ``fit_batches`` (clean) and evaluate "classify or reject" at every budget with
    the classifier-only PGD and the detector-aware APGD (:func:`~monai_adv.defenses.evaluate_detection`), attacking
    at most ``max_batch`` images at a time."""
    if name not in DETECTORS:
        raise CommandError(f"--detector: expected one of {sorted(DETECTORS)}, got {name!r}")
    detector = _build(DETECTORS[name], "--detector", name, kwargs, network=network, value_range=value_range)
    device = next(network.parameters()).device
    try:
        detector.fit(_on(fit_batches, device))
    except (TypeError, ValueError, KeyError) as e:
        raise CommandError(f"--detector {name}: {e}") from None
    x, y = _gather(evaluation, device)
    budgets: List[Dict[str, Any]] = []
    for eps in eps_values:
        result = evaluate_detection(
            network, detector, x, y, eps=eps, steps=steps, value_range=value_range, seed=seed, max_batch=max_batch
        )
        budgets.append({"eps": eps, "eps_label": eps_label(eps, value_range), **_plain(result)})
    return {
        "kind": "detection",
        "detector": name,
        "kwargs": dict(kwargs),
        "fit_data": fit_name,
        "threshold": float(detector.threshold),
        "fpr": float(detector.fpr),
        "steps": steps,
        "quote": "worst_case",
        "budgets": budgets,
    }


def _on(batches: Iterable, device: torch.device) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.as_tensor(b["image"]).to(device), torch.as_tensor(b["label"]).to(device)) for b in batches]


def _gather(batches: Iterable, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every evaluation sample at once (the detector's AUROC ranks all scores together)."""
    pairs = _on(batches, device)
    return torch.cat([p[0].as_subclass(torch.Tensor) for p in pairs]), torch.cat([p[1].reshape(-1) for p in pairs])


def _plain(value: Any) -> Any:
    """The JSON-ready copy of an evaluation result (tensors dropped or made numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not (isinstance(v, torch.Tensor) and v.numel() > 1)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def detector_fit_note(fit_name: Optional[str]) -> List[str]:
    """The note of a detector fitted on the evaluation data itself."""
    if fit_name is not None:
        return []
    return [
        "The detector was fitted on the evaluation data itself (no validation split for this data): its "
        "threshold is set on the clean images it then judges."
    ]
