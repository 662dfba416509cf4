# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Build attacks by name, for configs (MONAI bundles) and the command line.

An attack's arguments are read from its whole class hierarchy: a subclass declares its own arguments and passes
the others (``**kwargs``) to its parent, down to :class:`~monai_adv.attacks.Attack`; arguments a class sets itself
(``fixed_arguments``) are not offered.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Tuple, Type

from monai_adv.attacks.base import Attack

__all__ = [
    "register_attack",
    "make_attack",
    "available_attacks",
    "attack_class",
    "attack_defaults",
    "attack_arguments",
    "class_arguments",
]

_REGISTRY: Dict[str, Tuple[Type[Attack], Dict[str, Any]]] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_attack(name: str, cls: Type[Attack], **preset: Any) -> None:
    """Register ``cls`` under ``name``, with keyword arguments ``preset`` applied before the caller's."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"`cls` must be a subclass of monai_adv.attacks.Attack, got {cls!r}.")
    unknown = sorted(set(preset) - set(class_arguments(cls)))
    if unknown:
        raise TypeError(f"{cls.__name__} takes no argument(s) {unknown}.")
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


def class_arguments(cls: Type[Attack]) -> Dict[str, inspect.Parameter]:
    """The keyword arguments ``cls`` accepts besides ``model``, read down its hierarchy (a subclass's default
    wins), without the ones it sets itself."""
    found: Dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, Attack):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.name not in ("self", "model") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return {k: p for k, p in found.items() if k not in cls.fixed_arguments}


def attack_arguments(name: str) -> Tuple[str, ...]:
    """The keyword arguments the attack registered under ``name`` accepts (besides ``model``)."""
    return tuple(class_arguments(_lookup(name)[0]))


def attack_defaults(name: str) -> Dict[str, Any]:
    """The default keyword arguments of a registered attack (with its preset), excluding ``model``."""
    cls, preset = _lookup(name)
    defaults = {k: p.default for k, p in class_arguments(cls).items() if p.default is not inspect.Parameter.empty}
    defaults.update(preset)
    return defaults
