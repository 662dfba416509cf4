# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Build training objectives by name."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Sequence, Tuple, Type

from monai_adv.defenses.awp import AWP
from monai_adv.defenses.free import FreeAT
from monai_adv.defenses.objectives import HAT, MART, PGDAT, TRADES, Defense, FastAT, NaturalTraining
from monai_adv.defenses.single_step import NFGSM
from monai_adv.defenses.smoothadv import SmoothAdv
from monai_adv.defenses.smoothing import GaussianAugmentation

__all__ = ["make_defense", "available_defenses", "defense_class"]

_DEFENSES: Dict[str, Type[Defense]] = {
    "nat": NaturalTraining,
    "pgd_at": PGDAT,
    "fast_at": FastAT,
    "trades": TRADES,
    "mart": MART,
    "hat": HAT,
    "gaussian_aug": GaussianAugmentation,
    "smoothadv": SmoothAdv,
    "n_fgsm": NFGSM,
    "free_at": FreeAT,
    "awp": AWP,
}
_CALL_ARGUMENTS = frozenset(inspect.signature(Defense.__call__).parameters) - {"self"}


def available_defenses() -> Tuple[str, ...]:
    return tuple(sorted(_DEFENSES))


def defense_class(name: str) -> Type[Defense]:
    """The class registered under ``name`` (e.g. to read its ``tasks``)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _DEFENSES:
        raise ValueError(f"`name` must be one of {list(available_defenses())}, got {name!r}.")
    return _DEFENSES[key]


def make_defense(name: str, **kwargs: Any) -> Defense:
    """Build a defense by name, e.g. ``make_defense("trades", eps=8 / 255, beta=6.0)``."""
    cls = defense_class(name)
    accepted = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(Defense.__init__).parameters)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(f"Defense {name!r} ({cls.__name__}) takes no argument(s) {unknown}.{_call_hint(unknown)}")
    return cls(**kwargs)


def _call_hint(unknown: Sequence[str]) -> str:
    """A pointer to the call for the arguments that belong to ``defense(network, inputs, targets, seed)``."""
    per_call = [k for k in unknown if k in _CALL_ARGUMENTS]
    if not per_call:
        return ""
    return (
        f" {per_call} are given at each call, `defense(network, inputs, targets, seed=None)`; "
        "RobustTrainer passes them (seed its training with `RobustTrainer(seed=...)`)."
    )
