# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-sample rows of a certification by randomized smoothing, and the certification report they make."""

from __future__ import annotations

import datetime
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from monai_adv import __version__
from monai_adv.certify import ABSTAIN, Certificate, SegmentationCertificate, certified_dice
from monai_adv.metrics.rows import Rows, concat_rows, select_rows

__all__ = [
    "CERTIFICATION_SCHEMA",
    "CERTIFICATION_SCHEMA_VERSION",
    "GUARANTEE",
    "CertificationResults",
    "default_radii",
]

CERTIFICATION_SCHEMA = "monai_adv.certification_report"
CERTIFICATION_SCHEMA_VERSION = "1.0"
#: what a certificate of the report guarantees, written into every report
GUARANTEE = (
    "With probability at least 1 - alpha over the noise draws of the certification, the smoothed model (the "
    "majority vote of the network under Gaussian noise of std sigma) keeps its certified prediction for every input "
    "within the certified L2 radius, in the units of the network's input; for segmentation, every certified voxel "
    "of an image keeps its class at once (multiple-testing correction over the image's voxels). It is a guarantee "
    "on the smoothed model, not on the network alone, for L2 perturbations only, and says nothing about whether "
    "the prediction is right: certified accuracy counts the samples both right and certified."
)


def default_radii(sigma: float) -> List[float]:
    """The default radius grid: 0 to 4 sigma in steps of sigma / 2 (input units). With n = 100,000 draws and
    alpha = 0.001 no radius above about 3.8 sigma can be certified."""
    return [round(sigma * k / 2, 12) for k in range(9)]


def _labels(targets: Any, shape: Sequence[int], task: str, num_classes: int) -> torch.Tensor:
    """The labels of a batch as int64 host tensors of the certificate's ``shape`` (classes (N,), multi-hot (N, K),
    a label map (N, *spatial) from (N, 1, *spatial) or one-hot (N, K, *spatial))."""
    y = torch.as_tensor(targets).detach().as_subclass(torch.Tensor).cpu()
    shape = tuple(shape)
    if task == "segmentation" and y.ndim == len(shape) + 1 and tuple(y.shape[:1] + y.shape[2:]) == shape:
        y = y[:, 0] if y.shape[1] == 1 else y.argmax(dim=1)
    elif task == "classification" and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if tuple(y.shape) != shape:
        raise ValueError(
            f"The labels of shape {tuple(torch.as_tensor(targets).shape)} do not fit the {task} "
            f"certificate of shape {shape}."
        )
    return y.round().long() if y.is_floating_point() else y.long()


