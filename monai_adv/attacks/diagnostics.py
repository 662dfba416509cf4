# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Diagnostics of false robustness: per-sample outcomes that say the attacks, not the model, failed.

Gradient masking (Athalye et al. 2018; Tramer et al. 2020) makes gradient attacks fail while the model is not
robust. Its symptoms, checked here on the outcomes an evaluation already has (pure functions returning
plain-language warnings, and per-sample flags where useful):

- gradient-free attacks (Square, SimBA) break samples no gradient attack broke at the same budget
  (:func:`autoattack_notes` from AutoAttack's ``broken_by``, :func:`gradient_masking_notes` from per-attack rows);
- robust accuracy that rises, or does not fall, as the budget grows (:func:`monotonicity_notes`);
- samples left unbroken at a budget that covers the whole value range, where every image is reachable
  (:func:`full_range_notes`; :func:`unbounded_attack_check` runs such an attack on a batch).

:func:`evaluation_notes` runs the checks on the per-sample rows of a
:class:`~monai_adv.engines.RobustnessEvaluator` run (its report's ``notes``). The model-side checks (zero or
saturated gradients, randomness, batch dependence) are :func:`~monai_adv.attacks.sanity.sanity_flags`. What to do
about each warning: :mod:`monai_adv.attacks.adaptive` (BPDA, EoT) and a margin loss (``loss="cw"`` or ``"dlr"``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from monai_adv.attacks.pgd import PGD
from monai_adv.attacks.registry import attack_class

__all__ = [
    "COMPOSITE_ATTACKS",
    "FLAT_MIN_RATIO",
    "GRADIENT_FREE_ATTACKS",
    "MASKING_TOLERANCE",
    "MONOTONICITY_TOLERANCE",
    "attack_kind",
    "autoattack_masking_flags",
    "autoattack_notes",
    "evaluation_notes",
    "full_range_budget",
    "full_range_notes",
    "gradient_free_only",
    "gradient_masking_notes",
    "monotonicity_notes",
    "sample_voxels",
    "unbounded_attack_check",
]

#: attacks that use no gradient (besides the registered subclasses of QueryAttack)
GRADIENT_FREE_ATTACKS = ("square", "simba", "simba_dct", "simba_pixel")
#: attacks that run other attacks (or another model's), and the evaluator's per-sample worst case: neither kind
COMPOSITE_ATTACKS = ("autoattack", "transfer", "worst_case")
#: fraction of the attacked samples that gradient-free attacks alone may break before masking is suspected
MASKING_TOLERANCE = 0.01
#: the change of robust accuracy (absolute) within which it counts as flat, and beyond which a rise counts
MONOTONICITY_TOLERANCE = 0.01
#: the flat check needs the largest budget to be at least this many times the smallest
FLAT_MIN_RATIO = 2.0

EpsLabel = Callable[[float], str]


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def attack_kind(name: str, gradient_free: Sequence[str] = ()) -> str:
    """Whether an attack (a registered name, an AutoAttack chain name such as "apgd-ce", or a class name) is
    "gradient" based, "gradient-free" (Square, SimBA, any registered :class:`~monai_adv.attacks.QueryAttack`, or a
    name in ``gradient_free``) or "composite" (AutoAttack, transfer, the worst case across attacks). Unknown names
    count as gradient attacks, unless they start with "square" or "simba".

    Args:
        name: the attack's name.
        gradient_free: more names to count as gradient-free.
    """
    from monai_adv.attacks.autoattack import AutoAttack
    from monai_adv.attacks.base import QueryAttack
    from monai_adv.attacks.transfer import TransferAttack

    key = _key(name)
    if key in {_key(g) for g in gradient_free} or key in GRADIENT_FREE_ATTACKS:
        return "gradient-free"
    if key in COMPOSITE_ATTACKS:
        return "composite"
    try:
        cls = attack_class(key)
    except ValueError:
        return "gradient-free" if key.startswith(("square", "simba")) else "gradient"
    if issubclass(cls, QueryAttack):
        return "gradient-free"
    if issubclass(cls, (AutoAttack, TransferAttack)):
        return "composite"
    return "gradient"


# ---- gradient-free attacks succeeding where gradient attacks failed -----------------------------------------------
def autoattack_masking_flags(
    broken_by: Sequence[Optional[str]], attacks: Optional[Sequence[str]] = None, gradient_free: Sequence[str] = ()
) -> torch.Tensor:
    """Per sample (bool (N,)): AutoAttack's chain broke it with a gradient-free attack after its gradient attacks
    failed on it (each attack of the chain runs only on the samples the ones before it did not break).

    Args:
        broken_by: ``result.details["broken_by"]``: per sample the attack that broke it, "clean" or None.
        attacks: ``result.details["attacks"]``, the chain in order: a gradient-free attack counts only when a
            gradient attack ran before it. None assumes one did (the built-in chains run Square last).
        gradient_free: more names to count as gradient-free (see :func:`attack_kind`).
    """
    order = None if attacks is None else list(attacks)
    flags = []
    for name in broken_by:
        if name in (None, "clean") or attack_kind(name, gradient_free) != "gradient-free":
            flags.append(False)
        elif order is None:
            flags.append(True)
        else:
            before = order[: order.index(name)] if name in order else []
            flags.append(any(attack_kind(a, gradient_free) == "gradient" for a in before))
    return torch.tensor(flags, dtype=torch.bool)


def autoattack_notes(
    broken_by: Sequence[Optional[str]],
    attacks: Optional[Sequence[str]] = None,
    gradient_free: Sequence[str] = (),
    tolerance: float = MASKING_TOLERANCE,
) -> List[str]:
    """The gradient-masking warning of an AutoAttack result: its gradient-free attacks (Square) broke more than
    ``tolerance`` of the attacked samples (those not already wrong), and at least one, that its gradient attacks
    did not break (see :func:`autoattack_masking_flags`). An empty list when none.

    Args:
        broken_by: ``result.details["broken_by"]``.
        attacks: ``result.details["attacks"]`` (the chain in order), or None.
        gradient_free: more names to count as gradient-free.
        tolerance: the fraction of the attacked samples tolerated (default :data:`MASKING_TOLERANCE`).
    """
    flags = autoattack_masking_flags(broken_by, attacks, gradient_free)
    count = int(flags.sum())
    attacked = sum(1 for name in broken_by if name != "clean")
    if count == 0 or count <= tolerance * attacked:
        return []
    by = sorted({name for name, flag in zip(broken_by, flags.tolist()) if flag})
    gradient = [a for a in (attacks or []) if attack_kind(a, gradient_free) == "gradient"]
    before = f" ({', '.join(gradient)})" if gradient else ""
    return [
        f"Gradient masking suspected: the gradient-free attack(s) {', '.join(by)} broke {count} of {attacked} "
        f"attacked sample(s) that the gradient attacks{before} did not break. {_MASKING_ADVICE}"
    ]


_MASKING_ADVICE = (
    "Gradient attacks are failing on this model, so their robust accuracy is not trustworthy: look for a "
    "non-differentiable step (craft through it with monai_adv.attacks.BPDA), randomness (craft on "
    'monai_adv.attacks.EoT) or saturated logits (attack a margin loss, loss="cw" or "dlr").'
)


def gradient_free_only(
    broken: Mapping[str, torch.Tensor], attacks: Optional[Mapping[str, str]] = None, gradient_free: Sequence[str] = ()
) -> Optional[torch.Tensor]:
    """Per sample (bool (N,)): some gradient-free attack broke it and no gradient attack did, at one budget.

    Args:
        broken: ``{attack label: per-sample broken flags (N,)}`` of the attacks run at that budget, the samples in
            the same order in every entry.
        attacks: ``{label: registered attack name}`` to tell the kinds apart (e.g. ``{"square-5000": "square"}``);
            a label not in it is classified by itself (see :func:`attack_kind`).
        gradient_free: more names to count as gradient-free.

    Returns:
        The flags, or None when the budget has no gradient attack or no gradient-free attack to compare.
    """
    kinds = {label: attack_kind((attacks or {}).get(label, label), gradient_free) for label in broken}
    free = [broken[label].bool() for label, kind in kinds.items() if kind == "gradient-free"]
    gradient = [broken[label].bool() for label, kind in kinds.items() if kind == "gradient"]
    if not free or not gradient:
        return None
    return torch.stack(free).any(dim=0) & ~torch.stack(gradient).any(dim=0)


def gradient_masking_notes(
    broken: Mapping[float, Mapping[str, torch.Tensor]],
    eligible: Optional[torch.Tensor] = None,
    attacks: Optional[Mapping[str, str]] = None,
    gradient_free: Sequence[str] = (),
    tolerance: float = MASKING_TOLERANCE,
    eps_label: Optional[EpsLabel] = None,
) -> List[str]:
    """The gradient-masking warning from per-attack outcomes: at some budget, gradient-free attacks broke more than
    ``tolerance`` of the eligible samples, and at least one, that no gradient attack broke at the same budget (see
    :func:`gradient_free_only`). An empty list when none.

    Args:
        broken: ``{eps: {attack label: per-sample broken flags (N,)}}``.
        eligible: per-sample flags of the samples that can be broken (clean prediction right); None: all.
        attacks: ``{label: registered attack name}`` (see :func:`gradient_free_only`).
        gradient_free: more names to count as gradient-free.
        tolerance: the fraction of the eligible samples tolerated (default :data:`MASKING_TOLERANCE`).
        eps_label: how to print a budget (default ``f"{eps:g}"``).
    """
    label = eps_label or _plain_label
    found, free_names, gradient_names = [], set(), set()
    for eps in sorted(broken):
        only = gradient_free_only(broken[eps], attacks, gradient_free)
        if only is None:
            continue
        total = int(only.numel() if eligible is None else eligible.sum())
        count = int(only.sum())
        if count and count > tolerance * total:
            found.append(f"{count} of {total} eligible sample(s) at {label(eps)}")
            for name in broken[eps]:
                kind = attack_kind((attacks or {}).get(name, name), gradient_free)
                if kind == "gradient-free":
                    free_names.add(name)
                elif kind == "gradient":
                    gradient_names.add(name)
    if not found:
        return []
    return [
        f"Gradient masking suspected: the gradient-free attack(s) {', '.join(sorted(free_names))} broke samples that "
        f"no gradient attack ({', '.join(sorted(gradient_names))}) broke at the same budget: {'; '.join(found)}. "
        f"{_MASKING_ADVICE}"
    ]


# ---- robust accuracy against the budget ----------------------------------------------------------------------------
def monotonicity_notes(
    robust: Mapping[str, Mapping[float, float]],
    clean: Optional[float] = None,
    tolerance: float = MONOTONICITY_TOLERANCE,
    min_ratio: float = FLAT_MIN_RATIO,
    what: str = "Robust accuracy",
    eps_label: Optional[EpsLabel] = None,
) -> List[str]:
    """Warnings for robust accuracy that rises, or stays flat, as the budget grows.

    Per attack (and for the worst case), with the budgets in ascending order: "rises" when the robust accuracy at a
    budget exceeds the one at the next smaller budget by more than ``tolerance`` (a larger ball contains every
    perturbation of a smaller one, so a sound attack cannot do worse); "flat" when there are at least two budgets,
    the largest at least ``min_ratio`` times the smallest, the robust accuracy at the largest budget is above
    ``tolerance`` and has fallen by at most ``tolerance`` from the smallest budget's, and, when ``clean`` is given,
    the attack already broke samples at the smallest budget (its robust accuracy is more than ``tolerance`` below
    ``clean``): the attack works at small budgets but a much larger one breaks nothing more. Without that condition
    a model truly robust at budgets too small to matter (nothing broken anywhere) would be flagged; a model whose
    every gradient is masked (nothing broken anywhere either) is caught by the other checks.

    Args:
        robust: ``{attack label: {eps: robust accuracy in [0, 1]}}``.
        clean: the clean accuracy (on the same scale: the fraction of eligible samples), or None.
        tolerance: absolute change of robust accuracy (default :data:`MONOTONICITY_TOLERANCE`, one point).
        min_ratio: the flat check's smallest ratio of the largest budget to the smallest
            (default :data:`FLAT_MIN_RATIO`).
        what: the name of the number in the warnings (e.g. "The fraction of samples not broken").
        eps_label: how to print a budget (default ``f"{eps:g}"``).
    """
    label = eps_label or _plain_label
    rising, flat = [], []
    for name, series in robust.items():
        budgets = sorted(e for e, v in series.items() if v is not None)
        values = [float(series[e]) for e in budgets]
        for (e0, v0), (e1, v1) in zip(zip(budgets, values), zip(budgets[1:], values[1:])):
            if v1 > v0 + tolerance:
                rising.append(f"{name}: {v0:.3f} at {label(e0)} -> {v1:.3f} at {label(e1)}")
        spans = len(budgets) >= 2 and budgets[0] > 0 and budgets[-1] >= min_ratio * budgets[0]
        broke = clean is None or values[0] < clean - tolerance
        if spans and broke and values[-1] > tolerance and values[-1] >= values[0] - tolerance:
            flat.append(f"{name}: {values[0]:.3f} at {label(budgets[0])}, {values[-1]:.3f} at {label(budgets[-1])}")
    found = []
    if rising:
        found.append(
            f"{what} rises with the budget (by more than {tolerance:g}) for {'; '.join(rising)}. A larger budget "
            "contains every perturbation of a smaller one, so the attack missed examples it found at the smaller "
            "budget: it is unreliable here (too few steps or restarts, gradient masking, or randomness in the model)."
        )
    if flat:
        found.append(
            f"{what} does not fall as the budget grows (by at most {tolerance:g} over a budget {min_ratio:g}x or "
            f"more larger) for {'; '.join(flat)}. Unless the samples left are truly robust over this whole range, "
            "the attack is not working on them (gradient masking): compare with a gradient-free attack (square), "
            "craft through BPDA / EoT, and run an unbounded attack (monai_adv.attacks.unbounded_attack_check)."
        )
    return found


def full_range_budget(
    eps: float, norm: str, value_range: Optional[Sequence[float]], num_voxels: Optional[int] = None
) -> bool:
    """Whether a budget covers the whole value range, so that every image in it is reachable from any image:
    L-inf ``eps >= hi - lo``; L2 ``eps >= (hi - lo) * sqrt(num_voxels)`` (the voxels of one sample, channels
    included). False without a value range, or for L2 without ``num_voxels``.

    Args:
        eps: the budget.
        norm: "Linf" or "L2".
        value_range: ``(lo, hi)`` or None.
        num_voxels: values per sample (C x spatial), for L2.
    """
    if value_range is None:
        return False
    width = float(value_range[1]) - float(value_range[0])
    if norm == "Linf":
        return eps >= width * (1 - 1e-6)
    if norm == "L2" and num_voxels:
        return eps >= width * math.sqrt(num_voxels) * (1 - 1e-6)
    return False


def full_range_notes(
    survivors: Mapping[float, Mapping[str, int]],
    eligible: int,
    norm: str,
    value_range: Optional[Sequence[float]],
    num_voxels: Optional[int] = None,
    eps_label: Optional[EpsLabel] = None,
) -> List[str]:
    """Warnings for samples left unbroken at a budget that covers the whole value range (see
    :func:`full_range_budget`): every image is reachable there, so for a classifier that does not predict the same
    everywhere every eligible sample can be broken and robust accuracy must be 0; anything else means the attack
    failed. Budgets that do not cover the range are ignored.

    Args:
        survivors: ``{eps: {attack label: eligible samples not broken}}``.
        eligible: the number of eligible samples (clean prediction right).
        norm: "Linf" or "L2".
        value_range: ``(lo, hi)`` or None (no warning).
        num_voxels: values per sample, for L2.
        eps_label: how to print a budget (default ``f"{eps:g}"``).
    """
    label = eps_label or _plain_label
    found = []
    for eps in sorted(survivors):
        if not full_range_budget(eps, norm, value_range, num_voxels):
            continue
        left = [f"{name} {count} of {eligible}" for name, count in survivors[eps].items() if count > 0]
        if left:
            lo, hi = (float(v) for v in value_range)
            found.append(
                f"At eps={label(eps)} ({norm}), a budget that covers the whole value range [{lo:g}, {hi:g}] so that "
                f"every image is reachable, samples were left unbroken ({', '.join(left)} eligible): robust accuracy "
                "there must be 0 unless the model predicts the same class for every image, so the attack failed on "
                "them (gradient masking?). Craft through BPDA / EoT, or attack a margin loss."
            )
    return found


def sample_voxels(output: Any) -> Optional[int]:
    """The values per sample of the images of an engine's output (``{"image": (N, C, *spatial), ...}``), or None."""
    image = output.get("image") if isinstance(output, Mapping) else None
    if not isinstance(image, torch.Tensor) or image.ndim < 2 or image.shape[0] == 0:
        return None
    return int(image[0].numel())


# ---- the checks on an evaluation's per-sample rows -----------------------------------------------------------------
def evaluation_notes(
    cells: Mapping[Tuple[str, float], Mapping[str, torch.Tensor]],
    attacks: Optional[Mapping[str, str]] = None,
    norm: str = "Linf",
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    task: str = "classification",
    num_voxels: Optional[int] = None,
    masked: bool = False,
    gradient_free: Sequence[str] = (),
    eps_label: Optional[EpsLabel] = None,
) -> List[str]:
    """The false-robustness warnings of an evaluation, from its per-sample rows.

    Runs :func:`gradient_masking_notes` (per budget, the gradient-free attacks against the gradient attacks),
    :func:`monotonicity_notes` (each attack and the worst case across budgets, on the fraction of samples eligible
    and not broken: the robust accuracy for classification; the fraction of eligible samples stands for the clean
    accuracy) and, for classification and multi-label without a perturbation mask, :func:`full_range_notes`.

    Args:
        cells: ``{(attack label, eps): rows}`` with the per-sample rows "index", "eligible" and "broken" of each
            cell (:meth:`~monai_adv.engines.robustness_results.CellAccumulator.rows`; "worst-case" included).
        attacks: ``{label: registered attack name}`` (e.g. ``{"pgd-20": "pgd", "square-5000": "square"}``).
        norm: "Linf" or "L2".
        value_range: the images' range, or None.
        task: "classification", "multilabel" or "segmentation".
        num_voxels: values per sample (for the L2 full-range budget), or None.
        masked: whether only a region of interest was perturbed (no image is then fully reachable).
        gradient_free: more attack names to count as gradient-free.
        eps_label: how to print a budget.
    """
    if not cells:
        return []
    common: Optional[torch.Tensor] = None
    for rows in cells.values():
        index = rows["index"]
        common = index if common is None else common[torch.isin(common, index)]
    if common is None or common.numel() == 0:
        return []
    broken: Dict[float, Dict[str, torch.Tensor]] = {}
    robust: Dict[str, Dict[float, float]] = {}
    survivors: Dict[float, Dict[str, int]] = {}
    eligible: Optional[torch.Tensor] = None
    for (name, eps), rows in cells.items():
        keep = torch.isin(rows["index"], common)
        order = torch.argsort(rows["index"][keep])
        flags = rows["broken"][keep][order].bool()
        ok = rows["eligible"][keep][order].bool()
        eligible = ok if eligible is None else eligible
        broken.setdefault(eps, {})[name] = flags
        robust.setdefault(name, {})[eps] = float((ok & ~flags).sum()) / max(int(ok.numel()), 1)
        survivors.setdefault(eps, {})[name] = int((ok & ~flags).sum())
    notes = gradient_masking_notes(broken, eligible, attacks, gradient_free, eps_label=eps_label)
    what = "Robust accuracy" if task != "segmentation" else "The fraction of samples not broken"
    clean = float(eligible.sum()) / max(int(eligible.numel()), 1)
    notes += monotonicity_notes(robust, clean, what=what, eps_label=eps_label)
    if task != "segmentation" and not masked:
        notes += full_range_notes(survivors, int(eligible.sum()), norm, value_range, num_voxels, eps_label)
    return notes


# ---- an unbounded attack -------------------------------------------------------------------------------------------
def unbounded_attack_check(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: Any,
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    norm: str = "Linf",
    steps: int = 20,
    eps: Optional[float] = None,
    loss: str = "ce",
    seed: Optional[int] = 0,
    **kwargs: Any,
) -> Tuple[List[str], torch.Tensor]:
    """Attack a batch with a budget that covers the whole value range and report the samples left unbroken.

    Every image in the range is reachable there, so a working attack breaks every sample whose clean prediction
    is right, unless the classifier predicts the same class everywhere: any survivor means the gradient attack
    fails on this model (gradient masking), whatever its robust accuracy at small budgets says. It runs our
    :class:`~monai_adv.attacks.PGD` (random start, ``steps`` steps of ``eps / 10``, early stop, best iterate) with
    ``eps = hi - lo`` (L-inf) or ``(hi - lo) * sqrt(values per sample)`` (L2), and the attack loss ``loss`` (the
    loss the evaluation's attacks use, so that a saturated cross-entropy shows). Cost: ``steps`` forward and
    backward passes.

    Args:
        model: the model (any callable returning logits).
        x: a batch (N, C, *spatial).
        y: its labels.
        value_range: ``(lo, hi)``; None needs ``eps``.
        norm: "Linf" or "L2".
        steps: PGD steps.
        eps: the budget; None covers the whole value range.
        loss: the attack loss ("ce", "cw", ...).
        seed: the attack's seed.
        kwargs: more arguments of :class:`~monai_adv.attacks.PGD` (task, restarts, ...).

    Returns:
        The warnings (an empty list when every sample was broken) and per-sample flags (bool (N,) on the host):
        the samples whose clean prediction was right and that the attack did not break.
    """
    if eps is None:
        if value_range is None:
            raise ValueError("`eps` is needed when `value_range` is None (no budget covers an unbounded range).")
        width = float(value_range[1]) - float(value_range[0])
        eps = width if norm == "Linf" else width * math.sqrt(int(x[0].numel()))
    attack = PGD(
        model, eps=eps, norm=norm, steps=steps, alpha=eps / 10, loss=loss, value_range=value_range, seed=seed, **kwargs
    )
    result = attack.perturb(x, y)
    survived = (~result.success & ~result.clean_success).cpu()
    count, eligible = int(survived.sum()), int((~result.clean_success).sum())
    notes = []
    if count:
        notes.append(
            f"An unbounded attack (PGD, {steps} steps, {loss} loss, eps={eps:g} {norm}: every image in the value range "
            f"is reachable) left {count} of {eligible} sample(s) unbroken: unless the model predicts the same class "
            "for every image, a working gradient attack breaks them all, so gradient attacks are failing on this "
            "model (gradient masking). Craft through BPDA / EoT, or attack a margin loss."
        )
    return notes, survived


def _plain_label(eps: float) -> str:
    return f"{eps:g}"
