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
    "threat_tables",
    "defense_tables",
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
    "threat_model",
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


def threat_tables(report: Mapping[str, Any]) -> str:
    """The report's universal, patch and corruption sections as Markdown (empty when it has none): the fooling
    rate and metric of each universal perturbation next to the per-image worst case at the same budget, the metric
    under each patch attack against patch size, and under each corruption against severity with the mean."""
    metric = report["primary_metric"]
    clean = _cell(report["clean"].get(metric))
    parts: List[str] = []
    universal = [r for r in report["results"] if r.get("threat_model") == "universal"]
    if universal:
        per_image = {
            r["eps_label"]: r for r in report["results"] if r.get("threat_model") in ("per-image", "worst-case")
        }
        lines = [
            f"universal perturbations ({metric}; fooling rate = share of images whose prediction changes)",
            "",
            "| attack | eps | clean | universal | fooling rate | worst case of the eps attacks |",
            "|---|---|---|---|---|---|",
        ]
        for row in universal:
            worst = per_image.get(row["eps_label"])
            worst_cell = _cell(worst["metrics"].get(metric)) if worst is not None else "n/a"
            lines.append(
                f"| {row['attack']} | {row['eps_label']} | {clean} | {_cell(row['metrics'].get(metric))} | "
                f"{_cell(row.get('fooling_rate'))} | {worst_cell} |"
            )
        parts.append("\n".join(lines) + "\n")
    if report.get("patches"):
        rows = report["patches"]
        labels = list(dict.fromkeys(r["size_label"] for r in rows))
        lines = [
            f"{metric} under patches (size: share of the image area or volume, or side in voxels)",
            "",
            "| attack | clean | " + " | ".join(labels) + " |",
            "|" + "|".join(["---"] * (len(labels) + 2)) + "|",
        ]
        for attack in dict.fromkeys(r["attack"] for r in rows):
            values = {r["size_label"]: r["metrics"].get(metric) for r in rows if r["attack"] == attack}
            lines.append(f"| {attack} | {clean} | " + " | ".join(_cell(values.get(lb)) for lb in labels) + " |")
        parts.append("\n".join(lines) + "\n")
    section = report.get("corruptions")
    if section:
        severities = section["severities"]
        lines = [
            f"{metric} under natural corruptions (mean over all corruptions and severities: "
            f"{_cell(section['mean'].get(metric))}; relative to clean: "
            f"{_cell(section['relative_to_clean'].get(metric))})",
            "",
            "| corruption | clean | " + " | ".join(f"severity {v}" for v in severities) + " | mean |",
            "|" + "|".join(["---"] * (len(severities) + 3)) + "|",
        ]
        for name, means in section["per_corruption"].items():
            values = {r["severity"]: r["metrics"].get(metric) for r in section["results"] if r["corruption"] == name}
            cells = " | ".join(_cell(values.get(v)) for v in severities)
            lines.append(f"| {name} | {clean} | {cells} | {_cell(means.get(metric))} |")
        parts.append("\n".join(lines) + "\n")
    return "".join(f"\n{part}" for part in parts)


def defense_tables(report: Mapping[str, Any]) -> str:
    """The report's ``defense`` (purification) and ``detection`` sections as Markdown (empty without them): the
    non-adaptive and the adaptive robust accuracy of the purified model per budget, and the detector's AUROC, TPR
    at 5 % FPR and "classify or reject" robust accuracy per budget and attack. The adaptive numbers are the ones
    to quote."""
    parts: List[str] = []
    defense = report.get("defense")
    metric = report["primary_metric"]
    if defense and defense.get("kind") == "purification":
        adaptive = {r["eps_label"]: r for r in report["results"] if r["attack"] == "worst-case"}
        adaptive = adaptive or {r["eps_label"]: r for r in report["results"]}
        baseline = {r["eps_label"]: r for r in defense["non_adaptive"]["results"] if r["attack"] == "worst-case"}
        baseline = baseline or {r["eps_label"]: r for r in defense["non_adaptive"]["results"]}
        lines = [
            f"purification ({defense['purifier']}): {metric} of the purified model, worst case over the attacks",
            "",
            "| eps | clean | non-adaptive attack | adaptive attack | worst case of both (quote this) |",
            "|---|---|---|---|---|",
        ]
        clean = _cell(report["clean"].get(metric))
        both = {row["eps_label"]: row["accuracy"] for row in defense.get("worst_case", [])}
        for label in report["eps_labels"]:
            a, b = baseline.get(label), adaptive.get(label)
            a_cell = _cell(a["metrics"].get(metric)) if a else "n/a"
            b_cell = _cell(b["metrics"].get(metric)) if b else "n/a"
            lines.append(f"| {label} | {clean} | {a_cell} | {b_cell} | **{_cell(both.get(label))}** |")
        parts.append("\n".join(lines) + "\n")
    detection = report.get("detection")
    if detection:
        lines = [
            f"detection ({detection['detector']}, threshold at {detection['fpr']:.0%} false positives on clean data; "
            f"'classify or reject': the adversarial input is classified correctly or rejected)",
            "",
            "| eps | attack | adaptive | AUROC | TPR at 5% FPR | classifier robust accuracy | classify or reject |",
            "|---|---|---|---|---|---|---|",
        ]
        for budget in detection["budgets"]:
            for attack, row in budget["attacks"].items():
                lines.append(
                    f"| {budget['eps_label']} | {attack} | {'yes' if row.get('adaptive') else 'no'} | "
                    f"{_cell(row.get('auroc'))} | {_cell(row.get('tpr_at_5_fpr'))} | "
                    f"{_cell(row.get('robust_accuracy'))} | {_cell(row.get('classify_or_reject_accuracy'))} |"
                )
            worst = budget.get("worst_case") or {}
            lines.append(
                f"| {budget['eps_label']} | worst case of all (quote this) | | | | "
                f"{_cell(worst.get('robust_accuracy'))} | **{_cell(worst.get('classify_or_reject_accuracy'))}** |"
            )
        parts.append("\n".join(lines) + "\n")
    return "".join(f"\n{part}" for part in parts)


def _family_rows(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The patch and corruption cells as result rows for the CSV: attack "<patch attack>" with the size as eps, or
    "corruption/<name>" with the severity as eps."""
    rows = [
        {**r, "eps": r["size"], "eps_label": r["size_label"], "threat_model": "patch"}
        for r in report.get("patches", [])
    ]
    for r in (report.get("corruptions") or {}).get("results", []):
        label = f"s{r['severity']}"
        rows.append({**r, "attack": f"corruption/{r['corruption']}", "eps": r["severity"], "eps_label": label})
        rows[-1]["threat_model"] = "corruption"
    return rows


def csv_table(reports: Reports) -> str:
    """Long-format CSV: one line per method, attack, budget and metric (clean rows have attack "clean", eps 0).

    Patch rows carry the patch size as ``eps`` and corruption rows (attack ``corruption/<name>``) the severity;
    ``threat_model`` tells them apart (per-image, universal, worst-case, patch, corruption)."""
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
        for row in list(report["results"]) + _family_rows(report):
            extra = {k: row.get(k) for k in CSV_FIELDS[6:]}
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
    threats = "".join(threat_tables(report) + defense_tables(report) for report in table.values())
    paths["markdown"] = write_text_atomic(folder / "robustness.md", markdown_table(table) + curves + threats)
    return paths


def _file_name(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in method.lower()) or "model"
