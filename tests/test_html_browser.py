# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""report.html in a real browser: headless Chromium renders it, every image decodes, no console error, the page
fits a narrow window, and the screenshots are not blank.

Needs Chromium (Debian package ``chromium``; ``.ci/run`` installs it). Without it the test is skipped, except
under CI (``CI`` set), where a missing browser is an error. Set ``MONAI_ADV_SCREENSHOTS=folder`` to keep the
screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from monai_adv.benchmark.html_report import write_html_report
from tests.cases import evaluated_run_folder

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

# what the page looks like to a reader, written into the DOM once the page has loaded (test copy only)
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => {
  window.__errors.push(String(e.message || (e.target && e.target.src) || e).slice(0, 200));
}, true);
const _error = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); _error(...a); };
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = {
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    sections: [...document.querySelectorAll("section[id]")].map(s => s.id),
    tables: document.querySelectorAll("table").length,
    worst: document.querySelectorAll("tr.worst").length,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    height: document.documentElement.scrollHeight,
    errors: window.__errors,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


def _chromium(tmp_path: Path, width: int, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("CI is set but Chromium is not installed: .ci/run must install the Debian package chromium")
    profile = tmp_path / f"profile-{width}-{len(args)}"
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1200", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(trained_bars, tmp_path_factory):
    model, x, y = trained_bars
    folder = tmp_path_factory.mktemp("browser")
    report = evaluated_run_folder(model, x[:48], y[:48], folder, "tiny CNN", ["fgsm", "pgd-20"], [4 / 255, 12 / 255])
    return write_html_report([report], folder)


@pytest.mark.parametrize("width", [1400, 420])
def test_page_renders_in_chromium(page, tmp_path, width):
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    result = _chromium(tmp_path, width, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page did not finish loading: {result.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["images"] == 2 and probe["broken"] == [], probe
    assert probe["errors"] == [], probe["errors"]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    for section in ("summary", "card", "threat", "results", "curves", "examples", "per-class", "checks", "provenance"):
        assert section in probe["sections"]
    assert probe["tables"] >= 5 and probe["worst"] == 1
    assert probe["overflow"] <= 0, f"the page is {probe['overflow']} px wider than a {width} px window"

    shot = tmp_path / f"report_{width}.png"
    result = _chromium(tmp_path, width, f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[1] == width and pixels.std() > 20, "the screenshot is blank"
    keep = os.environ.get("MONAI_ADV_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
