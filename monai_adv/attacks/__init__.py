# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial attacks for 2D and 3D medical images: classification, multi-label and segmentation.

Pure PyTorch: nothing here imports MONAI or ignite.
"""

from monai_adv.attacks import losses
from monai_adv.attacks.apgd import APGD, APGDT
from monai_adv.attacks.autoattack import AutoAttack, AutoAttackReport
from monai_adv.attacks.base import Attack, AttackResult
from monai_adv.attacks.cw import CW
from monai_adv.attacks.fab import FAB
from monai_adv.attacks.fgsm import FGSM
from monai_adv.attacks.guard import InfererModel, eval_view, model_dtype, model_state_guard
from monai_adv.attacks.pgd import PGD
from monai_adv.attacks.registry import (
    attack_class,
    attack_defaults,
    available_attacks,
    make_attack,
    register_attack,
)
from monai_adv.attacks.sanity import sanity_checks
from monai_adv.attacks.scoring import score_examples
from monai_adv.attacks.simba import SimBA
from monai_adv.attacks.square import Square
from monai_adv.attacks.transfer import TransferAttack

__all__ = [
    "APGD",
    "APGDT",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "AutoAttackReport",
    "CW",
    "FAB",
    "FGSM",
    "InfererModel",
    "PGD",
    "SimBA",
    "Square",
    "TransferAttack",
    "attack_class",
    "attack_defaults",
    "available_attacks",
    "losses",
    "make_attack",
    "model_state_guard",
    "eval_view",
    "model_dtype",
    "register_attack",
    "sanity_checks",
    "score_examples",
]
