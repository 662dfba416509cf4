# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The adaptive attack on a classifier guarded by a detector, and the "classify or reject" evaluation.

A detector evaluated only against attacks that ignore it looks strong; the attacks that know it (Carlini & Wagner,
"Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection Methods", AISec 2017; Tramer et al., "On
Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020) misclassify while keeping the detector's score
under its threshold. :class:`DetectorAwarePGD` and :class:`DetectorAwareAPGD` ascend

    ``loss(x) = classifier_loss(f(x), y) - lam * relu(score(x) - threshold)``

and count a sample as fooled only when it is misclassified and not detected. They are
:class:`~monai_adv.attacks.PGD` and :class:`~monai_adv.attacks.APGD` run on a model that returns the classifier's
logits with one more column, the detector's margin ``score - threshold``, so they keep the attack contract (budget,
value range, mask, per-sample seeding, the network left as found). :func:`evaluate_detection` reports, per attack,
the detection AUROC and the robust accuracy of the bare classifier and of "classify or reject", and which attack's
numbers to quote (the adaptive one).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from monai_adv.attacks.apgd import APGD
from monai_adv.attacks.base import Attack, AttackResult, AttackState
from monai_adv.attacks.guard import model_dtype, model_state_guard
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.pgd import PGD
from monai_adv.attacks.validation import as_tensor_labels, check_input, check_positive
from monai_adv.defenses.detection_metrics import detection_metrics
from monai_adv.defenses.detectors import Detector, _unwrap

__all__ = [
    "DetectorAwareAPGD",
    "DetectorAwareObjective",
    "DetectorAwarePGD",
    "ScoredClassifier",
    "evaluate_detection",
]

#: the classifier losses the detector-aware attacks combine with the detector's penalty
CLASSIFIER_LOSSES = ("ce", "cw")
#: the weights of the detector's penalty the detector-aware attacks try by default, in order
DEFAULT_LAMS = (0.1, 1.0, 10.0)


