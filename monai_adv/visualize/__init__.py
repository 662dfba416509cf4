# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Figures of adversarial robustness: robustness curves, certified curves, adversarial examples and Grad-CAM, written
as PNGs."""

from __future__ import annotations

from monai_adv.visualize.certification import plot_certified_curves
from monai_adv.visualize.curves import plot_min_norm_curve, plot_robustness_curves
from monai_adv.visualize.examples import plot_adversarial_examples
from monai_adv.visualize.figures import new_figure, save_figure
from monai_adv.visualize.gradcam import default_target_layer, gradcam_maps, plot_gradcam
from monai_adv.visualize.slices import as_numpy, display_slice, mid_slice, show_image
from monai_adv.visualize.threats import plot_image_grid, plot_threat_families, plot_universal_perturbations

__all__ = [
    "as_numpy",
    "default_target_layer",
    "display_slice",
    "gradcam_maps",
    "mid_slice",
    "new_figure",
    "plot_adversarial_examples",
    "plot_certified_curves",
    "plot_gradcam",
    "plot_image_grid",
    "plot_min_norm_curve",
    "plot_robustness_curves",
    "plot_threat_families",
    "plot_universal_perturbations",
    "save_figure",
    "show_image",
]
