# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``report.html``: one self-contained page made from the JSON reports of a run and the figures beside them.

The page is rendered by a Jinja2 template (``monai_adv/benchmark/templates/report.html``) from the JSON reports
alone (robustness reports and certification reports) plus the PNG figures found next to them, embedded as data
URIs, so it opens anywhere without network access, and ``monai-adv report REPORT.json ...`` rebuilds it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from monai_adv import __version__
from monai_adv.benchmark.certification_report import certification_table
from monai_adv.benchmark.io import write_text_atomic
from monai_adv.benchmark.report import (
    WORST_CASE,
    curve_tables,
    defense_table_list,
    result_table,
    threat_model_tables,
)
from monai_adv.benchmark.tables import Table, format_value

__all__ = ["FIGURES", "HTML_NAME", "load_reports", "render_html_report", "write_html_report"]

HTML_NAME = "report.html"
ROBUSTNESS_SCHEMA = "monai_adv.robustness_report"
CERTIFICATION_SCHEMA = "monai_adv.certification_report"

#: the figures a run leaves beside its reports: (file name or glob, page section, what the figure shows)
FIGURES: Tuple[Tuple[str, str, str], ...] = (
    (
        "robustness_curves.png",
        "curves",
        "Robust accuracy (Dice for segmentation) against the budget eps, the worst case over the attacks at each "
        "budget. A curve that falls steeply at small eps belongs to a model that is easy to fool.",
    ),
    (
        "robustness_curve_min_norm.png",
        "curves",
        "Robust accuracy against eps from one minimum-norm attack run: for each sample, the smallest perturbation "
        "that fools the model.",
    ),
    (
        "certified_curves.png",
        "curves",
        "Certified accuracy against the L2 radius: the share of samples the smoothed model gets right with a "
        "guarantee that no perturbation of that size changes its answer.",
    ),
    (
        "adversarial_examples*.png",
        "examples",
        "Clean images, their adversarial versions at the largest budget and the perturbation between them "
        "(amplified to be visible), with the model's prediction on each; a prediction in red is one the attack "
        "changed. On a fragile model the change is too small for a reader to notice, yet it flips the prediction.",
    ),
    (
        "gradcam.png",
        "examples",
        "Grad-CAM: where the model looks on the clean image and on the adversarial one. A model that moves its "
        "attention away from the lesion under attack is fooled by the perturbation, not by the anatomy.",
    ),
    (
        "universal_perturbations.png",
        "threats",
        "Universal perturbations: one perturbation, fitted once, added to every image.",
    ),
    ("patches.png", "threats", "Patches: a small window whose voxels the attacker may set to any value."),
    ("corruptions.png", "threats", "Natural corruptions of the acquisition (noise, bias field, blur, ...)."),
    ("threat_models.png", "threats", "The model's accuracy under each family of threat, side by side."),
)

#: (term, meaning, when it applies: None always, else a key of :func:`_features`)
_GLOSSARY: Tuple[Tuple[str, str, Optional[str]], ...] = (
    ("clean accuracy", "the share of test samples the model gets right on the unmodified images.", None),
    (
        "robust accuracy",
        "the share of test samples the model still gets right after an attack has changed the image within the "
        "budget eps. It can only be lower than the clean accuracy; a drop from 0.9 to 0.1 means that nine in "
        "ten correct answers can be flipped by a change the reader cannot see.",
        "robustness",
    ),
    (
        "eps (budget)",
        "how much the attacker may change each voxel, in the units of the image intensities (the range is given "
        "in the threat model). With intensities in [0, 1], 8/255 is about 3% of the range (L-inf: every voxel by "
        "at most that much; L2: the length of the whole change).",
        "robustness",
    ),
    (
        "worst case",
        "a sample counts as robust only if every attack fails on it. This is the number to quote: each attack "
        "alone can miss samples another one breaks.",
        "robustness",
    ),
    ("success rate", "the share of the correctly classified samples that an attack fools.", "robustness"),
    (
        "Dice",
        "for segmentation: the overlap between predicted and true lesion masks (1 = perfect, 0 = no overlap); "
        "under attack, the robust Dice.",
        "segmentation",
    ),
    ("fooling rate", "for a universal perturbation: the share of images whose prediction it changes.", "universal"),
    (
        "non-adaptive / adaptive attack",
        "for a defended model: the attack that ignores the defense (what such defenses are often published with) "
        "and the attack built against it (BPDA, EoT, detector-aware). Only the adaptive number measures the defense.",
        "defense",
    ),
    (
        "certified accuracy",
        "for randomized smoothing: the share of samples that are correct and provably stay correct for every "
        "perturbation up to the given L2 radius (with the stated confidence).",
        "certification",
    ),
)