class ScoredClassifier(nn.Module):
    """The classifier's logits (N, K) with one more column, the detector's margin ``score - threshold`` (N, 1),
    in float64: a sample is detected exactly when its last column is positive.

    The score is the detector's differentiable surrogate (``surrogate=True``: a non-differentiable squeezer passes
    the gradient as the identity). When the detector reads the classifier itself, one forward pass gives both.

    Args:
        network: the classifier (an ``nn.Module`` is registered, so an attack's guard runs it in eval mode).
        detector: a fitted :class:`~monai_adv.defenses.detectors.Detector`.
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], detector: Detector) -> None:
        super().__init__()
        if not isinstance(detector, Detector):
            raise TypeError(f"`detector` must be a monai_adv Detector, got {type(detector).__name__}.")
        if not callable(network):
            raise TypeError(f"`network` must be an nn.Module or a callable, got {type(network).__name__}.")
        self.network = network
        self.detector = detector
        self.shared = _unwrap(network) is _unwrap(detector.network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold = self.detector.threshold
        if threshold is None:
            raise RuntimeError(f"{type(self.detector).__name__} is not fitted: call `fit` on clean data first.")
        if self.shared:
            logits, score = self.detector.logits_and_score(x, surrogate=True, network=self.network)
        else:
            logits = self.network(x)
            x_detector = x.to(model_dtype(self.detector.network) or x.dtype)
            score = self.detector.logits_and_score(x_detector, surrogate=True)[1]
        margin = (score - threshold).double()
        return torch.cat([logits.as_subclass(torch.Tensor).double(), margin[:, None]], dim=1)


class DetectorAwareObjective(Objective):
    """The objective on :class:`ScoredClassifier` outputs.

    Loss: the classifier loss on the logits ``[:, :-1]`` minus ``lam * relu(margin)``, the detector's margin
    ``[:, -1]`` above 0. Success: the classifier's goal (misclassified, or the target reached) and not detected
    (the margin at most 0).
    """

    #: the weight of the detector's penalty (:meth:`with_lam` gives a copy with another weight)
    lam = 1.0

    def loss(self, logits: torch.Tensor, idx) -> torch.Tensor:
        return super().loss(logits[:, :-1], idx) - self.lam * torch.relu(logits[:, -1])

    def success(self, logits: torch.Tensor, idx) -> torch.Tensor:
        return super().success(logits[:, :-1], idx) & (logits[:, -1] <= 0)

    def with_lam(self, lam: float) -> DetectorAwareObjective:
        """A copy of this objective whose penalty has the weight ``lam``."""
        other = copy.copy(self)
        other.lam = float(lam)
        return other


def _check_lams(lam: Union[float, Sequence[float]]) -> Tuple[float, ...]:
    lams = (lam,) if isinstance(lam, (int, float)) else tuple(lam) if isinstance(lam, Sequence) else None
    if not lams:
        raise ValueError(f"`lam` must be a positive number or a non-empty sequence of them, got {lam!r}.")
    return tuple(check_positive(value, "lam") for value in lams)


class _DetectorAware:
    """What both detector-aware attacks share: the scored model, the objective and the runs over the weights."""

    fixed_arguments = ("objective", "task")
    tasks = ("classification",)

    def _detector_setup(self, model: Callable, detector: Detector, lam, loss: str, kwargs: Dict[str, Any]):
        if isinstance(kwargs.get("targeted"), str):
            raise ValueError(
                '`targeted`: the detector-aware attacks take False or True (with `target=`), not "least_likely" '
                'or "random".'
            )
        if loss not in CLASSIFIER_LOSSES:
            raise ValueError(f"`loss` must be one of {CLASSIFIER_LOSSES}, got {loss!r}.")
        self.network = model
        self.detector = detector
        self.lam = _check_lams(lam)
        kwargs = {**kwargs, "loss": loss, "task": "classification", "objective": DetectorAwareObjective}
        return ScoredClassifier(model, detector), kwargs

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, lam={self.lam})"

    def with_model(self, model: Callable[[torch.Tensor], torch.Tensor]) -> Attack:
        """A copy of this attack on another classifier, with the same detector."""
        other = copy.copy(self)
        other.network = model
        other.model = ScoredClassifier(model, self.detector)
        return other

    def _attack(self, *args: Any, **kwargs: Any):
        if self.detector.threshold is None:
            raise RuntimeError(f"{type(self.detector).__name__} is not fitted: call `fit` on clean data first.")
        return super()._attack(*args, **kwargs)

    def _perturb(self, state: AttackState) -> AttackResult:
        """One run of the attack per weight ``lam``, each on the samples the previous ones did not fool (with
        ``early_stop``); a sample keeps the point of the first run that fooled it, else the last run's."""
        objective, clean_success = state.objective, state.clean_success
        x_adv = success = loss = None
        everyone = torch.arange(state.x.shape[0], device=state.x.device)
        try:
            for lam in self.lam:
                state.objective = objective.with_lam(lam)
                if success is not None:
                    state.clean_success = success if clean_success is None else clean_success | success
                part = super()._perturb(state)
                part_success, part_loss = part.success, part.loss
                if part_success is None:  # the last iterate was not evaluated: evaluate it
                    part_loss, part_success = self.query(state, part.x_adv, everyone)
                if x_adv is None:
                    x_adv, success, loss = part.x_adv, part_success, part_loss
                    continue
                keep = success.view(-1, *([1] * (x_adv.ndim - 1)))
                x_adv = torch.where(keep, x_adv, part.x_adv)
                loss = torch.where(success, loss.to(part_loss.dtype), part_loss)
                success = success | part_success
        finally:
            state.objective, state.clean_success = objective, clean_success
        return state.result(x_adv, success, loss)


class DetectorAwarePGD(_DetectorAware, PGD):
    """PGD against a classifier guarded by a detector (Carlini & Wagner 2017; Tramer et al. 2020).

    Ascends ``classifier_loss - lam * relu(score - threshold)`` with the detector's differentiable surrogate
    score (the identity through feature squeezers), once per weight in ``lam`` (as Carlini & Wagner search their
    constant), each run on the samples not yet fooled. A sample succeeds when it is misclassified and its score is
    at most the threshold (``result.success`` is this joint goal); it keeps the first such point, else the last
    run's highest-loss point. The "cw" classifier loss (capped at ``kappa``) stops pushing a misclassified sample,
    so only the penalty moves it then. Cost: up to ``len(lam)`` times that of PGD.

    Args:
        model: the classifier (returning logits (N, K)).
        detector: the fitted detector guarding it.
        lam: the weight of the detector's penalty, or a sequence of weights tried in order.
        loss: the classifier loss, "cw" (default) or "ce".
        kwargs: the arguments of :class:`~monai_adv.attacks.PGD` (steps, alpha, random_start, restarts, ...) and of
            :class:`~monai_adv.attacks.Attack` (eps, norm, value_range, targeted: False or True, kappa, seed, ...).

    Example::

        detector = MahalanobisDetector(net).fit(train_loader)
        x_adv = DetectorAwarePGD(net, detector, eps=8 / 255, steps=50)(x, y)
    """

    name = "detector_aware_pgd"

    def __init__(
        self,
        model: Callable,
        detector: Detector,
        lam: Union[float, Sequence[float]] = DEFAULT_LAMS,
        loss: str = "cw",
        **kwargs: Any,
    ) -> None:
        scored, kwargs = self._detector_setup(model, detector, lam, loss, kwargs)
        super().__init__(scored, **kwargs)


