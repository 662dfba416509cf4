# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Robustness reports: the JSON schema, and CSV and Markdown tables of one or several reports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from monai_adv.benchmark.io import write_json_atomic, write_text_atomic

__all__ = [
    "CSV_FIELDS",
    "report_schema",
    "validate_report",
    "as_report_map",
    "csv_table",
    "curve_table",
    "markdown_table",
    "write_reports",
]

SCHEMA_FILE = Path(__file__).with_name("report_schema.json")
CSV_FIELDS = (
    "method",
    "attack",
    "eps",
    "eps_label",
    "metric",
    "value",
    "success_rate",
    "linf_mean",
    "linf_max",
    "l2_mean",
    "seconds",
    "queries_per_sample",
    "samples",
)
Reports = Union[Mapping[str, Any], Mapping[str, Mapping[str, Any]]]


def report_schema() -> Dict[str, Any]:
    """The JSON schema of a report (``monai_adv/benchmark/report_schema.json``)."""
    return json.loads(SCHEMA_FILE.read_text())


def validate_report(report: Mapping[str, Any]) -> None:
    """Validate ``report`` against :func:`report_schema` (needs the ``jsonschema`` package).

    Raises:
        jsonschema.ValidationError: naming the offending entry.
    """
    import jsonschema

    jsonschema.validate(dict(report), report_schema())


def as_report_map(reports: Reports) -> Dict[str, Mapping[str, Any]]:
    """``{method: report}`` from one report (named after its ``model.name``) or a mapping of reports."""
    if "schema" in reports and "results" in reports:
        name = str(reports.get("model", {}).get("name", "model"))
        return {name: reports}
    if not reports:
        raise ValueError("`reports` must hold at least one report.")
    return dict(reports)


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(reports: Reports, metric: Optional[str] = None) -> str:
    """One row per method and attack, one column per budget (eps 0 is the clean value); cells hold ``metric``
    (default: the report's primary metric: robust accuracy, or Dice for segmentation)."""
    table = as_report_map(reports)
    first = next(iter(table.values()))
    metric = metric or first["primary_metric"]
    labels = list(first["eps_labels"])
    multi = len(table) > 1
    head = (["method"] if multi else []) + ["attack", "clean"] + labels
    lines = [
        f"{metric} under attack ({first['norm']}, {first['setting']}, {first['num_samples']} samples)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(head)) + "|",
    ]
    for method, report in table.items():
        clean = _cell(report["clean"].get(metric))
        attacks: List[str] = []
        for row in report["results"]:
            if row["attack"] not in attacks:
                attacks.append(row["attack"])
        for attack in attacks:
            by_eps = {r["eps_label"]: r for r in report["results"] if r["attack"] == attack}
            cells = [_cell(by_eps[label]["metrics"].get(metric)) if label in by_eps else "" for label in labels]
            name = f"**{attack}**" if attack == "worst-case" else attack
            lines.append("| " + " | ".join(([method] if multi else []) + [name, clean] + cells) + " |")
    return "\n".join(lines) + "\n"


def curve_table(report: Mapping[str, Any]) -> str:
    """The report's ``curve`` as Markdown: robust accuracy at each budget of the grid from the minimum-norm run,
    alone and combined with the suite (empty when the report has no curve)."""
    curve = report.get("curve")
    if not curve:
        return ""
    lines = [
        f"robust accuracy against eps from one {curve['attack']} run ({report['norm']}; median smallest adversarial "
        f"norm {_cell(curve['median_min_norm'])}, {curve['not_found']} attackable sample(s) never broken)",
        "",
        "| eps | " + curve["attack"] + " | combined with " + ", ".join(curve["fixed_attacks"]) + " |",
        "|---|---|---|",
    ]
    for label, alone, combined in zip(curve["eps_labels"], curve["robust_accuracy"], curve["combined_robust_accuracy"]):
        lines.append(f"| {label} | {alone:.3f} | {combined:.3f} |")
    return "\n".join(lines) + "\n"


def csv_table(reports: Reports) -> str:
    """Long-format CSV: one line per method, attack, budget and metric (clean rows have attack "clean", eps 0)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for method, report in as_report_map(reports).items():
        for metric, value in report["clean"].items():
            if metric != "seconds":
                writer.writerow(
                    {
                        "method": method,
                        "attack": "clean",
                        "eps": 0.0,
                        "eps_label": "0",
                        "metric": metric,
                        "value": value,
                        "samples": report["num_samples"],
                    }
                )
        for row in report["results"]:
            extra = {k: row[k] for k in CSV_FIELDS[6:]}
            for metric, value in row["metrics"].items():
                writer.writerow(
                    {
                        "method": method,
                        "attack": row["attack"],
                        "eps": row["eps"],
                        "eps_label": row["eps_label"],
                        "metric": metric,
                        "value": value,
                        **extra,
                    }
                )
    return buffer.getvalue()


def write_reports(reports: Reports, folder: Union[str, Path]) -> Dict[str, Path]:
    """Write each report as ``<method>.json`` and the tables ``robustness.csv`` and ``robustness.md`` in
    ``folder`` (all atomically). Returns the paths by kind."""
    folder = Path(folder)
    table = as_report_map(reports)
    paths: Dict[str, Path] = {}
    for method, report in table.items():
        paths[f"json:{method}"] = write_json_atomic(folder / f"{_file_name(method)}.json", report)
    paths["csv"] = write_text_atomic(folder / "robustness.csv", csv_table(table))
    curves = "".join(f"\n{curve_table(report)}" for report in table.values())
    paths["markdown"] = write_text_atomic(folder / "robustness.md", markdown_table(table) + curves)
    return paths


def _file_name(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in method.lower()) or "model"
