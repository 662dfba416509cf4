# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The survey's benchmark grid: training methods x budgets x attacks, for classification and segmentation.

Each cell (task, method, budget) trains a model with the method at that budget (the natural model once per task)
and scores it under the task's attack suite at the same budget. Every finished cell is written atomically
(``cells/<task>/<method>@<eps>.json``, the model to ``models/``); a rerun skips the finished cells, so a killed
run loses at most the cell in progress and ends with the same tables as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from monai.data import DataLoader
from monai.networks.nets import UNet

from monai_adv.benchmark.html_report import write_html_report
from monai_adv.benchmark.io import save_state_dict_atomic, write_json_atomic, write_text_atomic
from monai_adv.benchmark.networks import small_classifier
from monai_adv.benchmark.progress import attach_progress
from monai_adv.benchmark.training import TRAINING_METHODS, train_with_defense
from monai_adv.data import BrainLesionDataset, MedMNISTDataset
from monai_adv.defenses.registry import defense_class
from monai_adv.devices import host_state_dict, resolve_device
from monai_adv.engines import SURVEY_ATTACKS, RobustnessEvaluator, RobustnessEvents, eps_label, parse_attack_specs

__all__ = ["GridConfig", "SEGMENTATION_ATTACKS", "run_grid", "grid_markdown", "grid_csv", "method_reports"]

#: the survey's segmentation attacks: FGSM, and PGD-20 on the cross-entropy and on the Dice loss
SEGMENTATION_ATTACKS = (
    "fgsm",
    {"attack": "pgd", "name": "pgd-20-ce", "steps": 20, "alpha": "survey", "loss": "ce"},
    {"attack": "pgd", "name": "pgd-20-dice", "steps": 20, "alpha": "survey", "loss": "dice"},
)
TASKS = ("classification", "segmentation")


@dataclass
class GridConfig:
    """Settings of the benchmark grid.

    Attributes:
        out: the results folder (cells, models, tables, plots).
        data: "demo" (the embedded data set; both tasks) or "medmnist:<file.npz>" (classification only).
        tasks: "classification" and/or "segmentation".
        methods: training methods (see :data:`TRAINING_METHODS`); methods a task does not support are skipped.
        eps: the budgets (training and evaluation).
        attacks: the classification suite (None: FGSM, PGD-20, CW-30, AutoAttack); segmentation uses
            :data:`SEGMENTATION_ATTACKS`.
        epochs, train_samples, test_samples, image_size, batch_size: training and data sizes.
        seed: seed of data order, initialisation and attacks.
        device: where the models train and are attacked ("cpu", "cuda", "cuda:1", ...); None: ``cuda`` when
            available, else ``cpu``. Not a result setting: a run may resume on another device.
        progress: show progress bars.
    """

    out: Path = Path("monai_adv_benchmark")
    data: str = "demo"
    tasks: Sequence[str] = TASKS
    methods: Sequence[str] = ("nat", "pgd_at", "trades", "mart", "hat")
    eps: Sequence[float] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    attacks: Optional[Sequence[Any]] = None
    epochs: int = 6
    train_samples: int = 1000
    test_samples: int = 200
    image_size: int = 32
    batch_size: int = 100
    seed: int = 0
    device: Optional[str] = None
    progress: bool = True


def _datasets(config: GridConfig, task: str) -> Tuple[Any, Any, int, int]:
    """(train, test, input channels, classes) of the task."""
    kind, _, arg = config.data.partition(":")
    if kind == "demo":
        demo_task = "classification" if task == "classification" else "segmentation"
        size = config.image_size
        train = BrainLesionDataset("train", demo_task, 2, num_samples=config.train_samples, image_size=size)
        test = BrainLesionDataset("test", demo_task, 2, num_samples=config.test_samples, image_size=size)
        return train, test, 1, 2
    if kind == "medmnist" and task == "classification":
        train, test = MedMNISTDataset(arg, split="train"), MedMNISTDataset(arg, split="test")
        train = [train[i] for i in range(min(config.train_samples, len(train)))]
        test = [test[i] for i in range(min(config.test_samples, len(test)))]
        labels = torch.stack([torch.as_tensor(s["label"]) for s in train])
        classes = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
        return train, test, int(train[0]["image"].shape[0]), classes
    raise ValueError(
        f'`data` must be "demo" or "medmnist:<file.npz>" (classification only), got {config.data!r} for {task}.'
    )


