# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""MONAI/ignite workflows: adversarial training, robustness evaluation and certification."""

from monai_adv.engines.attack_suite import (
    FULL_SURVEY_ATTACKS,
    NAMED_ATTACKS,
    SURVEY_ATTACKS,
    AttackSpec,
    build_attack,
    eps_label,
    parse_attack_specs,
)
from monai_adv.engines.certification_evaluator import CertificationEvaluator
from monai_adv.engines.certification_results import (
    CERTIFICATION_SCHEMA,
    CERTIFICATION_SCHEMA_VERSION,
    CertificationResults,
)
from monai_adv.engines.robust_trainer import RobustTrainer
from monai_adv.engines.robustness_evaluator import WORST_CASE, QueryCounter, RobustnessEvaluator, RobustnessEvents
from monai_adv.engines.robustness_results import (
    REPORT_SCHEMA,
    REPORT_SCHEMA_VERSION,
    CellAccumulator,
    RobustnessResults,
)

__all__ = [
    "AttackSpec",
    "CERTIFICATION_SCHEMA",
    "CERTIFICATION_SCHEMA_VERSION",
    "CertificationEvaluator",
    "CertificationResults",
    "CellAccumulator",
    "FULL_SURVEY_ATTACKS",
    "NAMED_ATTACKS",
    "QueryCounter",
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "RobustTrainer",
    "RobustnessEvaluator",
    "RobustnessEvents",
    "RobustnessResults",
    "SURVEY_ATTACKS",
    "WORST_CASE",
    "build_attack",
    "eps_label",
    "parse_attack_specs",
]