def _number(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(float(value)) else float(value)


class CertificationResults:
    """The per-sample rows of a certification, keyed by the sample's index in the data set.

    Each batch adds one row per sample (:meth:`add`); rows of several batches, processes or runs join
    (:meth:`extend`), and every summary is computed from the rows of all samples in index order, a sample counted
    once: the result does not depend on the batch size or on how the data was sharded.

    Classification rows: index, label, prediction (``ABSTAIN`` = -1), radius (0 where abstained), p_lower, count,
    abstained, correct. Multi-label rows hold one prediction, radius, p_lower and count per label, and radius_min.
    Segmentation rows: index, voxels, and per radius of ``radii`` the certified fraction of the image's voxels, the
    certified Dice (a lower bound: abstained voxels count against every class) and the certified voxel accuracy;
    plus smoothed_dice, the Dice of the selected classes without abstention.

    Args:
        task: "classification", "multilabel" or "segmentation".
        num_classes: classes (labels for multi-label) of the certificates.
        radii: the radii (input units) of the curves.
        include_background: segmentation: average the Dice over class 0 too.
    """

    def __init__(self, task: str, num_classes: int, radii: Sequence[float], include_background: bool = False) -> None:
        self.task = task
        self.num_classes = int(num_classes)
        self.radii = [float(r) for r in radii]
        self.include_background = bool(include_background)
        self.parts: List[Rows] = []

    def add(self, certificate: Any, targets: Any, index: torch.Tensor) -> Rows:
        """Add the rows of a batch's certificate with its labels and data-set indices; returns the rows."""
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        if isinstance(certificate, SegmentationCertificate):
            rows = self._segmentation_rows(certificate, targets)
        elif isinstance(certificate, Certificate):
            rows = self._classification_rows(certificate, targets)
        else:
            raise TypeError(f"Expected a Certificate or SegmentationCertificate, got {type(certificate).__name__}.")
        rows = {"index": index, **rows}
        self.parts.append(rows)
        return rows

    def _classification_rows(self, cert: Certificate, targets: Any) -> Rows:
        labels = _labels(targets, cert.prediction.shape, cert.task, self.num_classes)
        rows = {
            "label": labels,
            "prediction": cert.prediction.cpu().long(),
            "radius": cert.radius.cpu().double(),
            "p_lower": cert.p_lower.cpu().double(),
            "count": cert.counts.cpu().long(),
            "abstained": cert.abstained.cpu(),
            "correct": cert.correct(labels).cpu(),
        }
        if cert.task == "multilabel":
            rows["radius_min"] = cert.sample_radius.cpu().double()
        return rows

    def _segmentation_rows(self, cert: SegmentationCertificate, targets: Any) -> Rows:
        labels = _labels(targets, cert.prediction.shape, "segmentation", self.num_classes)
        n = len(cert)
        accuracy = torch.zeros((n, len(self.radii)), dtype=torch.float64)
        for j, r in enumerate(self.radii):
            accuracy[:, j] = (cert.label_map(r) == labels).flatten(1).double().mean(dim=1)
        return {
            "voxels": torch.full((n,), int(labels[0].numel()) if n else 0, dtype=torch.long),
            "certified_fraction": cert.certified_fraction(self.radii).double(),
            "certified_dice": cert.certified_dice(labels, self.radii, include_background=self.include_background),
            "certified_accuracy": accuracy,
            "smoothed_dice": certified_dice(cert.prediction, labels, self.num_classes, self.include_background),
        }

    def extend(self, rows: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Add rows exported by :meth:`export` (e.g. by another process, or stored by an earlier run)."""
        self.parts.extend(dict(r) for r in rows)

    def export(self) -> List[Rows]:
        """The rows added so far, batch by batch."""
        return list(self.parts)

    def rows(self) -> Rows:
        """The rows of all samples in data-set index order, each sample once."""
        if not self.parts:
            return {}
        joined = concat_rows(self.parts)
        order = torch.argsort(joined["index"], stable=True)
        joined = select_rows(joined, order)
        keep = torch.ones_like(joined["index"], dtype=torch.bool)
        keep[1:] = joined["index"][1:] != joined["index"][:-1]
        return select_rows(joined, keep.nonzero()[:, 0])

    @property
    def num_samples(self) -> int:
        rows = self.rows()
        return 0 if not rows else int(rows["index"].numel())

    def curve(self) -> List[Dict[str, Optional[float]]]:
        """One point per radius: certified accuracy (classification, multi-label), or the means over the images of
        the certified Dice, the certified voxel fraction and the certified voxel accuracy (segmentation)."""
        rows = self.rows()
        n = 0 if not rows else rows["index"].numel()
        points = []
        for j, r in enumerate(self.radii):
            if self.task == "segmentation":
                point = {
                    "radius": r,
                    "certified_dice": float(rows["certified_dice"][:, j].mean()) if n else None,
                    "certified_fraction": float(rows["certified_fraction"][:, j].mean()) if n else None,
                    "certified_accuracy": float(rows["certified_accuracy"][:, j].mean()) if n else None,
                }
            else:
                radius = rows["radius_min"] if self.task == "multilabel" else rows.get("radius")
                value = float((rows["correct"] & (radius >= r)).double().mean()) if n else None
                point = {"radius": r, "certified_accuracy": value}
            points.append(point)
        return points

    def summary(self) -> Dict[str, Optional[float]]:
        """Whole-data figures: for classification the smoothed accuracy (right and not abstained), the abstention
        rate and the average certified radius (ACR: the mean over samples of the radius if right, else 0); for
        segmentation the mean Dice of the smoothed prediction without abstention and the fraction of voxels
        abstained at radius 0."""
        rows = self.rows()
        if not rows:
            return {}
        if self.task == "segmentation":
            zero = self.radii.index(0.0) if 0.0 in self.radii else None
            return {
                "smoothed_dice": _number(rows["smoothed_dice"].mean()),
                "abstained_fraction": None if zero is None else _number(1 - rows["certified_fraction"][:, zero].mean()),
            }
        radius = rows["radius_min"] if self.task == "multilabel" else rows["radius"]
        correct = rows["correct"]
        return {
            "smoothed_accuracy": _number(correct.double().mean()),
            "abstain_rate": _number(rows["abstained"].double().mean()),
            "average_certified_radius": _number((radius * correct.double()).mean()),
        }

    def flat_metrics(self) -> Dict[str, float]:
        """``{"certified_accuracy@0.25": ..., ...}`` (segmentation: certified_dice@r, certified_fraction@r) and the
        summary's entries, for ``engine.state.metrics``."""
        flat: Dict[str, float] = {}
        for point in self.curve():
            for key, value in point.items():
                if key != "radius" and value is not None:
                    flat[f"{key}@{point['radius']:g}"] = value
        flat.update({k: v for k, v in self.summary().items() if v is not None})
        return flat

    def sample_dicts(self) -> List[Dict[str, Any]]:
        """The rows as JSON-ready dicts, one per sample in index order."""
        rows = self.rows()
        if not rows:
            return []
        out = []
        for i in range(int(rows["index"].numel())):
            entry: Dict[str, Any] = {}
            for key, value in rows.items():
                item = value[i]
                if item.dtype == torch.bool:
                    entry[key] = item.tolist()
                elif item.is_floating_point():
                    entry[key] = [_number(v) for v in item.tolist()] if item.ndim else _number(item.item())
                else:
                    entry[key] = item.tolist()
            out.append(entry)
        return out

    def report(self, settings: Mapping[str, Any], seconds: float = 0.0, **info: Any) -> Dict[str, Any]:
        """The JSON-ready report (schema ``monai_adv.certification_report`` version 1.0).

        Args:
            settings: the certification's settings: sigma, n0, n, alpha, seed, batch_size, correction.
            seconds: wall time of the certification.
            info: more entries, e.g. ``model={"name": ...}``, ``data={"name": ..., "samples": ...}``.
        """
        report = {
            "schema": CERTIFICATION_SCHEMA,
            "schema_version": CERTIFICATION_SCHEMA_VERSION,
            "monai_adv_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "task": self.task,
            "norm": "L2",
            "guarantee": GUARANTEE,
            **{k: settings[k] for k in ("sigma", "n0", "n", "alpha", "seed", "batch_size", "correction")},
            "include_background": self.include_background if self.task == "segmentation" else None,
            "abstain_label": ABSTAIN,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "radii": list(self.radii),
            "curve": self.curve(),
            "summary": self.summary(),
            "seconds": float(seconds),
            "samples": self.sample_dicts(),
        }
        report.update(info)
        return report
