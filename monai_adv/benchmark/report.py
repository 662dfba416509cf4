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
from monai_adv.benchmark.tables import Table, format_value

__all__ = [
    "CSV_FIELDS",
    "report_schema",
    "validate_report",
    "as_report_map",
    "csv_table",
    "curve_table",
    "curve_tables",
    "markdown_table",
    "result_table",
    "threat_tables",
    "threat_model_tables",
    "defense_tables",
    "defense_table_list",
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
WORST_CASE = "worst-case"  # the per-sample worst case over the attacks (the evaluator's row name)
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


def result_table(reports: Reports, metric: Optional[str] = None) -> Table:
    """One row per method and attack, one column per budget (eps 0 is the clean value); cells hold ``metric``
    (default: the report's primary metric: robust accuracy, or Dice for segmentation). The worst-case rows are
    highlighted."""
    table = as_report_map(reports)
    first = next(iter(table.values()))
    metric = metric or first["primary_metric"]
    labels = list(first["eps_labels"])
    multi = len(table) > 1
    out = Table(
        f"{metric} under attack ({first['norm']}, {first['setting']}, {first['num_samples']} samples)",
        (["method"] if multi else []) + ["attack", "clean"] + labels,
    )
    for method, report in table.items():
        clean = report["clean"].get(metric)
        for attack in dict.fromkeys(row["attack"] for row in report["results"]):
            by_eps = {r["eps_label"]: r for r in report["results"] if r["attack"] == attack}
            cells = [by_eps[label]["metrics"].get(metric) if label in by_eps else "" for label in labels]
            worst = attack == WORST_CASE
            out.add(([method] if multi else []) + [attack, clean] + cells, [int(multi)] if worst else (), worst)
    return out


def markdown_table(reports: Reports, metric: Optional[str] = None) -> str:
    """:func:`result_table` in Markdown."""
    return result_table(reports, metric).markdown()


def curve_tables(report: Mapping[str, Any]) -> List[Table]:
    """The report's ``curve``: robust accuracy at each budget of the grid from the minimum-norm run, alone and
    combined with the suite (no table when the report has no curve)."""
    curve = report.get("curve")
    if not curve:
        return []
    out = Table(
        f"robust accuracy against eps from one {curve['attack']} run ({report['norm']}; median smallest adversarial "
        f"norm {format_value(curve['median_min_norm'])}, {curve['not_found']} attackable sample(s) never broken)",
        ["eps", curve["attack"], "combined with " + ", ".join(curve["fixed_attacks"])],
    )
    for label, alone, combined in zip(curve["eps_labels"], curve["robust_accuracy"], curve["combined_robust_accuracy"]):
        out.add([label, alone, combined])
    return [out]


def curve_table(report: Mapping[str, Any]) -> str:
    """:func:`curve_tables` in Markdown (empty when the report has no curve)."""
    return "".join(t.markdown() for t in curve_tables(report))


def threat_model_tables(report: Mapping[str, Any]) -> List[Table]:
    """The report's universal, patch and corruption sections (none when it has none): the fooling rate and metric
    of each universal perturbation next to the per-image worst case at the same budget, the metric under each
    patch attack against patch size, and under each corruption against severity with the mean."""
    metric = report["primary_metric"]
    clean = report["clean"].get(metric)
    tables: List[Table] = []
    universal = [r for r in report["results"] if r.get("threat_model") == "universal"]
    if universal:
        per_image = {
            r["eps_label"]: r for r in report["results"] if r.get("threat_model") in ("per-image", "worst-case")
        }
        table = Table(
            f"universal perturbations ({metric}; fooling rate = share of images whose prediction changes)",
            ["attack", "eps", "clean", "universal", "fooling rate", "worst case of the eps attacks"],
        )
        for row in universal:
            worst = per_image.get(row["eps_label"])
            table.add(
                [
                    row["attack"],
                    row["eps_label"],
                    clean,
                    row["metrics"].get(metric),
                    row.get("fooling_rate"),
                    worst["metrics"].get(metric) if worst is not None else None,
                ]
            )
        tables.append(table)
    if report.get("patches"):
        rows = report["patches"]
        labels = list(dict.fromkeys(r["size_label"] for r in rows))
        table = Table(
            f"{metric} under patches (size: share of the image area or volume, or side in voxels)",
            ["attack", "clean"] + labels,
        )
        for attack in dict.fromkeys(r["attack"] for r in rows):
            values = {r["size_label"]: r["metrics"].get(metric) for r in rows if r["attack"] == attack}
            table.add([attack, clean] + [values.get(label) for label in labels])
        tables.append(table)
    section = report.get("corruptions")
    if section:
        severities = section["severities"]
        table = Table(
            f"{metric} under natural corruptions (mean over all corruptions and severities: "
            f"{format_value(section['mean'].get(metric))}; relative to clean: "
            f"{format_value(section['relative_to_clean'].get(metric))})",
            ["corruption", "clean"] + [f"severity {v}" for v in severities] + ["mean"],
        )
        for name, means in section["per_corruption"].items():
            values = {r["severity"]: r["metrics"].get(metric) for r in section["results"] if r["corruption"] == name}
            table.add([name, clean] + [values.get(v) for v in severities] + [means.get(metric)])
        tables.append(table)
    return tables


def threat_tables(report: Mapping[str, Any]) -> str:
    """:func:`threat_model_tables` in Markdown, each after a blank line (empty when the report has none)."""
    return "".join(f"\n{t.markdown()}" for t in threat_model_tables(report))


def defense_table_list(report: Mapping[str, Any]) -> List[Table]:
    """The report's ``defense`` (purification) and ``detection`` sections (none without them): the non-adaptive
    and the adaptive robust accuracy of the purified model per budget, and the detector's AUROC, TPR at 5 % FPR and
    "classify or reject" robust accuracy per budget and attack. The adaptive numbers (worst cases) are the ones to
    quote, set in bold."""
    tables: List[Table] = []
    defense = report.get("defense")
    metric = report["primary_metric"]
    if defense and defense.get("kind") == "purification":
        adaptive = {r["eps_label"]: r for r in report["results"] if r["attack"] == WORST_CASE}
        adaptive = adaptive or {r["eps_label"]: r for r in report["results"]}
        baseline = {r["eps_label"]: r for r in defense["non_adaptive"]["results"] if r["attack"] == WORST_CASE}
        baseline = baseline or {r["eps_label"]: r for r in defense["non_adaptive"]["results"]}
        table = Table(
            f"purification ({defense['purifier']}): {metric} of the purified model, worst case over the attacks",
            ["eps", "clean", "non-adaptive attack", "adaptive attack", "worst case of both (quote this)"],
        )
        clean = report["clean"].get(metric)
        both = {row["eps_label"]: row["accuracy"] for row in defense.get("worst_case", [])}
        for label in report["eps_labels"]:
            a, b = baseline.get(label), adaptive.get(label)
            cells = [a["metrics"].get(metric) if a else None, b["metrics"].get(metric) if b else None]
            table.add([label, clean, *cells, both.get(label)], strong=[4])
        tables.append(table)
    detection = report.get("detection")
    if detection:
        table = Table(
            f"detection ({detection['detector']}, threshold at {detection['fpr']:.0%} false positives on clean data; "
            f"'classify or reject': the adversarial input is classified correctly or rejected)",
            ["eps", "attack", "adaptive", "AUROC", "TPR at 5% FPR", "classifier robust accuracy", "classify or reject"],
        )
        for budget in detection["budgets"]:
            for attack, row in budget["attacks"].items():
                table.add(
                    [
                        budget["eps_label"],
                        attack,
                        "yes" if row.get("adaptive") else "no",
                        row.get("auroc"),
                        row.get("tpr_at_5_fpr"),
                        row.get("robust_accuracy"),
                        row.get("classify_or_reject_accuracy"),
                    ]
                )
            worst = budget.get("worst_case") or {}
            table.add(
                [
                    budget["eps_label"],
                    "worst case of all (quote this)",
                    "",
                    "",
                    "",
                    worst.get("robust_accuracy"),
                    worst.get("classify_or_reject_accuracy"),
                ],
                strong=[6],
                highlight=True,
            )
        tables.append(table)
    return tables


def defense_tables(report: Mapping[str, Any]) -> str:
    """:func:`defense_table_list` in Markdown, each after a blank line (empty without those sections)."""
    return "".join(f"\n{t.markdown()}" for t in defense_table_list(report))


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
