# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The benchmark scripts run in their tiny mode (timings are measured there, never asserted here)."""

import json

import pytest

pytest.importorskip("torchattacks")


def test_autoattack_reference_benchmark_tiny(tmp_path):
    from benchmarks.autoattack_reference import main

    out = tmp_path / "aa.json"
    payload = main(["--tiny", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"].keys() == payload["results"].keys() == {"monai_adv.AutoAttack", "torchattacks.AutoAttack"}
    for row in saved["results"].values():
        assert 0.0 <= row["robust_accuracy"] <= 1.0 and row["seconds"] > 0
