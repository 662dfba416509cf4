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


def test_a_built_wheel_ships_every_module_and_data_file(tmp_path):
    """A non-editable install (``pip install .``, a wheel) holds every module, template, schema and asset of the
    source tree: a package folder without ``__init__.py`` or a data file outside ``package_data`` is left out."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "tree"  # a copy: the build leaves nothing in the source tree
    shutil.copytree(root / "monai_adv", tree / "monai_adv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, tree / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    done = subprocess.run(command + [str(tree)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("monai_adv-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    source = {
        path.relative_to(root).as_posix()
        for path in (root / "monai_adv").rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix in (".py", ".json", ".html", ".css", ".npz")
    }
    assert source - shipped == set()