def _features(reports: Sequence[Mapping[str, Any]]) -> set:
    """What the reports contain, to pick the glossary entries that apply."""
    found = set()
    for r in reports:
        found.add("certification" if r.get("schema") == CERTIFICATION_SCHEMA else "robustness")
        found.update({"segmentation"} if r.get("task") == "segmentation" else set())
        found.update({"defense"} if r.get("defense") or r.get("detection") else set())
        if any(row.get("threat_model") == "universal" for row in r.get("results", [])):
            found.add("universal")
    return found


def load_reports(paths: Sequence[Union[str, Path]]) -> List[Dict[str, Any]]:
    """Read the JSON reports at ``paths`` (robustness or certification reports of this package).

    Raises:
        ValueError: a path that is not a readable JSON report, named with what was found instead.
    """
    if not paths:
        raise ValueError("`reports` must name at least one JSON report (e.g. monai_adv_eval/model.json).")
    reports = []
    for path in paths:
        path = Path(path)
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"`reports`: {path} is not a readable JSON file ({error}).") from error
        if not isinstance(report, dict) or report.get("schema") not in (ROBUSTNESS_SCHEMA, CERTIFICATION_SCHEMA):
            raise ValueError(
                f"`reports`: {path} is not a monai_adv report (expected a JSON object with schema "
                f"{ROBUSTNESS_SCHEMA!r} or {CERTIFICATION_SCHEMA!r})."
            )
        reports.append(report)
    return reports


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figures(folder: Optional[Path]) -> Dict[str, List[Dict[str, str]]]:
    """``{section: [{"name", "caption", "src"}, ...]}`` for the figures of :data:`FIGURES` found in ``folder``."""
    found: Dict[str, List[Dict[str, str]]] = {}
    if folder is None or not folder.is_dir():
        return found
    for pattern, section, caption in FIGURES:
        for path in sorted(folder.glob(pattern)):
            if path.is_file():
                found.setdefault(section, []).append({"name": path.name, "caption": caption, "src": _data_uri(path)})
    return found


def _model_name(report: Mapping[str, Any], index: int) -> str:
    return str((report.get("model") or {}).get("name") or f"model {index + 1}")


