# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Training objectives: adversarial (NAT, PGD-AT, fast-AT, TRADES, MART, HAT), built on the attacks, and Gaussian
augmentation and SmoothAdv for randomized smoothing."""

from monai_adv.defenses.objectives import HAT, MART, PGDAT, TRADES, Defense, FastAT, NaturalTraining, survey_step
from monai_adv.defenses.registry import available_defenses, defense_class, make_defense
from monai_adv.defenses.smoothadv import SmoothAdv, SmoothedSoftClassifier
from monai_adv.defenses.smoothing import GaussianAugmentation

__all__ = [
    "Defense",
    "FastAT",
    "GaussianAugmentation",
    "HAT",
    "MART",
    "NaturalTraining",
    "PGDAT",
    "SmoothAdv",
    "SmoothedSoftClassifier",
    "TRADES",
    "available_defenses",
    "defense_class",
    "make_defense",
    "survey_step",
]
