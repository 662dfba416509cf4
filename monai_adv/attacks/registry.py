# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Build attacks by name, for configs (MONAI bundles) and the command line."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Tuple, Type

from monai_adv.attacks.apgd import APGD, APGDT
from monai_adv.attacks.base import Attack
from monai_adv.attacks.cw import CW
from monai_adv.attacks.fab import FAB
from monai_adv.attacks.fgsm import FGSM
from monai_adv.attacks.pgd import PGD
from monai_adv.attacks.simba import SimBA
from monai_adv.attacks.square import Square

__all__ = [
    "register_attack",
    "make_attack",
    "available_attacks",
    "attack_class",
    "attack_defaults",
    "attack_arguments",
]

_REGISTRY: Dict[str, Tuple[Type[Attack], Dict[str, Any]]] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_attack(name: str, cls: Type[Attack], **preset: Any) -> None:
    """Register ``cls`` under ``name``, with keyword arguments ``preset`` applied before the caller's."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"`cls` must be a subclass of monai_adv.attacks.Attack, got {cls!r}.")
    _REGISTRY[_key(name)] = (cls, dict(preset))


def available_attacks() -> Tuple[str, ...]:
    """The registered attack names, sorted."""
    return tuple(sorted(_REGISTRY))


def make_attack(name: str, model: Callable, **kwargs: Any) -> Attack:
    """Build a registered attack by name, e.g. ``make_attack("pgd", model, eps=4 / 255, steps=20)``.

    Names are case-insensitive and accept "-" for "_" ("PGD-L2" is "pgd_l2").

    Raises:
        ValueError: for an unknown name, listing the available ones.
        TypeError: for a keyword the attack does not take.
    """
    cls, preset = _lookup(name)
    accepted = attack_arguments(name)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(f"Attack {name!r} ({cls.__name__}) takes no argument(s) {unknown}.")
    return cls(model, **{**preset, **kwargs})


def _lookup(name: str) -> Tuple[Type[Attack], Dict[str, Any]]:
    if not isinstance(name, str) or _key(name) not in _REGISTRY:
        raise ValueError(f"`name` must be one of {list(available_attacks())}, got {name!r}.")
    return _REGISTRY[_key(name)]


def attack_class(name: str) -> Type[Attack]:
    """The class registered under ``name``."""
    return _lookup(name)[0]


def attack_arguments(name: str) -> Tuple[str, ...]:
    """The keyword arguments the attack registered under ``name`` accepts (besides ``model``)."""
    cls, _ = _lookup(name)
    return tuple(k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "model"))


def attack_defaults(name: str) -> Dict[str, Any]:
    """The default keyword arguments of a registered attack (with its preset), excluding ``model``."""
    cls, preset = _lookup(name)
    defaults = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k not in ("self", "model") and p.default is not inspect.Parameter.empty
    }
    defaults.update(preset)
    return defaults


register_attack("fgsm", FGSM)
register_attack("pgd", PGD)
register_attack("pgd_linf", PGD, norm="Linf")
register_attack("pgd_l2", PGD, norm="L2")
register_attack("cw", CW)
register_attack("apgd", APGD)
register_attack("apgd_ce", APGD, loss="ce")
register_attack("apgd_dlr", APGD, loss="dlr")
register_attack("apgd_t", APGDT)
register_attack("fab_t", FAB)
register_attack("square", Square)
register_attack("simba", SimBA)
register_attack("simba_dct", SimBA, basis="dct")
register_attack("simba_pixel", SimBA, basis="pixel")
