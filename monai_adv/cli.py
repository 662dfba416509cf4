# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The ``monai-adv`` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, List, Optional

from monai_adv import __version__

__all__ = ["main"]


def _format_value(key: str, value: Any) -> str:
    """Show budgets in the usual x/255 form when they are whole multiples of 1/255."""
    if key in ("eps", "alpha") and isinstance(value, float) and 0 < value <= 1 and not math.isinf(value):
        scaled = value * 255
        if abs(scaled - round(scaled)) < 1e-9:
            return f"{int(round(scaled))}/255"
    return repr(value)


def _attacks(args: argparse.Namespace) -> int:
    from monai_adv.attacks import attack_class, attack_defaults, available_attacks

    rows = {name: attack_defaults(name) for name in available_attacks()}
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"monai_adv {__version__}: {len(rows)} attacks. Build one with")
    print("    monai_adv.attacks.make_attack(name, model, **overrides)")
    print("alpha=None means eps / 4 (PGD, CW) or eps (FGSM).\n")
    for name, defaults in rows.items():
        print(f"{name}  (monai_adv.attacks.{attack_class(name).__name__})")
        for key, value in defaults.items():
            print(f"    {key:<18} {_format_value(key, value)}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-adv", description="Adversarial attacks, defenses and robustness evaluation for MONAI."
    )
    parser.add_argument("--version", action="version", version=f"monai_adv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    attacks = sub.add_parser("attacks", help="list the available attacks and their default arguments")
    attacks.add_argument("--json", action="store_true", help="print the defaults as JSON")
    attacks.set_defaults(func=_attacks)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
