# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""CertificationEvaluator: a MONAI evaluator that certifies every batch by randomized smoothing."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.utils import optional_import
from torch.utils.data import DistributedSampler, SequentialSampler

from monai_adv.attacks import InfererModel
from monai_adv.benchmark.provenance import run_provenance
from monai_adv.certify import RandomizedSmoothing
from monai_adv.distributed import all_gather_objects
from monai_adv.engines.certification_results import CertificationResults, default_radii
from monai_adv.engines.robust_trainer import NetworkCall

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["CertificationEvaluator"]


class CertificationEvaluator(SupervisedEvaluator):
    """Certify a model by randomized smoothing (Cohen et al. 2019; per voxel for segmentation, Fischer et al. 2021)
    over a data loader, as a MONAI evaluator.

    Every batch is certified with :class:`monai_adv.certify.RandomizedSmoothing` (``certify(x, n0, n, alpha)``);
    each sample's certificate becomes a row of :class:`~monai_adv.engines.certification_results.CertificationResults`
    keyed by the sample's position in the data set (read from the loader's ``SequentialSampler`` or
    ``DistributedSampler``, else the order the samples arrive in). Since the noise of a sample is seeded by its
    content, its certificate does not depend on its batch: under ``torchrun`` each rank certifies its shard, the
    rows of all ranks are gathered at the end of the run, and every rank holds the result of the whole data set.

    At the end of the run ``state.metrics`` holds ``"certified_accuracy@<r>"`` per radius (segmentation:
    ``"certified_dice@<r>"``, ``"certified_fraction@<r>"``, ``"certified_accuracy@<r>"``) and the summary entries
    (``smoothed_accuracy``, ``abstain_rate``, ``average_certified_radius``; ``smoothed_dice``,
    ``abstained_fraction``), and :meth:`report` returns the certification report (schema
    ``monai_adv/benchmark/certification_report_schema.json``). ``state.output`` of an iteration holds the batch's
    ``"certificate"`` next to the image and the label.

    What is certified: with probability at least ``1 - alpha`` over the noise, the smoothed model's prediction is
    constant within the certified L2 radius, in the units of the network's input (the noise is added there, never
    clipped); see :mod:`monai_adv.certify`.

    The network is called as MONAI's evaluators call it, ``inferer(x, network, *args, **kwargs)`` (e.g. a
    ``SlidingWindowInferer`` for 3D volumes), always in eval mode and left exactly as found.

    Args:
        device: device the batches are moved to (the noise is drawn there).
        val_data_loader: the data (dicts with "image" and "label" by default).
        network: the base network (logits).
        sigma: the noise standard deviation, in input units.
        n0: selection draws per sample.
        n: estimation draws per sample (100,000 in the paper).
        alpha: the error level of each certificate, in (0, 1).
        radii: the radii (input units) of the curves and metrics; default 0 to 4 sigma in steps of sigma / 2.
        task: "auto", "classification", "binary", "multiclass", "multilabel" or "segmentation".
        num_classes: the classes the network must return; None accepts the network's.
        batch_size: at most this many noisy copies per network call.
        seed: seed of the noise (per-sample streams).
        correction: segmentation: "holm" or "bonferroni" over the voxels of an image.
        include_background: segmentation: average the certified Dice over class 0 too.
        Other arguments as :class:`monai.engines.SupervisedEvaluator`.

    Example::

        evaluator = CertificationEvaluator(device, loader, network, sigma=0.25, n0=100, n=100_000)
        evaluator.run()
        evaluator.state.metrics["certified_accuracy@0.25"]
        report = evaluator.report(model={"name": "my model"})
    """

    def __init__(
        self,
        device: Union[torch.device, str],
        val_data_loader: Iterable,
        network: torch.nn.Module,
        sigma: float,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        radii: Optional[Sequence[float]] = None,
        task: str = "auto",
        num_classes: Optional[int] = None,
        batch_size: int = 1000,
        seed: Optional[int] = 0,
        correction: str = "holm",
        include_background: bool = False,
        epoch_length: Optional[int] = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Optional[Callable] = None,
        inferer: Optional[Inferer] = None,
        val_handlers: Optional[Sequence] = None,
        amp: bool = False,
        decollate: bool = False,
        to_kwargs: Optional[dict] = None,
        amp_kwargs: Optional[dict] = None,
    ) -> None:
        # the smoothing object checks sigma, task, batch_size, seed and correction; certify() checks n0, n and alpha
        self.smoothing = RandomizedSmoothing(
            network, sigma, num_classes=num_classes, task=task, batch_size=batch_size, seed=seed, correction=correction
        )
        if int(n0) > int(n):
            raise ValueError(f"`n0` ({n0}) must not exceed `n` ({n}).")
        self.n0, self.n, self.alpha = n0, n, alpha
        self.radii = _check_radii(default_radii(self.smoothing.sigma) if radii is None else radii)
        self.include_background = bool(include_background)
        super().__init__(
            device=torch.device(device) if isinstance(device, str) else device,
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            val_handlers=val_handlers,
            amp=amp,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        plain = isinstance(self.inferer, SimpleInferer)
        self._model = network if plain else InfererModel(network, self.inferer)
        self.results: Optional[CertificationResults] = None
        self.seconds = 0.0
        self._planned: Optional[Iterator[List[int]]] = None
        self._next_index = 0
        self.add_event_handler(Events.EPOCH_STARTED, self._start_results)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish_results)

    def settings(self) -> Dict[str, Any]:
        """The certification's settings, JSON-ready."""
        s = self.smoothing
        return {
            "sigma": s.sigma,
            "n0": int(self.n0),
            "n": int(self.n),
            "alpha": float(self.alpha),
            "seed": s.seed,
            "batch_size": s.batch_size,
            "correction": s.correction,
        }

    @staticmethod
    def _distributed() -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _start_results(self, engine: CertificationEvaluator) -> None:
        self.results, self.seconds, self._next_index = None, 0.0, 0
        sampler = getattr(self.data_loader, "sampler", None)
        batches = getattr(self.data_loader, "batch_sampler", None)
        indexed = batches is not None and isinstance(sampler, (SequentialSampler, DistributedSampler))
        self._planned = iter([list(b) for b in batches]) if indexed else None

    def _batch_index(self, n: int) -> torch.Tensor:
        """The data-set indices of the next batch of ``n`` samples (from the batch sampler when it says)."""
        if self._planned is None:
            index = torch.arange(self._next_index, self._next_index + n)
            self._next_index += n
            return index
        planned = next(self._planned, None)
        if planned is None or len(planned) != n:
            raise RuntimeError(f"The batch holds {n} samples but the loader's batch sampler planned {planned}.")
        return torch.as_tensor(planned, dtype=torch.long)

    def _iteration(self, engine: CertificationEvaluator, batchdata: Dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if targets is None:
            raise ValueError("CertificationEvaluator needs labels: the batch has no label (check `prepare_batch`).")
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        index = engine._batch_index(int(inputs.shape[0]))
        model = engine._model
        if args or kwargs:
            model = NetworkCall(
                engine.network, None if isinstance(engine.inferer, SimpleInferer) else engine.inferer, args, kwargs
            )
        engine.smoothing.network = model
        start = time.perf_counter()
        if engine.amp:
            with torch.autocast("cuda", **engine.amp_kwargs):
                certificate = engine.smoothing.certify(inputs, n0=engine.n0, n=engine.n, alpha=engine.alpha)
        else:
            certificate = engine.smoothing.certify(inputs, n0=engine.n0, n=engine.n, alpha=engine.alpha)
        engine.seconds += time.perf_counter() - start
        if engine.results is None:
            engine.results = CertificationResults(
                certificate.task, certificate.num_classes, engine.radii, engine.include_background
            )
        engine.results.add(certificate, targets, index)
        engine.state.output = {"image": inputs, "label": targets, "certificate": certificate}
        return engine.state.output

    def _finish_results(self, engine: CertificationEvaluator) -> None:
        """Gather the rows of every rank; fill ``state.metrics``."""
        if self._distributed():
            local = None
            if self.results is not None:
                local = {"task": self.results.task, "num_classes": self.results.num_classes, "rows": None}
                local["rows"], local["seconds"] = self.results.export(), self.seconds
            gathered = [g for g in all_gather_objects(local) if g is not None]
            if not gathered:
                return
            task, num_classes = gathered[0]["task"], gathered[0]["num_classes"]
            self.results = CertificationResults(task, num_classes, self.radii, self.include_background)
            for part in gathered:
                self.results.extend(part["rows"])
            self.seconds = max(part["seconds"] for part in gathered)
        if self.results is not None:
            self.state.metrics.update(self.results.flat_metrics())

    def report(self, **info: Any) -> Dict[str, Any]:
        """The certification report of the last run, JSON-ready (see
        ``monai_adv/benchmark/certification_report_schema.json``).

        Args:
            info: entries describing the run, e.g. ``model={"name": "PGD-AT"}``, ``data={"name": "demo"}``.
        """
        if self.results is None:
            raise RuntimeError("CertificationEvaluator.report() needs a finished run(): call run() first.")
        info.setdefault("provenance", run_provenance(self.smoothing.seed, self.state.device))
        return self.results.report(self.settings(), self.seconds, **info)


def _check_radii(radii: Any) -> List[float]:
    values = [radii] if isinstance(radii, (int, float)) else list(radii)
    out = []
    for r in values:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= float(r) < float("inf"):
            raise ValueError(f"`radii` must hold finite numbers >= 0, got {r!r}.")
        out.append(float(r))
    if not out:
        raise ValueError("`radii` must hold at least one radius.")
    return sorted(set(out))
