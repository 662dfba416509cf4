# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Accumulators of a robustness evaluation: one cell per (attack, budget), and the report they make."""

from __future__ import annotations

import datetime
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from monai_adv import __version__
from monai_adv.metrics import PRIMARY_METRIC, AdditionalMetrics, SampleOutcome, make_task_metrics
from monai_adv.metrics.rows import Rows, concat_rows, select_rows

__all__ = [
    "CellAccumulator",
    "RobustnessResults",
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "WORST_CASE",
    "corruption_cell",
    "derived_success",
]

REPORT_SCHEMA = "monai_adv.robustness_report"
REPORT_SCHEMA_VERSION = "1.2"
#: the name of each budget's per-sample worst case across the attacks
WORST_CASE = "worst-case"


def corruption_cell(name: str) -> str:
    """The cell name of a corruption (its key is ``(cell name, severity)``)."""
    return f"corruption/{name}"


def _number(value: float) -> Optional[float]:
    """JSON has no NaN or Inf: undefined values (e.g. ROC-AUC with one class, a distance to an empty prediction)
    become None."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def derived_success(task: str, outcome: SampleOutcome, clean: SampleOutcome, seg_success_ratio: float) -> torch.Tensor:
    """Per-sample attack success read from the scored outputs: a wrong prediction (classification: wrong class;
    multi-label: a label wrong), or for segmentation a Dice below ``seg_success_ratio`` of the clean Dice."""
    if task == "segmentation":
        return outcome.quality < seg_success_ratio * clean.quality.to(outcome.quality.device)
    return ~outcome.correct


class CellAccumulator:
    """Everything measured for one attack at one budget (or the clean inputs), kept as per-sample rows.

    Each batch adds one row per sample: its index in the data set, whether it is right, its quality (margin or Dice),
    whether it was eligible and broken, its perturbation norms, its share of the batch's wall time and model queries,
    and the rows of the task's metrics and of the additional metrics. The summary is computed from the rows of all
    samples in index order, a sample added twice counting once, so the rows of several batches, processes or runs
    give the same summary as one uninterrupted single-process run.

    Args:
        task: the task.
        num_classes: the model's outputs (classes, labels or segmentation channels).
        seg_success_ratio: a segmentation sample counts as broken when its Dice falls below this fraction of
            its clean Dice.
        additional_metrics: ``{name: metric}`` computed on this cell's predictions with fresh copies (see
            :class:`~monai_adv.metrics.AdditionalMetrics`); their values join the task's metrics.
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        seg_success_ratio: float = 0.5,
        additional_metrics: Optional[Mapping[str, Any]] = None,
        universal_names: Sequence[str] = (),
        patch_names: Sequence[str] = (),
        patch_sizes: Sequence[float] = (),
        corruptions: Sequence[str] = (),
        severities: Sequence[int] = (),
    ) -> None:
        self.task = task
        self.universal_names = list(universal_names)
        self.patch_names, self.patch_sizes = list(patch_names), list(patch_sizes)
        self.corruptions, self.severities = list(corruptions), list(severities)
        self.ratio = seg_success_ratio
        self.metrics = make_task_metrics(task, num_classes)
        self.additional = AdditionalMetrics(additional_metrics or {}, task, num_classes)
        self.parts: List[Rows] = []
        self.seconds_last = 0.0
        self.queries_last = 0

    def add(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        outcome: SampleOutcome,
        clean: SampleOutcome,
        norms: Optional[torch.Tensor],
        seconds: float,
        queries: int,
        success: Optional[torch.Tensor] = None,
        index: Optional[torch.Tensor] = None,
        extra: Optional[Rows] = None,
    ) -> Rows:
        """Add a batch: the logits and per-sample outcome on the (adversarial) inputs, the clean outcome, the
        per-sample perturbation norms (N, 2) or None for clean inputs, the wall time, the model queries, the
        per-sample attack success (None: read from the outcomes, see :func:`derived_success`), the samples'
        indices in the data set (None: they follow the samples added before) and more per-sample rows to keep
        with them (``extra``, e.g. the sanity-check flags). Returns the batch's rows.

        A sample is eligible when its clean prediction is right (classification, multi-label) or its clean Dice
        is above 0 (segmentation); it is broken when it is eligible and the attack succeeded on it."""
        n = int(outcome.correct.shape[0])
        if index is None:
            index = torch.arange(self.num_rows, self.num_rows + n)
        eligible = (clean.quality > 0) if self.task == "segmentation" else clean.correct
        if success is None:
            success = derived_success(self.task, outcome, clean, self.ratio)
        broken = eligible & success.to(device=eligible.device, dtype=torch.bool)
        rows: Rows = {
            "index": torch.as_tensor(index, dtype=torch.long).cpu(),
            "correct": outcome.correct.cpu(),
            "quality": outcome.quality.cpu(),
            "eligible": eligible.cpu(),
            "broken": broken.cpu(),
            "seconds": torch.full((n,), seconds / max(n, 1), dtype=torch.float64),
            "queries": torch.full((n,), int(queries) / max(n, 1), dtype=torch.float64),
        }
        if norms is not None:
            rows["norms"] = norms.cpu()
        rows.update({f"task/{k}": v for k, v in self.metrics.rows(logits, labels, outcome.predictions).items()})
        rows.update({f"metric/{k}": v for k, v in self.additional.rows(outcome.predictions, labels).items()})
        rows.update({k: torch.as_tensor(v).cpu() for k, v in (extra or {}).items()})
        self.parts.append(rows)
        self.seconds_last, self.queries_last = seconds, int(queries)
        return rows

    def extend(self, rows: Rows) -> None:
        """Add rows made elsewhere (another process, an earlier run)."""
        if rows and rows["index"].numel():
            self.parts.append(dict(rows))

    @property
    def num_rows(self) -> int:
        return sum(int(p["index"].numel()) for p in self.parts)

    def rows(self) -> Rows:
        """The rows of every sample, in index order, each sample once (the first rows added for it)."""
        rows = concat_rows(self.parts)
        if not rows:
            return rows
        order = torch.sort(rows["index"], stable=True).indices
        index = rows["index"][order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        return select_rows(rows, order[first])

    @property
    def num_samples(self) -> int:
        return int(self.rows()["index"].numel()) if self.parts else 0

    def summary(self) -> Dict[str, Any]:
        """The metrics of the task plus success rate, perturbation norms, time and queries."""
        if not self.parts:
            raise RuntimeError("No batch was added to the metrics.")
        rows = self.rows()
        n = int(rows["index"].numel())
        task_rows = {k[len("task/") :]: v for k, v in rows.items() if k.startswith("task/")}
        metric_rows = {k[len("metric/") :]: v for k, v in rows.items() if k.startswith("metric/")}
        values = {**self.metrics.compute_rows(task_rows), **self.additional.compute_rows(metric_rows)}
        out: Dict[str, Any] = {"metrics": {k: _number(v) for k, v in values.items()}}
        eligible = int(rows["eligible"].sum())
        out["success_rate"] = _number(int(rows["broken"].sum()) / eligible) if eligible else None
        if "norms" in rows:
            norms = rows["norms"]
            out["linf_mean"], out["linf_max"] = float(norms[:, 0].mean()), float(norms[:, 0].max())
            out["l2_mean"] = float(norms[:, 1].mean())
        seconds, queries = float(rows["seconds"].sum()), float(rows["queries"].sum())
        out.update(seconds=seconds, queries_per_sample=queries / n if n else 0.0, samples=n)
        return out


class RobustnessResults:
    """The cells of an evaluation: the clean inputs, and one per (attack, budget) including the worst case.

    Args:
        task: the resolved task.
        num_classes: the model's outputs.
        eps_values: the budgets.
        attack_names: the suite's attack names, in order.
        seg_success_ratio: see :class:`CellAccumulator`.
        additional_metrics: ``{name: metric}`` computed in every cell (clean, each attack and budget, worst case),
            each cell with its own copy; see :class:`CellAccumulator`.
        universal_names: the attacks of ``attack_names`` that apply one fitted perturbation to every image.
        patch_names: the patch attacks, whose cells are keyed by patch size (``patch_sizes``), not eps.
        patch_sizes: the patch sizes.
        corruptions: the corruption names, whose cells are keyed by :func:`corruption_cell` and severity.
        severities: the corruption severities.
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        eps_values: Sequence[float],
        attack_names: Sequence[str],
        seg_success_ratio: float = 0.5,
        additional_metrics: Optional[Mapping[str, Any]] = None,
        universal_names: Sequence[str] = (),
        patch_names: Sequence[str] = (),
        patch_sizes: Sequence[float] = (),
        corruptions: Sequence[str] = (),
        severities: Sequence[int] = (),
    ) -> None:
        self.task = task
        self.universal_names = list(universal_names)
        self.patch_names, self.patch_sizes = list(patch_names), list(patch_sizes)
        self.corruptions, self.severities = list(corruptions), list(severities)
        self.num_classes = int(num_classes)
        self.eps_values = list(eps_values)
        self.attack_names = list(attack_names)
        self.ratio = seg_success_ratio
        self.additional_metrics = dict(additional_metrics or {})
        self.clean = CellAccumulator(task, num_classes, seg_success_ratio, self.additional_metrics)
        self.cells: Dict[Tuple[str, float], CellAccumulator] = {}

    def cell(self, attack: str, eps: float) -> CellAccumulator:
        """The accumulator of ``attack`` at ``eps`` (created on first use)."""
        key = (attack, eps)
        if key not in self.cells:
            self.cells[key] = CellAccumulator(self.task, self.num_classes, self.ratio, self.additional_metrics)
        return self.cells[key]

    def extend(self, cells: Sequence[Sequence[Any]]) -> None:
        """Add rows made elsewhere: ``[[attack or None (clean), eps or None, rows], ...]`` as :meth:`export` gives."""
        for attack, eps, rows in cells:
            (self.clean if attack is None else self.cell(attack, eps)).extend(rows)

    def export(self) -> List[List[Any]]:
        """The rows of every cell, ``[[None, None, clean rows], [attack, eps, rows], ...]`` (host tensors)."""
        cells: List[List[Any]] = [[None, None, concat_rows(self.clean.parts)]]
        for (attack, eps), cell in self.cells.items():
            cells.append([attack, eps, concat_rows(cell.parts)])
        return cells

    def rows(self) -> List[Tuple[str, float, CellAccumulator]]:
        """The cells of the eps-budget attacks in report order: budgets ascending, attacks in suite order, the worst
        case last."""
        names = self.attack_names + [WORST_CASE]
        return [(a, e, self.cells[(a, e)]) for e in sorted(self.eps_values) for a in names if (a, e) in self.cells]

    def patch_rows(self) -> List[Tuple[str, float, CellAccumulator]]:
        """The cells of the patch attacks: sizes ascending, attacks in suite order."""
        keys = [(a, s) for s in sorted(self.patch_sizes) for a in self.patch_names]
        return [(a, s, self.cells[(a, s)]) for a, s in keys if (a, s) in self.cells]

    def corruption_rows(self) -> List[Tuple[str, int, CellAccumulator]]:
        """The cells of the corruptions: in the given order, severities ascending."""
        keys = [(c, v) for c in self.corruptions for v in sorted(self.severities)]
        return [(c, v, self.cells[(corruption_cell(c), v)]) for c, v in keys if (corruption_cell(c), v) in self.cells]

    def flat_metrics(self, value_range: Optional[Sequence[float]]) -> Dict[str, float]:
        """Flat entries for ``engine.state.metrics``: "clean/accuracy", "pgd-20@4/255/accuracy", ..."""
        from monai_adv.engines.attack_suite import eps_label

        flat = {f"clean/{k}": v for k, v in self.clean.summary()["metrics"].items()}
        for attack, eps, cell in self.rows():
            summary = cell.summary()
            prefix = f"{attack}@{eps_label(eps, value_range)}"
            flat.update({f"{prefix}/{k}": v for k, v in summary["metrics"].items()})
            flat[f"{prefix}/success_rate"] = summary["success_rate"]
        from monai_adv.attacks.patch import size_label

        for attack, size, cell in self.patch_rows():
            flat.update({f"{attack}@{size_label(size)}/{k}": v for k, v in cell.summary()["metrics"].items()})
        corruption_rows = self.corruption_rows()
        for name, severity, cell in corruption_rows:
            flat.update({f"{name}@s{severity}/{k}": v for k, v in cell.summary()["metrics"].items()})
        if corruption_rows:
            flat.update({f"corruption/mean_{k}": v for k, v in self._corruption_means(corruption_rows).items()})
        return flat

    @staticmethod
    def _corruption_means(rows: List[Tuple[str, int, CellAccumulator]]) -> Dict[str, Optional[float]]:
        """Each metric's mean over every corruption and severity (e.g. the mean corruption accuracy)."""
        values: Dict[str, List[float]] = {}
        for _, _, cell in rows:
            for metric, value in cell.summary()["metrics"].items():
                values.setdefault(metric, []).append(value)
        return {k: None if None in v else sum(v) / len(v) for k, v in values.items()}

    def _family_sections(self, clean: Dict[str, Any]) -> Dict[str, Any]:
        """The report's ``patches`` and ``corruptions`` sections (only those with cells)."""
        from monai_adv.attacks.patch import size_label
        from monai_adv.transforms.corruptions import corruption_parameters

        sections: Dict[str, Any] = {}
        patch_rows = self.patch_rows()
        if patch_rows:
            sections["patches"] = [
                {"attack": a, "size": s, "size_label": size_label(s), **c.summary()} for a, s, c in patch_rows
            ]
        corruption_rows = self.corruption_rows()
        if corruption_rows:
            results = [
                {"corruption": n, "severity": v, "parameters": corruption_parameters(n, v), **c.summary()}
                for n, v, c in corruption_rows
            ]
            means = self._corruption_means(corruption_rows)
            per_corruption = {
                n: self._corruption_means([r for r in corruption_rows if r[0] == n]) for n in self.corruptions
            }
            relative = {
                k: None if v is None or not clean["metrics"].get(k) else v / clean["metrics"][k]
                for k, v in means.items()
            }
            sections["corruptions"] = {
                "severities": sorted(self.severities),
                "results": results,
                "mean": means,
                "relative_to_clean": relative,
                "per_corruption": per_corruption,
            }
        return sections

    def per_class(self, eps_label: Callable[[float], str]) -> Dict[str, Any]:
        """The report's ``per_class`` section: the task's per-class metric (recall for classification and
        multi-label, Dice per foreground class for segmentation) on the clean inputs and in every eps-budget cell.
        """

        def values(cell: CellAccumulator) -> Dict[str, Any]:
            rows = cell.rows()
            return self.clean.metrics.per_class_rows({k[5:]: v for k, v in rows.items() if k.startswith("task/")})

        clean = values(self.clean)
        return {
            "metric": clean["metric"],
            "classes": clean["classes"],
            "support": clean["support"],
            "clean": clean["values"],
            "results": [
                {"attack": attack, "eps": eps, "eps_label": eps_label(eps), "values": values(cell)["values"]}
                for attack, eps, cell in self.rows()
            ],
        }

    def report(
        self,
        norm: str,
        value_range: Optional[Sequence[float]],
        setting: str,
        attacks: List[Dict[str, Any]],
        eps_label: Callable[[float], str],
        **info: Any,
    ) -> Dict[str, Any]:
        """The JSON-ready report (schema ``monai_adv.robustness_report``, :data:`REPORT_SCHEMA_VERSION`)."""
        clean = self.clean.summary()
        results = []
        for attack, eps, cell in self.rows():
            row = {"attack": attack, "eps": eps, "eps_label": eps_label(eps), **cell.summary()}
            row["threat_model"] = (
                "worst-case" if attack == WORST_CASE else "universal" if attack in self.universal_names else "per-image"
            )
            rows = cell.rows()
            if "changed" in rows:  # universal: the share of images whose prediction the perturbation changes
                row["fooling_rate"] = float(rows["changed"].float().mean()) if rows["changed"].numel() else None
            results.append(row)
        report = {
            "schema": REPORT_SCHEMA,
            "schema_version": REPORT_SCHEMA_VERSION,
            "monai_adv_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "task": self.task,
            "primary_metric": PRIMARY_METRIC[self.task],
            "setting": setting,
            "norm": norm,
            "value_range": None if value_range is None else [float(v) for v in value_range],
            "num_samples": self.clean.num_samples,
            "num_classes": self.num_classes,
            "eps": sorted(self.eps_values),
            "eps_labels": [eps_label(e) for e in sorted(self.eps_values)],
            "attacks": attacks,
            "clean": {**clean["metrics"], "seconds": clean["seconds"]},
            "results": results,
            "per_class": self.per_class(eps_label),
            **self._family_sections(clean),
        }
        for key, value in info.items():
            report[key] = value
        return report