def _network(task: str, channels: int, classes: int) -> torch.nn.Module:
    if task == "segmentation":
        return UNet(2, channels, classes, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    return small_classifier(channels, classes)


def _tag(method: str, eps: float) -> str:
    return f"{method}@{eps_label(eps).replace('/', 'over')}"


def _cells(config: GridConfig) -> List[Tuple[str, str, float]]:
    cells = []
    for task in config.tasks:
        if task not in TASKS:
            raise ValueError(f"`tasks` entries must be one of {TASKS}, got {task!r}.")
        for method in config.methods:
            if method not in TRAINING_METHODS:
                raise ValueError(f"`methods` entries must be one of {TRAINING_METHODS}, got {method!r}.")
            if task in defense_class(method).tasks:
                cells += [(task, method, eps) for eps in config.eps]
    return cells


#: the settings a stored cell or model depends on; a resumed run must have the same ones
RESULT_SETTINGS = ("data", "attacks", "epochs", "train_samples", "test_samples", "image_size", "batch_size", "seed")
SETTINGS_FILE = "settings.json"


def _settings(config: GridConfig) -> Dict[str, Any]:
    values = {key: getattr(config, key) for key in RESULT_SETTINGS}
    values["attacks"] = (
        None if config.attacks is None else [a if isinstance(a, str) else dict(a) for a in config.attacks]
    )
    return json.loads(json.dumps(values, default=str))


def _check_resume(out: Path, config: GridConfig) -> None:
    """Refuse to resume into a folder whose results were made with other settings; record them on a first run.

    Stale temporary files of a killed run (``.*.tmp``) are removed.
    """
    for stale in out.rglob(".*.tmp*") if out.is_dir() else ():
        if stale.is_file():
            stale.unlink(missing_ok=True)
    path = out / SETTINGS_FILE
    settings = _settings(config)
    if path.is_file():
        stored = _read_json(path)
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        if differ:
            shown = ", ".join(f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}" for k in differ)
            raise ValueError(
                f"{out} holds results made with other settings ({shown}); resume with the same settings, or give "
                "a new --out"
            )
    elif (out / "cells").is_dir() or (out / "models").is_dir():
        raise ValueError(
            f"{out} holds results without a record of their settings ({SETTINGS_FILE}); give a new --out (or delete "
            "the folder)"
        )
    else:
        write_json_atomic(path, settings)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt ({e}); delete it to recompute it, or give a new --out") from None


def run_grid(config: GridConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or resume) the grid; return ``{"cells": {(task, method, eps): report}, "tables": {task: markdown}}``.

    A rerun into the same folder resumes: finished cells and trained models are reused, but only when they were
    made with the same :data:`RESULT_SETTINGS` (recorded in ``settings.json``); other settings are refused.
    """
    out = Path(config.out)
    if config.test_samples < 1 or config.train_samples < 1 or config.epochs < 1:
        raise ValueError("`epochs`, `train_samples` and `test_samples` must be >= 1.")
    parse_attack_specs(list(config.attacks or SURVEY_ATTACKS))  # unknown attacks fail before any training
    device = resolve_device(config.device)
    cells = _cells(config)
    _check_resume(out, config)
    done: Dict[Tuple[str, str, float], Dict[str, Any]] = {}
    data: Dict[str, Tuple[Any, Any, int, int]] = {}
    for task, method, eps in cells:
        path = out / "cells" / task / f"{_tag(method, eps)}.json"
        if path.is_file():
            done[(task, method, eps)] = _read_json(path)
            continue
        if task not in data:
            data[task] = _datasets(config, task)
        train, test, channels, classes = data[task]
        log(f"cell {len(done) + 1}/{len(cells)}: {task}, {method}, eps {eps_label(eps)}")
        network = _trained(config, task, method, eps, train, channels, classes, device)
        evaluator = RobustnessEvaluator(
            device=device,
            val_data_loader=DataLoader(test, batch_size=config.batch_size),
            network=network,
            attacks=list(SEGMENTATION_ATTACKS if task == "segmentation" else (config.attacks or SURVEY_ATTACKS)),
            eps=[eps],
            task="segmentation" if task == "segmentation" else "auto",
            seed=config.seed,
        )
        steps = evaluator.total_attack_runs * len(evaluator.data_loader)
        attach_progress(evaluator, RobustnessEvents.ATTACK_COMPLETED, steps, f"attack {method}", config.progress)
        evaluator.run()
        report = evaluator.report(
            model={"name": method, "training": method, "train_eps": 0.0 if method == "nat" else eps},
            data={"name": config.data, "task": task, "samples": len(test)},
        )
        write_json_atomic(path, report)
        done[(task, method, eps)] = report
    tables = {}
    for task in config.tasks:
        task_cells = {k: v for k, v in done.items() if k[0] == task}
        if not task_cells:
            continue
        tables[task] = grid_markdown(task_cells)
        write_text_atomic(out / f"benchmark_{task}.md", tables[task])
        write_text_atomic(out / f"benchmark_{task}.csv", grid_csv(task_cells))
        log(f"\n{task}\n\n{tables[task]}")
    if done:
        write_html_report(_page_reports(done, config.tasks), out, title="monai_adv benchmark")
    return {"cells": done, "tables": tables}


def _page_reports(cells: Dict[Tuple[str, str, float], Dict[str, Any]], tasks: Sequence[str]) -> List[Dict[str, Any]]:
    """The reports of ``report.html``: one per task and method (NAT first) across the budgets, each named
    "<method> (<task>)" when the grid has several tasks."""
    reports = []
    for task in tasks:
        merged = method_reports(cells, task)
        for method in sorted(merged, key=lambda m: (m != "nat", m)):
            report = dict(merged[method])
            if len(tasks) > 1:
                report["model"] = {**report.get("model", {}), "name": f"{method} ({task})"}
            reports.append(report)
    return reports


def _trained(config, task, method, eps, train, channels, classes, device) -> torch.nn.Module:
    """The model of a cell, on ``device``: loaded when an earlier run finished training it, else trained and saved
    (from the host, so that a run resumes on any device)."""
    tag = "nat" if method == "nat" else _tag(method, eps)
    path = Path(config.out) / "models" / task / f"{tag}.pt"
    network = _network(task, channels, classes)
    if path.is_file():
        try:
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # a truncated or foreign file
            raise ValueError(
                f"{path} is not a readable model ({e}); delete it to retrain, or give a new --out"
            ) from None
        return network.to(device).eval()
    helper = None
    if method == "hat":
        helper = _trained(config, task, "nat", eps, train, channels, classes, device)
    torch.manual_seed(config.seed)
    network = _network(task, channels, classes)
    train_with_defense(
        network,
        method,
        train,
        eps=eps,
        epochs=config.epochs,
        seed=config.seed,
        helper=helper,
        defense_kwargs={"loss": "dice"} if task == "segmentation" and method != "nat" else None,
        device=device,
        progress=config.progress,
        description=f"train {method} {eps_label(eps)}",
    )
    save_state_dict_atomic(path, host_state_dict(network))
    return network


def _metric_row(report: Dict[str, Any]) -> Dict[str, Optional[float]]:
    metric = report["primary_metric"]
    row = {"clean": report["clean"].get(metric)}
    for result in report["results"]:
        row[result["attack"]] = result["metrics"].get(metric)
    return row


def grid_markdown(cells: Dict[Tuple[str, str, float], Dict[str, Any]]) -> str:
    """The survey-style table of one task: a row per (method, budget), a column per attack (clean first)."""
    first = next(iter(cells.values()))
    columns: List[str] = []
    for report in cells.values():
        for key in _metric_row(report):
            if key not in columns:
                columns.append(key)
    lines = [
        f"{first['primary_metric']} ({first['norm']}, {first['num_samples']} test samples; models trained and "
        "attacked at the same eps)",
        "",
        "| method | eps | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for (_, method, eps), report in sorted(cells.items(), key=lambda kv: (kv[0][1] != "nat", kv[0][1], kv[0][2])):
        row = _metric_row(report)
        values = ["" if row.get(c) is None else f"{row[c]:.3f}" for c in columns]
        lines.append(f"| {method} | {eps_label(eps)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def grid_csv(cells: Dict[Tuple[str, str, float], Dict[str, Any]]) -> str:
    """The grid in long form: task, method, eps, attack, metric, value."""
    lines = ["task,method,eps,eps_label,attack,metric,value"]
    for (task, method, eps), report in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        for metric, value in report["clean"].items():
            if metric != "seconds":
                v = "" if value is None else value
                lines.append(f"{task},{method},{eps!r},{eps_label(eps)},clean,{metric},{v}")
        for result in report["results"]:
            for metric, value in result["metrics"].items():
                v = "" if value is None else value
                lines.append(f"{task},{method},{eps!r},{eps_label(eps)},{result['attack']},{metric},{v}")
    return "\n".join(lines) + "\n"


def method_reports(cells: Dict[Tuple[str, str, float], Dict[str, Any]], task: str) -> Dict[str, Dict[str, Any]]:
    """One report per method across the budgets (for robustness curves): the rows of all its cells; the clean
    metrics are those of its smallest-budget model."""
    merged: Dict[str, Dict[str, Any]] = {}
    for (cell_task, method, eps), report in sorted(cells.items(), key=lambda kv: kv[0][2]):
        if cell_task != task:
            continue
        if method not in merged:
            merged[method] = {**report, "eps": [], "eps_labels": [], "results": []}
        merged[method]["eps"].append(eps)
        merged[method]["eps_labels"].append(eps_label(eps))
        merged[method]["results"].extend(report["results"])
    return merged
