# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The certification cost benchmark in its smoke mode: it measures both demo networks, writes its JSON and
replaces only its own section of the doc."""

from __future__ import annotations

import json

import pytest

from benchmarks import certify_cost


@pytest.mark.slow
def test_tiny_run_writes_json_and_only_its_doc_section(tmp_path):
    doc = tmp_path / "certification.md"
    doc.write_text("# Title\n\n## API\n\nkept\n\n## Cost\n\nold table\n\n## Later\n\nkept too\n")
    out = tmp_path / "cost.json"
    payload = certify_cost.main(["--tiny", "--out", str(out), "--doc", str(doc)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["network"], r["n"]) for r in rows] == [(name, n) for name in certify_cost.NETWORKS for n in (2, 4)]
    assert all(r["images_per_second"] > 0 and not r["extrapolated"] for r in rows)
    text = doc.read_text()
    assert "old table" not in text and "kept\n" in text and "## Later\n\nkept too\n" in text
    assert certify_cost.markdown(payload) in text
    assert certify_cost.markdown(json.loads(out.read_text())) == certify_cost.markdown(payload)
