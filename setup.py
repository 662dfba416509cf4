# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "monai_adv" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="monai-adv",
    version=VERSION,
    description="Adversarial attacks, defenses and robustness evaluation for medical image analysis with MONAI",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["monai_adv", "monai_adv.*"]),
    include_package_data=True,
    package_data={
        "monai_adv.data": ["assets/*.npz", "assets/NOTICE"],
        "monai_adv.benchmark": ["*.json", "templates/*.html", "templates/*.css"],
    },
    install_requires=[
        # install the PyTorch build for your platform first; torch 2.1 or newer (torch.nonzero_static)
        "torch>=2.1",
        "numpy>=1.24",
        "monai[fire,nibabel,itk,ignite]>=1.4",
        "matplotlib>=3.5",  # report plots
        "tqdm>=4.60",  # progress bars of the command line
        "scipy>=1.8",  # certification (monai_adv.certify, imported by monai_adv.engines): binomial tests and bounds
        "jinja2>=3.0",  # report.html
    ],
    extras_require={
        # torchattacks (the reference used by the tests) is installed separately with `--no-deps`:
        # its metadata requires torchvision and an old `requests`, which the code it runs never imports,
        # and resolving them would replace the platform's PyTorch build. See README "Tests".
        "test": [
            "pytest>=7",
            "hypothesis>=6.80",
            "ruff>=0.5",
            "scipy",
            "requests",
            "jsonschema>=4",
            # the "tracking" extra, for tests/test_tracking.py
            "mlflow-skinny>=2.10",
            "sqlalchemy>=1.4",
            "alembic>=1.8",
            "tensorboard>=2.12",
        ],
        # experiment tracking with MONAI's MLFlowHandler (a local SQLite store: mlflow-skinny needs SQLAlchemy and
        # Alembic for it) and TensorBoardStatsHandler; see docs/tracking.md
        "tracking": ["mlflow-skinny>=2.10", "sqlalchemy>=1.4", "alembic>=1.8", "tensorboard>=2.12"],
    },
    entry_points={"console_scripts": ["monai-adv=monai_adv.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
