# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Experiment tracking with MONAI's ``TensorBoardStatsHandler`` and ``MLFlowHandler``.

- :func:`tracking_name` / :func:`tracking_metrics`: the robustness evaluator's metric names as experiment trackers
  accept them (MLflow refuses the ``@`` of ``"pgd-20@4/255/accuracy"``);
- :class:`OutputAverage` / :func:`training_metrics`: epoch means of a robust trainer's iteration outputs (clean and
  adversarial accuracy, loss, the defense's loss terms) as ignite metrics, so they land in
  ``engine.state.metrics`` where the tracking handlers read them at each epoch;
- :func:`iteration_scalars`: an ``output_transform`` giving the handlers every scalar of an iteration.

Nothing here imports mlflow or tensorboard: the handlers that write to them are MONAI's.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from monai.utils import CommonKeys, IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.metrics import Metric
    from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
else:
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric", as_type="base")
    reinit__is_reduced, _ = optional_import(
        "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "reinit__is_reduced", as_type="decorator"
    )
    sync_all_reduce, _ = optional_import(
        "ignite.metrics.metric", IgniteInfo.OPT_IMPORT_VERSION, min_version, "sync_all_reduce", as_type="decorator"
    )

__all__ = ["tracking_name", "tracking_metrics", "OutputAverage", "training_metrics", "iteration_scalars"]

#: characters MLflow refuses in a metric name (it allows alphanumerics, ``_ - . : /`` and spaces)
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")
#: ``"<cell>@<budget>/<metric>"``: a budget is a fraction ("4/255") or a label without a slash
_CELL = re.compile(r"^(?P<cell>[^@]*)@(?P<budget>\d+/\d+|[^/]*)(?:/(?P<metric>.*))?$")
#: the entries of an iteration output that are not scalars to log
_BATCH_KEYS = (CommonKeys.IMAGE, CommonKeys.LABEL, CommonKeys.PRED)


def _budget_name(label: str) -> str:
    """A budget label as a path part: "4/255" -> "eps_4_255", "0.05" -> "eps_0.05", "5%" -> "size_5pct",
    "16 px" -> "size_16px", "s3" -> "severity_3"."""
    severity = re.fullmatch(r"s(\d+)", label)
    if severity:
        return f"severity_{severity.group(1)}"
    if label.endswith("%"):
        return f"size_{label[:-1]}pct"
    if label.endswith("px"):
        return f"size_{label[:-2].strip()}px"
    return f"eps_{label.replace('/', '_')}"


def tracking_name(name: str) -> str:
    """The name of a :class:`~monai_adv.engines.RobustnessEvaluator` metric as experiment trackers accept it.

    The evaluator's ``state.metrics`` names a cell ``"<attack>@<budget>/<metric>"``; MLflow refuses ``@`` (its
    names allow alphanumerics, underscores, dashes, periods, spaces, colons and slashes), and the slash of a budget
    such as ``4/255`` would split TensorBoard's groups. The tracking name is ``"<attack>/<budget>/<metric>"`` with the
    budget spelled out, so that TensorBoard and MLflow group the metrics by attack:

    ======================================  ==========================================
    ``state.metrics`` name                  tracking name
    ======================================  ==========================================
    ``clean/accuracy``                      ``clean/accuracy`` (unchanged)
    ``pgd-20@4/255/accuracy``               ``pgd-20/eps_4_255/accuracy``
    ``worst-case@8/255/success_rate``       ``worst-case/eps_8_255/success_rate``
    ``pgd-20@0.05/dice`` (eps not k/255)    ``pgd-20/eps_0.05/dice``
    ``patch@5%/accuracy``                   ``patch/size_5pct/accuracy``
    ``patch@16 px/accuracy``                ``patch/size_16px/accuracy``
    ``gaussian_noise@s3/accuracy``          ``gaussian_noise/severity_3/accuracy``
    ``corruption/mean_accuracy``            ``corruption/mean_accuracy`` (unchanged)
    ======================================  ==========================================

    Any other character MLflow refuses becomes ``_``. Names without ``@`` keep their structure.

    Args:
        name: a metric name, e.g. a key of ``RobustnessEvaluator.state.metrics``.
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}.")
    cell = _CELL.match(name)
    if cell is not None:
        parts = [cell.group("cell"), _budget_name(cell.group("budget"))]
        if cell.group("metric"):
            parts.append(cell.group("metric"))
        name = "/".join(parts)
    return _UNSAFE.sub("_", name)


def _scalar(value: Any, name: str) -> Optional[Union[float, torch.Tensor]]:
    """``value`` as a float, or a detached one-element tensor (read later, without a host sync now); None for None."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}.")
        return value.detach().reshape(())
    if isinstance(value, (bool, int, float)) or hasattr(value, "__float__"):
        return float(value)
    raise TypeError(f"{name!r} must be a number, got {type(value).__name__}.")


