# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Attack suites for robustness evaluation: named attack specifications, built per budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from monai_adv.attacks import attack_arguments, attack_class, available_attacks, make_attack
from monai_adv.budgets import check_distinct_budgets, eps_label
from monai_adv.defenses.objectives import survey_step

__all__ = [
    "AttackSpec",
    "SURVEY_ATTACKS",
    "FULL_SURVEY_ATTACKS",
    "NAMED_ATTACKS",
    "parse_attack_specs",
    "build_attack",
    "eps_label",
    "check_distinct_budgets",
]


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite.

    Attributes:
        name: the label in reports ("pgd-20").
        attack: a registered attack name (see ``monai-adv attacks``), e.g. "pgd" or "autoattack".
        kwargs: keyword arguments of the attack, except ``eps``, which the suite sets. ``alpha="survey"`` gives
            the benchmark's PGD step for each budget (0.5/255 at 1 and 2/255, 1/255 at 4/255, 2/255 at 8/255).
    """

    name: str
    attack: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


#: the survey's evaluation attacks: FGSM, PGD-20, "CW" (30 sign steps on the CW margin, kappa 50), AutoAttack
SURVEY_ATTACKS = (
    AttackSpec("fgsm", "fgsm"),
    AttackSpec("pgd-20", "pgd", {"steps": 20, "alpha": "survey", "random_start": True}),
    AttackSpec("cw-30", "cw", {"steps": 30, "kappa": 50.0, "alpha": "survey"}),
    AttackSpec("autoattack", "autoattack", {"version": "standard"}),
)
#: with the survey's black-box attacks: Square (5000 queries) and SimBA-DCT
FULL_SURVEY_ATTACKS = SURVEY_ATTACKS + (
    AttackSpec("square-5000", "square", {"queries": 5000}),
    AttackSpec("simba-dct", "simba_dct"),
)

#: further named attacks: AutoAttack's cheaper version (same strength, see docs/performance.md)
NAMED_ATTACKS = FULL_SURVEY_ATTACKS + (AttackSpec("autoattack-fast", "autoattack", {"version": "fast"}),)


def parse_attack_specs(attacks: Sequence[Union[str, Mapping[str, Any], AttackSpec]]) -> List[AttackSpec]:
    """Normalize a suite: each item is an :class:`AttackSpec`, a name ("pgd", "autoattack", or a label of
    :data:`NAMED_ATTACKS` such as "pgd-20" or "autoattack-fast"), or a mapping ``{"attack": "pgd", "name": "pgd-50",
    "steps": 50, ...}`` (``name`` defaults to ``attack``), the form bundle configs use.

    Raises:
        ValueError: for an empty suite, an unknown attack, or two attacks with the same name.
    """
    if isinstance(attacks, (str, Mapping, AttackSpec)) or not isinstance(attacks, Sequence) or not attacks:
        raise ValueError(f"`attacks` must be a non-empty list of attack names or specifications, got {attacks!r}.")
    presets = {spec.name: spec for spec in NAMED_ATTACKS}
    known = set(available_attacks())
    specs: List[AttackSpec] = []
    for item in attacks:
        if isinstance(item, AttackSpec):
            spec = item
        elif isinstance(item, str):
            key = item.strip().lower()
            spec = presets[key] if key in presets else AttackSpec(key, key)
        elif isinstance(item, Mapping):
            if "attack" not in item:
                raise ValueError(f'Each attack mapping in `attacks` needs an "attack" key (a name), got {dict(item)}.')
            kwargs = {k: v for k, v in item.items() if k not in ("attack", "name")}
            spec = AttackSpec(str(item.get("name", item["attack"])), str(item["attack"]).strip().lower(), kwargs)
        else:
            raise TypeError(f"`attacks` items must be names, mappings or AttackSpec, got {type(item).__name__}.")
        if spec.attack.replace("-", "_") not in known:
            raise ValueError(
                f"Unknown attack {spec.attack!r} in `attacks`; choose from {sorted(known | set(presets))}."
            )
        specs.append(spec)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"`attacks` must have distinct names, got {names}.")
    return specs


def build_attack(
    spec: AttackSpec,
    model: Callable,
    eps: float,
    norm: str = "Linf",
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    task: str = "auto",
    seed: Optional[int] = 0,
    early_stop: Optional[bool] = None,
):
    """Build the attack of ``spec`` on ``model`` at budget ``eps``; the suite's norm, value range, task and seed
    apply unless ``spec.kwargs`` sets them. Returns an object with ``perturb(x, y, mask=...)``.

    For a patch attack (its class's ``budget`` is "size") ``eps`` is the patch size (see
    :func:`monai_adv.attacks.patch.patch_side`) and the suite's norm does not apply."""
    # the suite's settings, for the attacks that take them (classification-only attacks such as FMN or APGD-T set
    # their task themselves); the specification's own arguments are passed as given
    accepted = attack_arguments(spec.attack)
    suite = {"norm": norm, "value_range": value_range, "task": task, "seed": seed}
    kwargs = {**{k: v for k, v in suite.items() if k in accepted}, **spec.kwargs}
    if kwargs.get("alpha") == "survey":
        kwargs["alpha"] = survey_step(eps) if eps > 0 else None
    if early_stop is not None and "early_stop" not in spec.kwargs and "early_stop" in attack_arguments(spec.attack):
        kwargs["early_stop"] = early_stop
    budget = "size" if attack_class(spec.attack).budget == "size" else "eps"
    return make_attack(spec.attack, model, **{budget: eps}, **kwargs)
