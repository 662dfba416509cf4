# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""MONAI transforms that add an adversarial attack, a fitted perturbation or a natural corruption to a pipeline."""

from monai_adv.transforms.array import ADVERSARIAL_META_KEY, AdversarialPerturb, RandAdversarialPerturb
from monai_adv.transforms.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    Corrupt,
    CorruptD,
    Corruptd,
    CorruptDict,
    corrupt,
    corruption_names,
    corruption_parameters,
)
from monai_adv.transforms.dictionary import (
    AdversarialPerturbD,
    AdversarialPerturbd,
    AdversarialPerturbDict,
    RandAdversarialPerturbD,
    RandAdversarialPerturbd,
    RandAdversarialPerturbDict,
)
from monai_adv.transforms.perturbation import (
    ApplyPerturbation,
    ApplyPerturbationD,
    ApplyPerturbationd,
    ApplyPerturbationDict,
)

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "Corrupt",
    "CorruptD",
    "CorruptDict",
    "Corruptd",
    "corrupt",
    "corruption_names",
    "corruption_parameters",
    "ADVERSARIAL_META_KEY",
    "AdversarialPerturb",
    "ApplyPerturbation",
    "ApplyPerturbationD",
    "ApplyPerturbationDict",
    "ApplyPerturbationd",
    "AdversarialPerturbD",
    "AdversarialPerturbDict",
    "AdversarialPerturbd",
    "RandAdversarialPerturb",
    "RandAdversarialPerturbD",
    "RandAdversarialPerturbDict",
    "RandAdversarialPerturbd",
]