def tracking_metrics(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """``metrics`` with :func:`tracking_name` names and float values, ready for ``MLFlowHandler`` and
    ``TensorBoardStatsHandler``: a None (a metric that could not be computed, e.g. a success rate without eligible
    samples) becomes NaN, which both record as a missing point.

    Raises:
        ValueError: two names map to the same tracking name (their values would overwrite each other).
        TypeError: a value is not a scalar.
    """
    out: Dict[str, float] = {}
    origin: Dict[str, str] = {}
    for name, value in metrics.items():
        key = tracking_name(name)
        if key in origin:
            raise ValueError(
                f"the metrics {origin[key]!r} and {name!r} have the same tracking name {key!r}: rename one of them "
                "(e.g. the attack's `name` in the suite)."
            )
        origin[key] = name
        scalar = _scalar(value, name)
        out[key] = math.nan if scalar is None else float(scalar)
    return out


def _entry(output: Any, key: str) -> Tuple[Any, int]:
    """The value of ``key`` in an iteration output and the number of samples it stands for.

    ``output`` is ``engine.state.output``: a dict (``decollate=False``; the samples are counted from its image), or
    the per-sample list of dicts of a decollated batch (every item holds the same batch value)."""
    if isinstance(output, (list, tuple)):
        if not output:
            return None, 0
        first = output[0]
        return (first.get(key) if isinstance(first, Mapping) else None), len(output)
    if not isinstance(output, Mapping):
        raise TypeError(f"the iteration output must be a dict or a list of dicts, got {type(output).__name__}.")
    image = output.get(CommonKeys.IMAGE)
    n = int(image.shape[0]) if isinstance(image, torch.Tensor) and image.ndim > 0 else 1
    return output.get(key), n


class OutputAverage(Metric):
    """The epoch mean of a scalar entry of the iteration output, weighted by the number of samples of each batch.

    :class:`~monai_adv.engines.RobustTrainer` puts batch values into ``engine.state.output`` (``"loss"``,
    ``"clean_accuracy"``, ``"adversarial_accuracy"``, the defense's loss terms ``"loss_<term>"``); attached as a
    metric (``additional_metrics`` of the trainer, or ``metric.attach(engine, name)``) this gives their mean over
    the epoch in ``engine.state.metrics[name]``, which MONAI's ``StatsHandler``, ``TensorBoardStatsHandler`` and
    ``MLFlowHandler`` log at every epoch. The mean of batch accuracies weighted by batch size is the accuracy of the
    epoch's samples. Works with decollated outputs (MONAI's default) and plain dicts, and reduces across processes
    under ``torch.distributed`` as ignite's metrics do.

    Iterations where the entry is None do not count. An epoch without any value gives NaN, with a warning (e.g.
    ``clean_accuracy`` of PGD-AT, which does not run the clean batch: give the trainer ``clean_accuracy=True``).

    Args:
        key: the entry of the iteration output.
        output_transform: applied to ``engine.state.output`` first (ignite's convention).
        device: where the running sums are kept.
    """

    def __init__(
        self, key: str, output_transform: Callable = lambda x: x, device: Union[str, torch.device] = "cpu"
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"`key` must be the name of an entry of the iteration output, got {key!r}.")
        self.key = key
        self._warned = False
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self._device)
        self._count = torch.zeros((), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        value, n = _entry(output, self.key)
        value = _scalar(value, self.key)
        if value is None or n == 0:
            return
        value = torch.as_tensor(value).to(device=self._device, dtype=torch.float64)
        self._sum += value * n
        self._count += n

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if float(self._count) == 0:
            if not self._warned:
                warnings.warn(
                    f"OutputAverage: no iteration of the epoch reported {self.key!r}; recording NaN.", stacklevel=2
                )
                self._warned = True
            return math.nan
        return float(self._sum / self._count)


def training_metrics(
    accuracy: bool = True, loss: bool = True, terms: Sequence[str] = (), prefix: str = "train_"
) -> Dict[str, OutputAverage]:
    """The epoch metrics of a :class:`~monai_adv.engines.RobustTrainer`, in this order:

    - ``train_adversarial_accuracy`` and ``train_clean_accuracy`` (classification; ``accuracy=True``): the epoch's
      accuracy on the defense's adversarial batches and on the clean batches;
    - ``train_mean_loss`` (``loss=True``): the epoch mean of the defense's loss;
    - ``train_mean_loss_<term>`` for each of ``terms``: the epoch mean of a loss term the defense reports (the
      trainer puts a defense output ``"<term>"`` into the iteration output as ``"loss_<term>"``).

    Give them to the trainer as ``key_train_metric=training_metrics()`` (the first is then the key metric) or, next
    to a key metric of your own, as ``additional_metrics`` (MONAI registers ``additional_metrics`` only with a key
    metric). Registered so, they are computed before the trainer's handlers run at the end of the epoch, and
    ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MLFlowHandler`` in ``train_handlers`` log them. (An ignite
    metric attached with ``metric.attach(trainer, name)`` after the handlers would be computed after they ran.)

    Args:
        accuracy: add the clean and adversarial accuracies (classification and multi-label tasks only).
        loss: add the mean loss.
        terms: names of the loss terms the defense reports.
        prefix: the names' prefix.
    """
    metrics: Dict[str, OutputAverage] = {}
    if accuracy:
        metrics[f"{prefix}adversarial_accuracy"] = OutputAverage("adversarial_accuracy")
        metrics[f"{prefix}clean_accuracy"] = OutputAverage("clean_accuracy")
    if loss:
        metrics[f"{prefix}mean_loss"] = OutputAverage(CommonKeys.LOSS)
    for term in terms:
        metrics[f"{prefix}mean_loss_{term}"] = OutputAverage(f"loss_{term}")
    return metrics


def iteration_scalars(output: Any) -> Dict[str, float]:
    """Every scalar of an iteration output, named for tracking: an ``output_transform`` for MONAI's
    ``TensorBoardStatsHandler``, ``MLFlowHandler`` or ``StatsHandler`` on a trainer, which then log all of them at
    each iteration (``"$monai_adv.handlers.iteration_scalars"`` in a bundle config).

    ``"loss"`` and the defense's loss terms ``"loss_<term>"`` become ``"train_loss"`` and ``"train_loss_<term>"``;
    any other scalar entry ``"<key>"`` becomes ``"train_batch_<key>"`` (``train_batch_clean_accuracy``,
    ``train_batch_adversarial_accuracy``), distinct from the epoch metrics of :func:`training_metrics`. Entries that
    are None (e.g. the accuracies of a segmentation task) and the batch tensors are left out.

    Args:
        output: ``engine.state.output``, a dict or a decollated list of dicts (the first item is read).
    """
    item = output[0] if isinstance(output, (list, tuple)) and output else output
    if not isinstance(item, Mapping):
        return {}
    scalars: Dict[str, float] = {}
    for key, value in item.items():
        if key in _BATCH_KEYS or value is None:
            continue
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            continue
        if not isinstance(value, (torch.Tensor, bool, int, float)) and not hasattr(value, "__float__"):
            continue
        name = f"train_{key}" if str(key).startswith(CommonKeys.LOSS) else f"train_batch_{key}"
        scalars[name] = float(value)
    return scalars
