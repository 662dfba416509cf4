# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial attacks for 2D and 3D medical images: classification, multi-label and segmentation.

Pure PyTorch: nothing here imports MONAI or ignite.
"""

from monai_adv.attacks import diagnostics, losses
from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.adaptive import BPDA, EoT, ExpectationOverTransformation, adaptive_model
from monai_adv.attacks.apgd import APGD, APGDT
from monai_adv.attacks.autoattack import AutoAttack
from monai_adv.attacks.base import Attack, AttackResult, AttackState, QueryAttack
from monai_adv.attacks.cw import CW
from monai_adv.attacks.diagnostics import (
    autoattack_notes,
    evaluation_notes,
    full_range_notes,
    gradient_masking_notes,
    monotonicity_notes,
    unbounded_attack_check,
)
from monai_adv.attacks.fab import FAB
from monai_adv.attacks.fgsm import FGSM
from monai_adv.attacks.fitted import FittedAttack
from monai_adv.attacks.fmn import FMN
from monai_adv.attacks.guard import InfererModel, eval_view, model_dtype, model_state_guard
from monai_adv.attacks.objective import NAMED_LOSSES, Objective
from monai_adv.attacks.patch import PatchAttack, UniversalPatch
from monai_adv.attacks.pgd import PGD
from monai_adv.attacks.registry import (
    attack_arguments,
    attack_class,
    attack_defaults,
    available_attacks,
    make_attack,
    register_attack,
)
from monai_adv.attacks.sanity import SANITY_FLAGS, sanity_checks, sanity_flags, sanity_notes
from monai_adv.attacks.scoring import score_examples
from monai_adv.attacks.sea import SegmentationEnsemble
from monai_adv.attacks.simba import SimBA
from monai_adv.attacks.square import Square
from monai_adv.attacks.tasks import predict
from monai_adv.attacks.transfer import TransferAttack
from monai_adv.attacks.universal import UniversalPerturbation, apply_perturbation

_BUILT_IN = (
    ("fgsm", FGSM, {}),
    ("pgd", PGD, {}),
    ("pgd_linf", PGD, {"norm": "Linf"}),
    ("pgd_l2", PGD, {"norm": "L2"}),
    ("cw", CW, {}),
    ("apgd", APGD, {}),
    ("apgd_ce", APGD, {"loss": "ce"}),
    ("apgd_dlr", APGD, {"loss": "dlr"}),
    ("apgd_t", APGDT, {}),
    ("fab_t", FAB, {}),
    ("fmn", FMN, {}),
    ("square", Square, {}),
    ("simba", SimBA, {}),
    ("simba_dct", SimBA, {"basis": "dct"}),
    ("simba_pixel", SimBA, {"basis": "pixel"}),
    ("autoattack", AutoAttack, {}),
    ("transfer", TransferAttack, {}),
    ("sea", SegmentationEnsemble, {}),
    ("uap", UniversalPerturbation, {}),
    ("image_patch", PatchAttack, {}),
    ("patch", UniversalPatch, {}),
    ("universal_patch", UniversalPatch, {}),
)
for _name, _cls, _preset in _BUILT_IN:
    register_attack(_name, _cls, **_preset)

__all__ = [
    "SANITY_FLAGS",
    "APGD",
    "APGDT",
    "ActiveSet",
    "Attack",
    "AttackResult",
    "AttackState",
    "AutoAttack",
    "FittedAttack",
    "UniversalPerturbation",
    "UniversalPatch",
    "apply_perturbation",
    "BPDA",
    "BestIterate",
    "CW",
    "EoT",
    "ExpectationOverTransformation",
    "FAB",
    "FGSM",
    "FMN",
    "InfererModel",
    "NAMED_LOSSES",
    "Objective",
    "PatchAttack",
    "PGD",
    "QueryAttack",
    "SegmentationEnsemble",
    "SimBA",
    "Square",
    "TransferAttack",
    "adaptive_model",
    "attack_arguments",
    "attack_class",
    "attack_defaults",
    "autoattack_notes",
    "available_attacks",
    "diagnostics",
    "eval_view",
    "evaluation_notes",
    "full_range_notes",
    "gradient_masking_notes",
    "losses",
    "make_attack",
    "model_dtype",
    "model_state_guard",
    "monotonicity_notes",
    "predict",
    "register_attack",
    "sanity_checks",
    "sanity_flags",
    "sanity_notes",
    "score_examples",
    "unbounded_attack_check",
]
