# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""report.html: rendered from the JSON reports alone, self-contained, escaped, rebuilt by ``monai-adv report``."""

from __future__ import annotations

import copy
import html
import json
import re
from html.parser import HTMLParser

import pytest
import torch
from monai.data import DataLoader

from monai_adv.benchmark.html_report import load_reports, render_html_report, write_html_report
from monai_adv.benchmark.report import markdown_table, validate_report
from monai_adv.cli import main
from tests.cases import evaluated_run_folder

EPS = [2 / 255, 12 / 255]


class _Page(HTMLParser):
    """The parts of a page the tests look at: section ids, images, table cells, links, scripts."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.cells, self.links, self.scripts = [], [], [], [], 0
        self.worst_rows = 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("a", "link") and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and attrs.get("class") == "worst":
            self.worst_rows += 1
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(self._cell.strip())
            self._cell = None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def run_folder(trained_bars, tmp_path_factory):
    """A real evaluation of the small trained CNN, its reports, tables and figures in one folder."""
    model, x, y = trained_bars
    folder = tmp_path_factory.mktemp("run")
    attacks = ["fgsm", {"attack": "pgd", "name": "pgd-10", "steps": 10}]
    data = {"name": "bars", "image_size": [16, 16], "class_names": ["h", "v", "d"]}
    report = evaluated_run_folder(model, x[:64], y[:64], folder, "tiny <b>CNN</b>", attacks, EPS, data=data)
    return report, folder


def test_report_records_per_class_results_and_provenance(run_folder):
    report, _ = run_folder
    validate_report(report)
    assert report["schema_version"] == "1.2"
    per_class = report["per_class"]
    assert per_class["metric"] == "recall" and per_class["classes"] == [0, 1, 2]
    assert sum(per_class["support"]) == report["num_samples"]

    # the support-weighted recalls are the accuracy, on clean inputs and in every cell
    def weighted(values):
        return sum(v * n for v, n in zip(values, per_class["support"]) if v is not None) / report["num_samples"]

    assert weighted(per_class["clean"]) == pytest.approx(report["clean"]["accuracy"])
    accuracy = {(r["attack"], r["eps"]): r["metrics"]["accuracy"] for r in report["results"]}
    assert len(per_class["results"]) == len(report["results"])
    for row in per_class["results"]:
        assert weighted(row["values"]) == pytest.approx(accuracy[(row["attack"], row["eps"])])
    provenance = report["provenance"]
    assert provenance["versions"]["torch"] == torch.__version__ and provenance["device"] == "cpu"
    assert provenance["seed"] == 0 and provenance["created"]


def test_page_shows_every_section_number_and_figure(run_folder):
    report, folder = run_folder
    path = write_html_report([report], folder)
    text = path.read_text(encoding="utf-8")
    page = _parse(text)
    for section in (
        "summary",
        "card",
        "threat",
        "results",
        "curves",
        "examples",
        "per-class",
        "checks",
        "meaning",
        "provenance",
    ):
        assert section in page.ids, section
    # every figure of the folder embedded as a PNG data URI; nothing fetched from elsewhere
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(link.startswith("#") for link in page.links) and page.scripts == 0
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text)
    # every number of the Markdown table is a cell of the page, and the worst case is highlighted per model
    for line in markdown_table(report).splitlines()[4:]:
        for cell in [c.strip().strip("*") for c in line.strip("|").split("|")]:
            assert cell in page.cells, cell
    assert page.worst_rows == 1
    assert {"0: h", "1: v", "2: d"} <= set(page.cells)  # the per-class table names the classes
    # names from the JSON are escaped, never markup
    assert "tiny <b>CNN</b>" not in text and html.escape("tiny <b>CNN</b>") in text
    assert report["provenance"]["versions"]["monai-adv"] in page.cells
    # the page depends on the reports and figures only: rendering twice gives the same page
    assert render_html_report([report], folder) == text


def test_page_lists_sanity_warnings_in_words(run_folder):
    report, _ = run_folder
    warned = copy.deepcopy(report)
    warned["notes"] = ["gradient masking: FGSM broke fewer samples than random noise <here>"]
    page = render_html_report([warned])
    assert "sanity warning(s)" in page and html.escape(warned["notes"][0]) in page
    assert "every sanity check passed" in render_html_report([report])


def test_several_models_get_a_comparison_table(run_folder):
    report, _ = run_folder
    other = copy.deepcopy(report)
    other["model"]["name"] = "second"
    page = _parse(render_html_report([report, other]))
    assert page.worst_rows == 4  # one per model in the comparison and in each model's own table
    assert "second" in page.cells


def test_certification_report_page(tmp_path):
    from monai_adv.engines import CertificationEvaluator
    from tests.models import TinyClassifier

    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    evaluator = CertificationEvaluator(
        "cpu", DataLoader(list(zip(x, y)), batch_size=2), TinyClassifier(2, 1, 3, width=4), 0.25, n0=8, n=32
    )
    evaluator.run()
    report = evaluator.report(model={"name": "smoothed"})
    assert report["provenance"]["seed"] == 0
    text = render_html_report([report])
    page = _parse(text)
    assert "certified accuracy" in page.cells and "radius" in page.cells
    assert "<h3>smoothed</h3>" in text and "Certified by randomized smoothing." in text
    assert report["provenance"]["versions"]["torch"] in page.cells


def test_report_command_rebuilds_the_page(run_folder, tmp_path, capsys):
    report, folder = run_folder
    name = next(p for p in folder.glob("*.json"))
    out = tmp_path / "page.html"
    assert main(["report", str(name), "--out", str(out), "--figures", str(folder), "--title", "rebuilt"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "<title>rebuilt</title>" in text and len(_parse(text).images) == 2
    assert text == render_html_report(load_reports([name]), folder, "rebuilt")


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.json"], "REPORT: missing.json is not a readable JSON file"),
        (["{bad}"], "is not a monai_adv report"),
        (["{good}", "--out", "page.txt"], "--out: expected a file name ending in .html"),
        (["{good}", "--figures", "nowhere"], "--figures: nowhere is not a folder"),
    ],
)
def test_report_command_bad_input(run_folder, tmp_path, monkeypatch, capsys, args, message):
    _, folder = run_folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    good = str(next(folder.glob("*.json")))
    args = [a.replace("{bad}", "bad.json").replace("{good}", good) for a in args]
    assert main(["report", *args]) == 1
    assert message in capsys.readouterr().err
