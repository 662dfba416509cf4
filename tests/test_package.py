# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Package-level rules: the attack and certification layers are pure PyTorch, the version is exposed."""

import re
import subprocess
import sys

import pytest

import monai_adv


def test_version_is_exposed():
    assert re.fullmatch(r"\d+\.\d+\.\d+", monai_adv.__version__)


@pytest.mark.parametrize("layer", ["monai_adv.attacks", "monai_adv.certify"])
def test_pure_pytorch_layers_import_neither_monai_nor_ignite(layer):
    code = (
        f"import sys, {layer}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('monai', 'ignite')); "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{layer} pulled in {done.stdout.strip()}"
