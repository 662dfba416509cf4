# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Training objectives: adversarial (NAT, PGD-AT, fast-AT, N-FGSM, free-AT, TRADES, MART, HAT, AWP), built on the
attacks, and Gaussian augmentation and SmoothAdv for randomized smoothing."""

from monai_adv.defenses.awp import AWP
from monai_adv.defenses.detection_attack import DetectorAwareAPGD, DetectorAwarePGD, evaluate_detection
from monai_adv.defenses.detection_metrics import detection_metrics
from monai_adv.defenses.detectors import Detector, FeatureSqueezingDetector, MahalanobisDetector
from monai_adv.defenses.free import FreeAT
from monai_adv.defenses.objectives import HAT, MART, PGDAT, TRADES, Defense, FastAT, NaturalTraining, survey_step
from monai_adv.defenses.purification import Purified, evaluate_purification, purification_attack_models, train_denoiser
from monai_adv.defenses.purifiers import (
    BitDepthReduction,
    GaussianNoisePurifier,
    GaussianSmoothing,
    LearnedDenoiser,
    MedianSmoothing,
    Purifier,
    available_purifiers,
    make_purifier,
)
from monai_adv.defenses.registry import available_defenses, defense_class, make_defense
from monai_adv.defenses.single_step import NFGSM
from monai_adv.defenses.smoothadv import SmoothAdv, SmoothedSoftClassifier
from monai_adv.defenses.smoothing import GaussianAugmentation

__all__ = [
    "AWP",
    "BitDepthReduction",
    "Defense",
    "Detector",
    "DetectorAwareAPGD",
    "DetectorAwarePGD",
    "FastAT",
    "FeatureSqueezingDetector",
    "FreeAT",
    "GaussianAugmentation",
    "GaussianNoisePurifier",
    "GaussianSmoothing",
    "HAT",
    "LearnedDenoiser",
    "MART",
    "MahalanobisDetector",
    "MedianSmoothing",
    "NFGSM",
    "NaturalTraining",
    "PGDAT",
    "Purified",
    "Purifier",
    "SmoothAdv",
    "SmoothedSoftClassifier",
    "TRADES",
    "available_defenses",
    "available_purifiers",
    "defense_class",
    "detection_metrics",
    "evaluate_detection",
    "evaluate_purification",
    "make_defense",
    "make_purifier",
    "purification_attack_models",
    "survey_step",
    "train_denoiser",
]
