# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Certification reports: the JSON schema, the per-sample CSV and the Markdown summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from monai_adv.benchmark.io import write_json_atomic, write_text_atomic
from monai_adv.benchmark.tables import Table

__all__ = [
    "certification_schema",
    "validate_certification_report",
    "certification_csv",
    "certification_markdown",
    "certification_table",
    "write_certification_reports",
]

SCHEMA_FILE = Path(__file__).with_name("certification_report_schema.json")
_CLASSIFICATION_FIELDS = ("index", "label", "prediction", "correct", "abstained", "radius", "p_lower", "count")
_SEGMENTATION_SERIES = ("certified_fraction", "certified_dice", "certified_accuracy")


def certification_schema() -> Dict[str, Any]:
    """The JSON schema of a certification report (``monai_adv/benchmark/certification_report_schema.json``)."""
    return json.loads(SCHEMA_FILE.read_text())


def validate_certification_report(report: Mapping[str, Any]) -> None:
    """Validate ``report`` against :func:`certification_schema` (needs the ``jsonschema`` package).

    Raises:
        jsonschema.ValidationError: naming the offending entry.
    """
    import jsonschema

    jsonschema.validate(dict(report), certification_schema())


def _radius_label(radius: float) -> str:
    return f"{radius:g}"


def _cell(value: Any) -> str:
    """A CSV cell: lists (one value per label) joined by ';'; floats with enough digits to round-trip."""
    if isinstance(value, list):
        return ";".join(_cell(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


def certification_csv(report: Mapping[str, Any]) -> str:
    """One line per sample: for classification index, label, prediction (-1 = abstain), correct, abstained, radius,
    p_lower, count (multi-label: one value per label, joined by ';', and radius_min); for segmentation index,
    voxels, smoothed_dice and, per radius r, certified_fraction@r, certified_dice@r, certified_accuracy@r."""
    buffer = io.StringIO()
    labels = [_radius_label(r) for r in report["radii"]]
    if report["task"] == "segmentation":
        fields = ["index", "voxels", "smoothed_dice"]
        fields += [f"{name}@{label}" for name in _SEGMENTATION_SERIES for label in labels]
    else:
        fields = list(_CLASSIFICATION_FIELDS) + (["radius_min"] if report["task"] == "multilabel" else [])
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for sample in report["samples"]:
        row: Dict[str, Any] = {}
        for key in fields:
            name, _, radius = key.partition("@")
            value = sample[name][labels.index(radius)] if radius else sample.get(key)
            row[key] = _cell(value)
        writer.writerow(row)
    return buffer.getvalue()


def _number(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _model_name(report: Mapping[str, Any]) -> str:
    model = report.get("model")
    return str(model.get("name", "model")) if isinstance(model, Mapping) else "model"


def certification_table(report: Mapping[str, Any]) -> Table:
    """The certified curve, one row per radius: certified accuracy (classification, multi-label), or certified
    Dice, certified voxels and certified voxel accuracy (segmentation)."""
    if report["task"] == "segmentation":
        table = Table(
            "certified segmentation against the L2 radius",
            ["radius", "certified Dice", "certified voxels", "certified voxel accuracy"],
        )
        for p in report["curve"]:
            table.add(
                [_radius_label(p["radius"])]
                + [p[k] for k in ("certified_dice", "certified_fraction")]
                + [p["certified_accuracy"]]
            )
    else:
        table = Table("certified accuracy against the L2 radius", ["radius", "certified accuracy"])
        for p in report["curve"]:
            table.add([_radius_label(p["radius"]), p["certified_accuracy"]])
    return table


def certification_markdown(report: Mapping[str, Any]) -> str:
    """A Markdown summary: the settings, the guarantee, the curve (one row per radius) and the whole-data figures."""
    task = report["task"]
    head = (
        f"Certified robustness of {_model_name(report)} by randomized smoothing ({task}, L2, sigma "
        f"{report['sigma']:g}, n0 {report['n0']}, n {report['n']:,}, alpha {report['alpha']:g}, "
        f"{report['num_samples']} samples)"
    )
    lines: List[str] = [head, "", f"Guarantee: {report['guarantee']}", ""]
    lines.append(certification_table(report).markdown().split("\n", 2)[2].rstrip("\n"))
    summary = report.get("summary") or {}
    if summary:
        lines += [""] + [f"- {key.replace('_', ' ')}: {_number(value)}" for key, value in summary.items()]
    if task == "segmentation":
        lines.append(
            f"- multiple-testing correction over each image's voxels: {report['correction']}; Dice over the "
            f"{'classes including' if report.get('include_background') else 'foreground classes, without'} "
            "the background; abstained voxels count against every class (a lower bound)"
        )
    lines.append(f"- {report['seconds']:.1f} s")
    for note in report.get("notes") or []:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def write_certification_reports(report: Mapping[str, Any], folder: Union[str, Path]) -> Dict[str, Path]:
    """Write ``certification.json`` (the report), ``certification.csv`` (one line per sample) and
    ``certification.md`` (the summary) in ``folder``, each atomically. Returns the paths by kind."""
    folder = Path(folder)
    return {
        "json": write_json_atomic(folder / "certification.json", dict(report)),
        "csv": write_text_atomic(folder / "certification.csv", certification_csv(report)),
        "markdown": write_text_atomic(folder / "certification.md", certification_markdown(report)),
    }