class DetectorAwareAPGD(_DetectorAware, APGD):
    """APGD against a classifier guarded by a detector: :class:`DetectorAwarePGD`'s loss, goal and weights with
    APGD's step-size schedule (Croce & Hein 2020).

    Args:
        model: the classifier (returning logits (N, K)).
        detector: the fitted detector guarding it.
        lam: the weight of the detector's penalty, or a sequence of weights tried in order.
        loss: the classifier loss, "cw" (default) or "ce".
        kwargs: the arguments of :class:`~monai_adv.attacks.APGD` and :class:`~monai_adv.attacks.Attack`.
    """

    name = "detector_aware_apgd"

    def __init__(
        self,
        model: Callable,
        detector: Detector,
        lam: Union[float, Sequence[float]] = DEFAULT_LAMS,
        loss: str = "cw",
        **kwargs: Any,
    ) -> None:
        scored, kwargs = self._detector_setup(model, detector, lam, loss, kwargs)
        super().__init__(scored, **kwargs)


#: the attacks :func:`evaluate_detection` builds by name: (class, whether it knows the detector)
EVALUATION_ATTACKS = {
    "pgd": (PGD, False),
    "apgd": (APGD, False),
    "adaptive": (DetectorAwareAPGD, True),
    "adaptive_pgd": (DetectorAwarePGD, True),
}


def _build(spec: Union[str, Attack], network, detector, eps, steps, lam, value_range, seed) -> Attack:
    if isinstance(spec, Attack):
        return spec
    if spec not in EVALUATION_ATTACKS:
        raise ValueError(
            f"`attacks` values must be Attack instances or names {sorted(EVALUATION_ATTACKS)}, got {spec!r}."
        )
    cls, adaptive = EVALUATION_ATTACKS[spec]
    common = {"eps": eps, "steps": steps, "value_range": value_range, "seed": seed}
    if adaptive:
        return cls(network, detector, lam=lam, **common)
    return cls(network, loss="ce", **common)


def _rate(flags: torch.Tensor) -> float:
    return float(flags.double().mean()) if flags.numel() else float("nan")


