# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Data: the embedded demo set (real brain anatomy, simulated lesions) and loaders for users' own data."""

from monai_adv.data.brain_lesion import BrainLesionDataset, load_anatomy
from monai_adv.data.datalist import demo_datalist
from monai_adv.data.export import export_demo, export_demo_medmnist, read_datalist
from monai_adv.data.manifest import CSVManifestDataset
from monai_adv.data.medmnist import MEDMNIST_FILES, MedMNISTDataset, download_medmnist

__all__ = [
    "BrainLesionDataset",
    "CSVManifestDataset",
    "MEDMNIST_FILES",
    "MedMNISTDataset",
    "demo_datalist",
    "download_medmnist",
    "export_demo",
    "export_demo_medmnist",
    "load_anatomy",
    "read_datalist",
]