def _card(report: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The model and data card: what was evaluated, on what."""
    rows = [(f"model: {k}", _text(v)) for k, v in (report.get("model") or {}).items()]
    rows += [(f"data: {k}", _text(v)) for k, v in (report.get("data") or {}).items()]
    rows += [("task", str(report["task"])), ("samples", str(report["num_samples"]))]
    rows += [("classes", str(report["num_classes"]))] if "num_classes" in report else []
    return rows


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(_text(v) for v in value) if all(isinstance(v, int) for v in value) else json.dumps(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    return str(value)


def _threat_model(report: Mapping[str, Any]) -> Dict[str, Any]:
    value_range = report.get("value_range")
    return {
        "norm": report["norm"],
        "setting": report["setting"],
        "budgets": ", ".join(report["eps_labels"]),
        "value_range": "not clipped" if value_range is None else f"[{value_range[0]:g}, {value_range[1]:g}]",
        "attacks": [
            {"name": a["name"], "attack": a["attack"], "settings": _text(a.get("kwargs") or {}) or "defaults"}
            for a in report["attacks"]
        ],
    }


def _summary(report: Mapping[str, Any]) -> Dict[str, Any]:
    """The headline numbers: the clean metric and the worst case at each budget, with one sentence saying them."""
    metric = report["primary_metric"]
    clean = report["clean"].get(metric)
    worst = {r["eps_label"]: r["metrics"].get(metric) for r in report["results"] if r["attack"] == WORST_CASE}
    if not worst:  # a single attack: its rows are the worst case
        worst = {r["eps_label"]: r["metrics"].get(metric) for r in report["results"]}
    points = [{"eps": label, "value": format_value(worst.get(label))} for label in report["eps_labels"]]
    last = report["eps_labels"][-1] if report["eps_labels"] else None
    final = worst.get(last) if last else None
    if clean is None or final is None:
        verdict, level = f"{metric} could not be computed for every budget (see the notes).", "unknown"
    else:
        drop = clean - final
        level = "fragile" if final < 0.5 * clean else "moderate" if drop > 0.1 * clean else "robust"
        verdict = (
            f"{metric} {format_value(clean)} on clean images falls to {format_value(final)} under the worst case of "
            f"{len(report['attacks'])} attack(s) at eps {last} ({report['norm']})."
        )
    return {"metric": metric, "clean": format_value(clean), "points": points, "verdict": verdict, "level": level}


def _per_class(report: Mapping[str, Any]) -> Optional[Table]:
    """The per-class table: clean and worst case at each budget (each attack's rows without a worst case)."""
    section = report.get("per_class")
    if not section:
        return None
    prefix = "class" if report["task"] != "multilabel" else "label"
    rows = [r for r in section["results"] if r["attack"] == WORST_CASE] or section["results"]
    columns = [r["eps_label"] if r["attack"] == WORST_CASE else f"{r['attack']} {r['eps_label']}" for r in rows]
    table = Table(
        f"{section['metric']} per {prefix} (worst case over the attacks at each budget; samples: those of the "
        f"{prefix}{' or predicted as it' if section['metric'] == 'dice' else ''})",
        [prefix, "samples", "clean"] + columns,
    )
    names = (report.get("data") or {}).get("class_names")
    for k, cls in enumerate(section["classes"]):
        name = f"{prefix} {cls}" if not isinstance(names, list) or len(names) <= cls else f"{cls}: {names[cls]}"
        table.add([name, str(section["support"][k]), section["clean"][k]] + [r["values"][k] for r in rows])
    return table


def _provenance(report: Mapping[str, Any]) -> List[Tuple[str, str]]:
    prov = report.get("provenance") or {}
    rows = [("created", str(prov.get("created") or report.get("created", "")))]
    rows += [("command", prov["command"])] if prov.get("command") else []
    rows += [("seed", _text(prov.get("seed", report.get("seed"))))]
    rows += [("device", prov["device"])] if prov.get("device") else []
    rows += [("platform", prov["platform"])] if prov.get("platform") else []
    versions = prov.get("versions") or {"monai-adv": report.get("monai_adv_version", "")}
    rows += [(f"version of {k}", str(v)) for k, v in versions.items()]
    return rows


def _robustness_entry(report: Mapping[str, Any], index: int) -> Dict[str, Any]:
    tables = [result_table(report)] + curve_tables(report) + threat_model_tables(report) + defense_table_list(report)
    return {
        "kind": "robustness",
        "name": _model_name(report, index),
        "anchor": f"model-{index + 1}",
        "card": _card(report),
        "threat": _threat_model(report),
        "summary": _summary(report),
        "tables": tables,
        "per_class": _per_class(report),
        "notes": list(report.get("notes") or []),
        "provenance": _provenance(report),
    }


def _certification_entry(report: Mapping[str, Any], index: int) -> Dict[str, Any]:
    settings = [
        ("guarantee", report["guarantee"]),
        ("noise sigma", f"{report['sigma']:g}"),
        ("selection / estimation draws", f"{report['n0']} / {report['n']:,}"),
        ("alpha (1 - confidence)", f"{report['alpha']:g}"),
    ]
    summary = [(k.replace("_", " "), format_value(v)) for k, v in (report.get("summary") or {}).items()]
    return {
        "kind": "certification",
        "name": _model_name(report, index),
        "anchor": f"model-{index + 1}",
        "card": _card(report),
        "settings": settings,
        "summary_rows": summary,
        "tables": [certification_table(report)],
        "notes": list(report.get("notes") or []),
        "provenance": _provenance(report) + [("seed of the noise", str(report.get("seed")))],
    }


def _shade(value: Optional[float]) -> str:
    """A cell background from red (0) to green (1) for metrics in [0, 1]; none otherwise."""
    if value is None or not 0.0 <= value <= 1.0:
        return ""
    return f"background-color: hsl({round(120 * value)}, 65%, 88%);"


def render_html_report(
    reports: Sequence[Mapping[str, Any]], folder: Optional[Union[str, Path]] = None, title: Optional[str] = None
) -> str:
    """The page of ``reports`` (robustness and/or certification reports) with the figures found in ``folder``.

    Args:
        reports: the JSON reports, in the order to show them (e.g. NAT before PGD-AT).
        folder: where the run's PNG figures are (see :data:`FIGURES`); None: no figures.
        title: the page's title; default from the models' names.
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    if not reports:
        raise ValueError("`reports` must hold at least one report.")
    entries = []
    for index, report in enumerate(reports):
        schema = report.get("schema")
        if schema == ROBUSTNESS_SCHEMA:
            entries.append(_robustness_entry(report, index))
        elif schema == CERTIFICATION_SCHEMA:
            entries.append(_certification_entry(report, index))
        else:
            raise ValueError(f"`reports[{index}]` has schema {schema!r}, not a monai_adv report.")
    robustness = [r for r in reports if r.get("schema") == ROBUSTNESS_SCHEMA]
    comparable = len(robustness) > 1 and len({tuple(r["eps_labels"]) for r in robustness}) == 1
    names = [e["name"] for e in entries]
    comparison = None
    if comparable:
        comparison = result_table({e["name"]: r for e, r in zip(entries, reports) if e["kind"] == "robustness"})
    threats = [e["threat"] for e in entries if e["kind"] == "robustness"]
    environment = Environment(
        loader=PackageLoader("monai_adv.benchmark", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["shade"] = _shade
    certification = any(e["kind"] == "certification" for e in entries)
    kind = "Certified robustness report" if certification and not robustness else "Robustness report"
    return environment.get_template("report.html").render(
        title=title or f"{kind}: " + ", ".join(names),
        has_robustness=bool(robustness),
        has_certification=certification,
        has_per_class=any(e.get("per_class") for e in entries),
        version=__version__,
        entries=entries,
        comparison=comparison,
        shared_threat=threats[0] if threats and all(t == threats[0] for t in threats) else None,
        figures=_figures(None if folder is None else Path(folder)),
        glossary=[(t, m) for t, m, when in _GLOSSARY if when is None or when in _features(reports)],
        css=(Path(__file__).with_name("templates") / "report.css").read_text(encoding="utf-8"),
    )


def write_html_report(
    reports: Sequence[Mapping[str, Any]],
    folder: Union[str, Path],
    name: str = HTML_NAME,
    title: Optional[str] = None,
) -> Path:
    """Render :func:`render_html_report` with the figures of ``folder`` and write it there as ``name``
    (atomically). Returns the path."""
    folder = Path(folder)
    return write_text_atomic(folder / name, render_html_report(reports, folder, title))