def evaluate_detection(
    network: Callable[[torch.Tensor], torch.Tensor],
    detector: Detector,
    x: torch.Tensor,
    y: Any,
    attacks: Optional[Mapping[str, Union[str, Attack]]] = None,
    eps: float = 8 / 255,
    steps: int = 50,
    lam: Union[float, Sequence[float]] = DEFAULT_LAMS,
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    seed: Optional[int] = 0,
    mask: Any = None,
    max_batch: Optional[int] = None,
) -> Dict[str, Any]:
    """Evaluate a classifier guarded by a fitted detector as "classify or reject", against attacks that ignore the
    detector and attacks that know it.

    A sample is handled when its adversarial input is classified correctly or detected (rejected). Only the
    adaptive attacks measure the defense (Carlini & Wagner 2017; Tramer et al. 2020): ``"quote"`` is "worst_case", each
    sample's worst outcome over all the attacks, detector-aware ones included, the number to report (None when no
    attack knows the detector).

    Args:
        network: the classifier (returning logits (N, K)).
        detector: the fitted detector.
        x: clean images (N, C, *spatial).
        y: class indices (N,).
        attacks: name -> an :class:`~monai_adv.attacks.Attack` (adaptive when it is a detector-aware attack) or
            one of the names "pgd", "apgd" (on the classifier, CE loss), "adaptive" (:class:`DetectorAwareAPGD`),
            "adaptive_pgd" (:class:`DetectorAwarePGD`), built with ``eps``, ``steps``, ``lam``, ``value_range``
            and ``seed``. Default ``{"pgd": "pgd", "adaptive": "adaptive"}``.
        eps: the L-inf budget of the attacks built by name.
        steps: their iterations.
        lam: the detector penalty's weight(s) of the adaptive attacks built by name.
        value_range: the images' range.
        seed: the attacks' seed.
        mask: optional region of interest the attacks perturb (see :meth:`~monai_adv.attacks.Attack.perturb`).
        max_batch: attack and score at most this many images at a time (None: all of ``x`` at once), to bound the
            memory of a large set; the attacks seed each sample by its content, so the results do not depend on it.

    Returns:
        ``{"clean": {...}, "attacks": {name: {...}}, "worst_case": {...}, "quote": "worst_case" or None,
        "notes": [...]}``:

        - ``clean``: ``n``, ``accuracy``, ``false_rejection_rate`` (clean inputs the detector flags) and
          ``accepted_accuracy`` (correct and not rejected);
        - per attack: ``adaptive``; ``auroc`` and ``tpr_at_5_fpr`` of the scores of the adversarial inputs against
          the clean ones (:func:`~monai_adv.defenses.detection_metrics.detection_metrics`), and the same over the
          samples the attack turned from correct to misclassified (``auroc_successful``, ``tpr_at_5_fpr_successful``,
          ``successful``: their number; None when there is none); ``detection_rate`` (adversarial inputs flagged at
          the detector's threshold); ``robust_accuracy`` (the bare classifier); ``classify_or_reject_accuracy``;
          ``evasion_rate`` (misclassified and not detected);
        - ``worst_case``: per sample over all attacks (handled only if handled under every attack).
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"`detector` must be a monai_adv Detector, got {type(detector).__name__}.")
    if detector.threshold is None:
        raise RuntimeError(f"{type(detector).__name__} is not fitted: call `fit` on clean data first.")
    x = check_input(x, None)
    labels = as_tensor_labels(y, "y", x.device).reshape(-1).long()
    if labels.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"`y` must hold one class index per image of `x` ({x.shape[0]}), got {tuple(labels.shape)}.")
    attacks = {"pgd": "pgd", "adaptive": "adaptive"} if attacks is None else dict(attacks)
    if not attacks:
        raise ValueError("`attacks` must name at least one attack.")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"`max_batch` must be a positive integer or None, got {max_batch!r}.")
    built = {
        name: _build(spec, network, detector, eps, steps, lam, value_range, seed) for name, spec in attacks.items()
    }
    n = x.shape[0]
    parts = [slice(i, min(n, i + (max_batch or n))) for i in range(0, n, max_batch or n)]

    def part_of(value: Any, rows: slice) -> Any:  # a per-sample mask is cut with the images; others broadcast
        per_sample = isinstance(value, torch.Tensor) and value.ndim == x.ndim and value.shape[0] == n
        return value[rows] if per_sample else value

    shared = _unwrap(network) is _unwrap(detector.network)

    def outcome(images: torch.Tensor):
        correct, scores = [], []
        for rows in parts:
            with torch.no_grad():
                logits, score = detector.logits_and_score(detector._prepare(images[rows]))
                if not shared:
                    logits = _logits(network, images[rows])
            correct.append(logits.argmax(dim=1) == labels[rows])
            scores.append(score)
        score = torch.cat(scores)
        return torch.cat(correct), score.cpu(), (score > detector.threshold)

    correct, clean_scores, rejected = outcome(x)
    result: Dict[str, Any] = {
        "clean": {
            "n": int(x.shape[0]),
            "accuracy": _rate(correct),
            "false_rejection_rate": _rate(rejected),
            "accepted_accuracy": _rate(correct & ~rejected),
        },
        "attacks": {},
    }
    handled_all = torch.ones_like(correct)
    correct_all = correct.clone()
    for name, attack in built.items():
        x_adv = torch.cat([attack(x[rows], labels[rows], mask=part_of(mask, rows)) for rows in parts])
        adv_correct, adv_scores, flagged = outcome(x_adv)
        handled = adv_correct | flagged
        handled_all &= handled
        correct_all &= adv_correct
        row: Dict[str, Any] = {"adaptive": isinstance(attack, _DetectorAware)}
        row.update(detection_metrics(clean_scores, adv_scores))
        successful = (correct & ~adv_correct).cpu()
        row["successful"] = int(successful.sum())
        if row["successful"]:
            metrics = detection_metrics(clean_scores, adv_scores[successful])
            row.update({f"{key}_successful": value for key, value in metrics.items()})
        else:
            row.update({"auroc_successful": None, "tpr_at_5_fpr_successful": None})
        row.update(
            {
                "detection_rate": _rate(flagged),
                "robust_accuracy": _rate(adv_correct),
                "classify_or_reject_accuracy": _rate(handled),
                "evasion_rate": _rate(~adv_correct & ~flagged),
            }
        )
        result["attacks"][name] = row
    result["worst_case"] = {"robust_accuracy": _rate(correct_all), "classify_or_reject_accuracy": _rate(handled_all)}
    adaptive = {n: r["classify_or_reject_accuracy"] for n, r in result["attacks"].items() if r["adaptive"]}
    # the number to quote: each sample's worst case over every attack, adaptive ones included (at most the lowest
    # adaptive attack's); None without an adaptive attack (the numbers then overestimate the defense)
    result["quote"] = "worst_case" if adaptive else None
    result["notes"] = (
        []
        if adaptive
        else [
            "No attack knows the detector: these numbers overestimate the defense; add an adaptive attack "
            '(e.g. attacks={"adaptive": "adaptive"}) and quote it.'
        ]
    )
    return result


def _logits(network: Callable, x: torch.Tensor) -> torch.Tensor:
    with model_state_guard(network) as net:
        out = net(x.as_subclass(torch.Tensor).to(model_dtype(network) or x.dtype))
    return out.as_subclass(torch.Tensor)
