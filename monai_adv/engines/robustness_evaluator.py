# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""RobustnessEvaluator: a MONAI evaluator that scores a model under attacks x budgets."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.distributed as dist
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.networks.utils import eval_mode
from monai.utils import optional_import
from torch.utils.data import DistributedSampler, SequentialSampler

from monai_adv.attacks import (
    AttackResult,
    FittedAttack,
    InfererModel,
    attack_class,
    attack_defaults,
    model_dtype,
    model_state_guard,
    sanity_flags,
)
from monai_adv.attacks.sanity import sanity_notes
from monai_adv.attacks.tasks import infer_task, prepare_labels
from monai_adv.attacks.validation import check_eps, check_logits, check_norm, check_value_range
from monai_adv.benchmark.provenance import run_provenance
from monai_adv.distributed import all_gather_objects
from monai_adv.engines.attack_suite import (
    AttackSpec,
    build_attack,
    check_distinct_budgets,
    eps_label,
    parse_attack_specs,
)
from monai_adv.engines.evaluation_progress import CellRows, EvaluationProgress, model_fingerprint
from monai_adv.engines.robust_trainer import NetworkCall
from monai_adv.engines.robustness_curve import curve_grid, robustness_curve
from monai_adv.engines.robustness_results import WORST_CASE, RobustnessResults, corruption_cell, derived_success
from monai_adv.handlers.tracking import tracking_metrics
from monai_adv.metrics import (
    SampleOutcome,
    check_additional_metrics,
    perturbation_norms,
    sample_outcome,
    worst_case_index,
)
from monai_adv.transforms.corruptions import corrupt, corruption_names

EventEnum, _ = optional_import("ignite.engine", name="EventEnum")
Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["RobustnessEvaluator", "RobustnessEvents", "QueryCounter", "WORST_CASE"]

#: the patch sizes of an evaluation that names none (fractions of the image area, or volume in 3D)
DEFAULT_PATCH_SIZES = (0.01, 0.02, 0.05, 0.1)


class RobustnessEvents(EventEnum):
    """Fired by :class:`RobustnessEvaluator` after each attack on a batch (for progress bars)."""

    ATTACK_COMPLETED = "attack_completed"


class QueryCounter(torch.nn.Module):
    """Wraps a model and counts the samples it is evaluated on (forward passes with or without gradient)."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += int(x.shape[0])
        return self.model(x)


def _takes_argument(attack: str, argument: str) -> bool:
    """Whether the registered attack ``attack`` takes ``argument``."""
    try:
        return argument in attack_defaults(attack)
    except (KeyError, ValueError):
        return False


class RobustnessEvaluator(SupervisedEvaluator):
    """Score a model under a suite of attacks at several budgets, with the per-sample worst case across attacks.

    For every batch it runs the clean forward pass and, for each budget and attack, crafts adversarial
    examples (on ``surrogate`` in the transfer setting, else on ``network``), evaluates them on ``network``
    and accumulates the task's metrics (MONAI's confusion-matrix, ROC-AUC, Dice and IoU metrics), any
    ``additional_metrics``, the attack success rate, the perturbation norms, wall time and model queries. With more
    than one attack it adds a "worst-case" row per budget: each sample's worst outcome across the attacks (a wrong
    prediction, else the lowest margin or Dice). At the end of the run, ``state.metrics`` holds flat entries such
    as ``"clean/accuracy"``, ``"pgd-20@4/255/accuracy"`` and ``"pgd-20@4/255/hd95"``, and :meth:`report` returns
    the full report (a dict following the schema in ``monai_adv/benchmark/report_schema.json``).

    The success rate of a cell is broken / eligible samples: eligible are the samples whose clean prediction is
    right (classification, multi-label) or whose clean Dice is above 0 (segmentation); broken are the eligible
    samples on which the attack succeeded, as the attack's own ``AttackResult.success`` says (the segmentation
    attacks get ``seg_success_ratio``). Where an attack does not report it (``success`` is None, e.g. FGSM) or
    in the transfer setting (the result's success is the surrogate's), success is read from the scored
    outputs: a wrong prediction, or a Dice below ``seg_success_ratio`` of the clean Dice. The worst-case row
    counts a sample as broken when any attack broke it.

    The network is called as MONAI's evaluators call it, ``inferer(x, network, *args, **kwargs)`` with the extra
    ``(args, kwargs)`` that ``prepare_batch`` may return as ``batch[2]`` and ``batch[3]``; in the white-box
    setting the attacks call it so too (a surrogate is called with the inputs alone).

    The evaluator needs input gradients: attacks run with gradients enabled inside the iteration and leave the
    network (and surrogate) exactly as they found them.

    Every cell keeps per-sample rows indexed by the sample's position in the data set (see
    :class:`~monai_adv.engines.robustness_results.CellAccumulator`); the positions come from the loader's sampler
    when it is a ``SequentialSampler`` (``shuffle=False``) or a ``DistributedSampler``, else from the order the
    samples arrive in. Because the attacks are seeded per sample by content, a sample's outcome does not depend on
    its batch, so:

    - under ``torchrun`` (a process group is running), each rank evaluates the shard its ``DistributedSampler``
      gives it; at the end of the run the rows of all ranks are gathered (a sample that a padding sampler gives to
      two ranks counts once) and every rank holds the results of the whole data set: the report equals the
      single-process one, per sample, except the wall times.
      Use ``monai.data.DistributedSampler(dataset, shuffle=False, even_divisible=False)`` (no padding);
    - with ``progress_dir``, the rows of every batch are written there as soon as the batch is done; a run with the
      same settings resumes from them: a batch whose samples are all stored is skipped (loaded, not attacked), and
      the report equals an uninterrupted run's (except the wall times of the batches recomputed).

    Args:
        device: device the batches are moved to.
        val_data_loader: the evaluation data (dicts with "image" and "label" by default).
        network: the model to score; it receives the clean and the adversarial inputs through ``inferer``.
        attacks: the suite: names ("fgsm", "pgd-20", "cw-30", "autoattack", any registered attack), mappings
            ``{"attack": "pgd", "name": "pgd-50", "steps": 50}`` or :class:`AttackSpec` (see
            :func:`~monai_adv.engines.attack_suite.parse_attack_specs`).
        eps: the budgets, e.g. ``[1/255, 2/255, 4/255, 8/255]``.
        norm: "Linf" or "L2", for every attack unless its specification says otherwise.
        value_range: the intensity range of the inputs, or None when unbounded.
        task: "auto", "classification", "multilabel" or "segmentation".
        surrogate: a model that crafts the examples in the transfer setting (the target ``network`` is only
            evaluated); None for white-box evaluation.
        mask_key: a batch key holding a region of interest; only voxels inside it are perturbed.
        seed: seed of the attacks (per-sample streams: results do not depend on the batch composition).
        early_stop: whether attacks stop on a sample once it fails; None keeps each attack's default for
            classification (stop: robust accuracy is exact, metrics such as AUC see the first failing example) and
            turns it off for segmentation (Dice is driven as low as the steps allow).
        seg_success_ratio: a segmentation attack succeeds on a sample when its Dice falls below this fraction of
            the clean Dice.
        keep_examples: keep this many samples of the first batches (clean, worst-case adversarial at the largest
            budget, labels and predictions) in ``state.examples`` for figures.
        check: flag, on every sample, what would make the numbers untrustworthy
            (:func:`~monai_adv.attacks.sanity.sanity_flags` with the model the attacks craft on: one more forward
            and backward pass per batch); at the end of the run the flags of all samples give the warnings
            (:func:`~monai_adv.attacks.sanity.sanity_notes`), issued and written to the report's ``notes``. The
            attacks' own checks (AutoAttack's) are then off: the checks run once per sample, not per attack or
            budget.
        inferer: how the network is run (e.g. ``SlidingWindowInferer`` for 3D volumes); gradients flow through it.
        additional_metrics: more metrics computed in every cell (clean, each attack at each budget, the worst
            case): ``{name: metric}`` where a metric is a MONAI ``CumulativeIterationMetric`` (e.g.
            ``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDiceMetric``, ``DiceMetric``,
            ``ConfusionMatrixMetric``), a MONAI ignite metric handler (its MONAI metric is used) or an ignite
            ``Metric``. Each cell uses its own deep copy, reset at the start of each run; the given metrics are
            never used. Every batch feeds each metric ``y_pred`` = the one-hot hard prediction (N, K, *spatial)
            (K = the model's outputs, 2 for a single binary logit; the prediction rule of
            :func:`monai_adv.attacks.tasks.predict`) and ``y`` = the one-hot label (N, K, *spatial); for
            classification (N, K) and (N, K); for multi-label the multi-hot prediction and label (N, K). A MONAI
            metric is called as ``metric(y_pred=y_pred, y=y)`` and read with ``aggregate()`` at the end of the run,
            an ignite metric gets ``update((y_pred, y))`` and is read with ``compute()``. One value is recorded as
            it is; several (e.g. ``reduction="none"``) are reduced by their mean over the finite values; a list
            (``ConfusionMatrixMetric`` with several ``metric_name``) gives ``"<name>_<metric_name>"`` entries. The
            values go into each cell's ``"metrics"`` of the report under ``name`` (None where not finite) and into
            ``state.metrics`` as ``"clean/<name>"`` and ``"<attack>@<eps>/<name>"``. Names must not be those of
            the built-in entries (accuracy, recall, precision, f1, auc, dice, iou, seconds, success_rate).
        progress_dir: a folder where the per-sample outcomes are written batch by batch (see
            :class:`~monai_adv.engines.evaluation_progress.EvaluationProgress`), so that a killed run resumes; None
            keeps them in memory only. A folder written with other settings is refused.
        run_settings: more settings the outcomes depend on (JSON-serialisable, e.g. the model's checkpoint and the
            data), recorded in ``progress_dir`` with the evaluator's own (:meth:`settings`).
        max_batch: None, or the largest number of samples run through the network at once: the attacks (unless a
            specification sets its own ``max_batch``), the scoring passes and the sanity checks process a larger
            batch in consecutive chunks of at most ``max_batch`` samples, so an evaluation batch of 3D volumes does
            not need all of them in memory at once. The results equal the unchunked run's.
        min_norm_attack: a minimum-norm attack (e.g. "fmn", or ``{"attack": "fmn", "steps": 200}``) run once per
            batch, classification only: it finds each sample's smallest adversarial perturbation in ``norm``, and
            the report's ``curve`` gives the robust accuracy at every budget of a fine grid (``curve_points`` from
            0 to twice the largest budget, and the budgets of ``eps``) from that one run, alone and combined with
            the suite's per-sample outcomes (a sample counts as robust at a budget only if no attack broke it
            within it). See :func:`~monai_adv.engines.robustness_curve.robustness_curve`.
        curve_points: the evenly spaced budgets of the curve.
        fit_data_loader: the data the fitted attacks of the suite (universal perturbations "uap", universal patches
            "patch") are fitted on, before the evaluation, at each budget (or patch size): e.g. the validation split,
            batches as ``val_data_loader``'s (read through ``prepare_batch``, with ``mask_key``). None fits them on the
            evaluation data itself (said in the report's ``notes``; refused under torchrun, where each process sees
            a shard). Under torchrun rank 0's fitted tensors are sent to every rank; with ``progress_dir`` they are
            stored there, so a resumed run applies the same ones.
        patch_sizes: the sizes the patch attacks of the suite run at (their budget instead of ``eps``): fractions of
            the image's area (volume in 3D) in (0, 1), or sides in voxels (ints); see
            :func:`monai_adv.attacks.patch.patch_side`.
        corruptions: natural corruptions to score the model under: "all", or names of
            :data:`monai_adv.transforms.corruptions.CORRUPTIONS` (e.g. ``["gaussian_noise", "bias_field"]``); each at
            every severity of ``corruption_severities``, on the whole image (``mask_key`` does not restrict them),
            seeded per sample (the same image is corrupted the same way in any batch), clipped to ``value_range``.
            The report's ``corruptions`` section holds each cell and the mean over all of them (the mean corruption
            accuracy, or Dice).
        corruption_severities: the severities (1 to 5).
        tracking_names: put the metrics into ``state.metrics`` under the names experiment trackers accept
            (:func:`monai_adv.handlers.tracking_name`: ``"pgd-20/eps_4_255/accuracy"`` for
            ``"pgd-20@4/255/accuracy"``, which MLflow refuses), with NaN for a metric that could not be computed
            (None otherwise), so that MONAI's ``MLFlowHandler`` and ``TensorBoardStatsHandler`` in ``val_handlers``
            log every cell. The report (:meth:`report`) is the same either way.
        Other arguments as :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(
        self,
        device: Union[torch.device, str],
        val_data_loader: Iterable,
        network: torch.nn.Module,
        attacks: Sequence[Union[str, Mapping[str, Any], AttackSpec]],
        eps: Sequence[float],
        norm: str = "Linf",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        task: str = "auto",
        surrogate: Optional[torch.nn.Module] = None,
        mask_key: Optional[str] = None,
        seed: Optional[int] = 0,
        early_stop: Optional[bool] = None,
        seg_success_ratio: float = 0.5,
        keep_examples: int = 0,
        check: bool = True,
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
        additional_metrics: Optional[Mapping[str, Any]] = None,
        progress_dir: Optional[Union[str, Path]] = None,
        run_settings: Optional[Mapping[str, Any]] = None,
        max_batch: Optional[int] = None,
        min_norm_attack: Optional[Union[str, Mapping[str, Any], AttackSpec]] = None,
        curve_points: int = 41,
        fit_data_loader: Optional[Iterable] = None,
        patch_sizes: Sequence[Union[int, float]] = DEFAULT_PATCH_SIZES,
        corruptions: Optional[Union[str, Sequence[str]]] = None,
        corruption_severities: Sequence[int] = (1, 2, 3, 4, 5),
        tracking_names: bool = False,
    ) -> None:
        self.additional_metrics = check_additional_metrics(additional_metrics)
        if isinstance(eps, (int, float)) or not isinstance(eps, Sequence) or len(eps) == 0:
            raise ValueError(f"`eps` must be a non-empty list of budgets, e.g. [1/255, 2/255], got {eps!r}.")
        self.eps_values = [check_eps(e) for e in eps]
        self.specs = parse_attack_specs(attacks)
        self.eps_specs = [s for s in self.specs if attack_class(s.attack).budget == "eps"]
        self.patch_specs = [s for s in self.specs if attack_class(s.attack).budget == "size"]
        self.patch_sizes = _check_patch_sizes(patch_sizes) if self.patch_specs else []
        self.corruptions = [] if corruptions is None else corruption_names(corruptions)
        self.severities = _check_severities(corruption_severities) if self.corruptions else []
        if fit_data_loader is not None and not hasattr(fit_data_loader, "__iter__"):
            raise TypeError(f"`fit_data_loader` must be an iterable of batches, got {type(fit_data_loader).__name__}.")
        self.fit_data_loader = fit_data_loader
        self.norm = check_norm(norm)
        self.value_range = check_value_range(value_range)
        check_distinct_budgets(self.eps_values, self.value_range)
        if task not in ("auto", "classification", "multilabel", "segmentation"):
            raise ValueError(f'`task` must be "auto", "classification", "multilabel" or "segmentation", got {task!r}.')
        if surrogate is not None and not callable(surrogate):
            raise TypeError(f"`surrogate` must be a model (callable returning logits), got {type(surrogate).__name__}.")
        if not 0 < seg_success_ratio <= 1:
            raise ValueError(f"`seg_success_ratio` must be in (0, 1], got {seg_success_ratio}.")
        if int(keep_examples) < 0:
            raise ValueError(f"`keep_examples` must be >= 0, got {keep_examples}.")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"`max_batch` must be None or an integer >= 1, got {max_batch!r}.")
        self.max_batch = max_batch
        self.min_norm_spec = None if min_norm_attack is None else _min_norm_spec(min_norm_attack)
        if isinstance(curve_points, bool) or not isinstance(curve_points, int) or curve_points < 2:
            raise ValueError(f"`curve_points` must be an integer >= 2, got {curve_points!r}.")
        self.curve_points = curve_points
        super().__init__(
            device=torch.device(device) if isinstance(device, str) else device,
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            val_handlers=None,
            amp=amp,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )  # the handlers are attached below, after the evaluator's own (they read the metrics it fills)
        self.register_events(*RobustnessEvents)
        self.tracking_names = bool(tracking_names)
        self.task = task
        self.surrogate = surrogate
        self.mask_key = mask_key
        self.seed = seed
        self.early_stop = early_stop
        self.seg_success_ratio = float(seg_success_ratio)
        self.keep_examples = int(keep_examples)
        self.check = bool(check)
        self.notes: List[str] = []
        self.setting = "white-box" if surrogate is None else "transfer"
        crafting = surrogate if surrogate is not None else network
        plain = isinstance(self.inferer, SimpleInferer)
        self._crafting_model = crafting if plain else InfererModel(crafting, self.inferer)
        self.query_counter = QueryCounter(self._crafting_model)
        self._attacks: Dict[Tuple[str, float], Any] = {}
        self._fitted: Dict[Tuple[str, float], torch.Tensor] = {}
        self.fit_info: List[Dict[str, Any]] = []
        self._build_attacks(task)  # early errors for bad attack arguments
        if self._fitted_keys() and fit_data_loader is None and self._distributed():
            raise ValueError(
                "fitted attacks (universal perturbations, patches) under torchrun need `fit_data_loader` (e.g. the "
                "validation split, the whole of it on every rank): each rank sees only a shard of the evaluation data."
            )
        self.results: Optional[RobustnessResults] = None
        self.run_settings = dict(run_settings or {})
        self._check_sampler(progress_dir)
        self.progress = None if progress_dir is None else EvaluationProgress(progress_dir, self.settings())
        self._planned: Optional[Iterator[List[int]]] = None
        self._next_index = 0
        self._done: Set[int] = set()
        self._stored: List[List[CellRows]] = []
        self.add_event_handler(Events.EPOCH_STARTED, self._start_results)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish_results)
        if val_handlers is not None:  # after _finish_results: an EPOCH_COMPLETED handler sees the metrics
            self._register_handlers(val_handlers)

    def settings(self) -> Dict[str, Any]:
        """The settings the per-sample outcomes depend on (with ``run_settings``), JSON-ready; the network and the
        surrogate enter by a digest of their weights (:func:`model_fingerprint`)."""
        return {
            "attacks": [{"name": s.name, "attack": s.attack, "kwargs": dict(s.kwargs)} for s in self.specs],
            "eps": list(self.eps_values),
            "norm": self.norm,
            "value_range": None if self.value_range is None else [float(v) for v in self.value_range],
            "task": self.task,
            "setting": self.setting,
            "mask_key": self.mask_key,
            "seed": self.seed,
            "early_stop": self.early_stop,
            "seg_success_ratio": self.seg_success_ratio,
            "check": self.check,
            "additional_metrics": {k: type(v).__name__ for k, v in self.additional_metrics.items()},
            "min_norm_attack": None if self.min_norm_spec is None else _spec_settings(self.min_norm_spec),
            "patch_sizes": list(self.patch_sizes),
            "corruptions": list(self.corruptions),
            "corruption_severities": list(self.severities),
            "fit_data": "evaluation data" if self.fit_data_loader is None else "fit_data_loader",
            "network": model_fingerprint(self.network),
            "surrogate": model_fingerprint(self.surrogate),
            **self.run_settings,
        }

    @staticmethod
    def _distributed() -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _indexed_sampler(self) -> bool:
        """Whether the loader says which data-set sample each batch row is (a deterministic sampler)."""
        sampler = getattr(self.data_loader, "sampler", None)
        batches = getattr(self.data_loader, "batch_sampler", None)
        return batches is not None and isinstance(sampler, (SequentialSampler, DistributedSampler))

    def _check_sampler(self, progress_dir: Optional[Union[str, Path]]) -> None:
        if (progress_dir is not None or self._distributed()) and not self._indexed_sampler():
            why = "resuming from `progress_dir`" if progress_dir is not None else "a multi-process evaluation"
            raise ValueError(
                f"{why} needs to know which data-set sample each batch row is: give a DataLoader with shuffle=False "
                "(SequentialSampler) or with a DistributedSampler (e.g. monai.data.DistributedSampler(dataset, "
                f"shuffle=False, even_divisible=False)), got a sampler of type "
                f"{type(getattr(self.data_loader, 'sampler', None)).__name__}."
            )

    def _batch_index(self, n: int) -> torch.Tensor:
        """The data-set indices of the next batch of ``n`` samples."""
        if self._planned is None:
            index = torch.arange(self._next_index, self._next_index + n)
            self._next_index += n
            return index
        planned = next(self._planned, None)
        if planned is None or len(planned) != n:
            raise RuntimeError(
                f"The batch holds {n} samples but the loader's batch sampler planned {planned}: the evaluator reads "
                "each sample's index from the batch sampler, so the loader must yield its batches as planned."
            )
        return torch.as_tensor(planned, dtype=torch.long)

    @property
    def total_attack_runs(self) -> int:
        """Attack runs per batch (attacks x budgets, patch attacks x sizes, corruptions x severities), the unit of
        :data:`RobustnessEvents.ATTACK_COMPLETED`."""
        runs = len(self.eps_specs) * len(self.eps_values) + len(self.patch_specs) * len(self.patch_sizes)
        return runs + len(self.corruptions) * len(self.severities)

    def _build_attacks(self, task: str) -> None:
        early_stop = self.early_stop
        if early_stop is None and task == "segmentation":
            early_stop = False
        for spec in self.specs:
            seg = task == "segmentation" and "seg_success_ratio" not in spec.kwargs
            if seg and _takes_argument(spec.attack, "seg_success_ratio"):  # the attacks' goal is the evaluator's
                spec = AttackSpec(spec.name, spec.attack, {**spec.kwargs, "seg_success_ratio": self.seg_success_ratio})
            if _takes_argument(spec.attack, "check") and "check" not in spec.kwargs:  # checked once, by the run
                spec = AttackSpec(spec.name, spec.attack, {**spec.kwargs, "check": False})
            if self.max_batch is not None and "max_batch" not in spec.kwargs:
                spec = AttackSpec(spec.name, spec.attack, {**spec.kwargs, "max_batch": self.max_batch})
            budgets = self.patch_sizes if attack_class(spec.attack).budget == "size" else self.eps_values
            for budget in budgets:
                attack = build_attack(
                    spec, self.query_counter, budget, self.norm, self.value_range, task, self.seed, early_stop
                )
                if (spec.name, budget) in self._fitted:  # rebuilt once the task is known: keep what was fitted
                    attack.fitted = self._fitted[(spec.name, budget)]
                self._attacks[(spec.name, budget)] = attack
        if self.min_norm_spec is not None:
            spec = self.min_norm_spec
            if self.max_batch is not None and "max_batch" not in spec.kwargs:
                spec = AttackSpec(spec.name, spec.attack, {**spec.kwargs, "max_batch": self.max_batch})
            # the search does not depend on the budget; the largest one is where its own success is reported
            top = max(self.eps_values)
            self._min_norm = build_attack(spec, self.query_counter, top, self.norm, self.value_range, task, self.seed)

    def _attack_success(self, attack: Any, result: AttackResult, task: str) -> Optional[torch.Tensor]:
        """The attack's own per-sample success, when it reports one that means what the report means by it."""
        success = getattr(result, "success", None)
        if success is None or self.surrogate is not None:  # transfer: the result's success is the surrogate's
            return None
        if task == "segmentation" and getattr(attack, "seg_success_ratio", None) != self.seg_success_ratio:
            return None
        return success.detach().to(torch.bool)

    def _set_call_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """White-box: the attacks call the network with the batch's extra arguments, as the evaluator does."""
        model = self._crafting_model
        if self.surrogate is None and (args or kwargs):
            plain = isinstance(self.inferer, SimpleInferer)
            model = NetworkCall(self.network, None if plain else self.inferer, args, kwargs)
        self.query_counter.model = model

    @property
    def fitted(self) -> Dict[Tuple[str, float], torch.Tensor]:
        """What the fitted attacks were fitted to, ``{(attack name, budget or patch size): tensor}`` (the universal
        perturbations, the universal patches), once the run has started."""
        return dict(self._fitted)

    def attack(self, name: str, budget: float) -> Any:
        """The suite's attack ``name`` as built at ``budget`` (eps, or patch size for a patch attack)."""
        if (name, budget) not in self._attacks:
            raise KeyError(f"no attack {name!r} at budget {budget!r}; the suite has {sorted(self._attacks)}.")
        return self._attacks[(name, budget)]

    def _fitted_keys(self) -> List[Tuple[str, float]]:
        """The (name, budget) of the suite's fitted attacks (universal perturbations, universal patches)."""
        return [key for key, attack in self._attacks.items() if isinstance(attack, FittedAttack)]

    def _fit_attacks(self) -> None:
        """The fit phase of each run: fit each fitted attack of the suite at each budget (or size), before the first
        batch, on the network as it is now (a later run fits again: the weights may have changed).

        Tensors stored in ``progress_dir`` by an earlier run with the same settings are applied as they are. Under
        torchrun every rank fits (on the same, unsharded fit data: a fit that fails, fails on every rank, so none is
        left waiting), then rank 0's tensors are sent to all, so that every rank applies the same ones."""
        self._fitted.clear()
        self.fit_info = []
        keys = self._fitted_keys()
        for key in keys:
            self._attacks[key].fitted = None
        keys = [key for key in keys if not (self._attacks[key].budget == "eps" and key[1] == 0)]  # eps 0: unchanged
        if not keys:
            return
        stored = self.progress.fitted() if self.progress is not None else {}
        fitted: Dict[str, Any] = {}
        for key in keys:
            label = f"{key[0]}@{key[1]!r}"
            attack = self._attacks[key]
            if label in stored:
                fitted[label] = stored[label]
            else:
                loader = self.data_loader if self.fit_data_loader is None else self.fit_data_loader
                start = time.perf_counter()
                tensor = attack.fit(
                    _PreparedBatches(self, loader), mask_key="mask" if self.mask_key else None, device=self.state.device
                )
                info = {
                    "attack": key[0],
                    "budget": key[1],
                    "samples": attack.fit_samples,
                    "seconds": time.perf_counter() - start,
                    "data": "evaluation data" if self.fit_data_loader is None else "fit_data_loader",
                }
                fitted[label] = {"tensor": tensor.detach().cpu(), "info": info}
        if self._distributed():  # every rank has fitted: a short collective, rank 0's tensors for all
            shared = [fitted]
            dist.broadcast_object_list(shared, src=0)
            fitted = shared[0]
        for key in keys:
            entry = fitted[f"{key[0]}@{key[1]!r}"]
            self._fitted[key] = entry["tensor"].to(self.state.device)
            self._attacks[key].fitted = self._fitted[key]
            self.fit_info.append(dict(entry["info"]))
        if self.progress is not None and self._rank() == 0 and any(label not in stored for label in fitted):
            self.progress.save_fitted({**stored, **fitted})

    def _start_results(self, engine: RobustnessEvaluator) -> None:
        self.results = None
        self.notes = []
        self.state.examples = {}
        self._next_index = 0
        self._planned = iter([list(b) for b in self.data_loader.batch_sampler]) if self._indexed_sampler() else None
        self._stored, self._done = [], set()
        if self.progress is not None:
            self._stored = self.progress.load_batches()
            self._done = EvaluationProgress.done_indices(self._stored)
            self.state.examples = self.progress.examples()
        self._fit_attacks()

    def _new_results(self, task: str, num_classes: int) -> RobustnessResults:
        if task != self.task:
            self._build_attacks(task)
        return RobustnessResults(
            task,
            num_classes,
            self.eps_values,
            [s.name for s in self.eps_specs],
            self.seg_success_ratio,
            self.additional_metrics,
            universal_names=[s.name for s in self.eps_specs if attack_class(s.attack).threat_model == "universal"],
            patch_names=[s.name for s in self.patch_specs],
            patch_sizes=self.patch_sizes,
            corruptions=self.corruptions,
            severities=self.severities,
        )

    def _chunks(self, n: int) -> List[slice]:
        """The rows of the ``max_batch`` chunks of a batch of ``n`` samples (one chunk without ``max_batch``)."""
        size = n if self.max_batch is None else self.max_batch
        return [slice(start, min(start + size, n)) for start in range(0, n, max(size, 1))] or [slice(0, 0)]

    def _forward(self, x: torch.Tensor, *args: Any, what: str = "the clean input", **kwargs: Any) -> torch.Tensor:
        # in eval mode, score through an eval view (the network's flags are never flipped, so another thread may
        # train or attack it meanwhile); mode="train" keeps MONAI's behaviour
        scoring = model_state_guard(self.network) if self.mode is eval_mode else self.mode(self.network)
        outputs = []
        with scoring as view, torch.no_grad():
            network = view if self.mode is eval_mode else self.network
            x = x.to(model_dtype(self.network) or x.dtype)
            for rows in self._chunks(x.shape[0]):
                if self.amp:
                    with torch.autocast("cuda", **self.amp_kwargs):
                        out = self.inferer(x[rows], network, *args, **kwargs)
                else:
                    out = self.inferer(x[rows], network, *args, **kwargs)
                outputs.append(out.detach().as_subclass(torch.Tensor))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if not out.is_floating_point():
            raise TypeError(f"The network must return floating-point logits, got {out.dtype}.")
        return check_logits(out.float(), what)

    def _iteration(self, engine: RobustnessEvaluator, batchdata: Dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        if targets is None:
            raise ValueError("RobustnessEvaluator needs labels: the batch has no label (check `prepare_batch`).")
        mask = None
        if self.mask_key is not None:
            if not isinstance(batchdata, Mapping) or self.mask_key not in batchdata:
                raise KeyError(f"`mask_key` {self.mask_key!r} is not a key of the batch.")
            mask = batchdata[self.mask_key].to(inputs.device)
        index = engine._batch_index(int(inputs.shape[0]))
        if engine._done and all(int(i) in engine._done for i in index.tolist()):  # stored by an earlier run
            for _ in range(engine.total_attack_runs):
                engine.fire_event(RobustnessEvents.ATTACK_COMPLETED)
            engine.state.output = {"image": inputs, "label": targets, "skipped": True}
            return engine.state.output
        clean_logits = engine._forward(inputs, *args, **kwargs)
        engine._set_call_arguments(args, kwargs)
        if engine.results is None:
            task = infer_task(self.task, clean_logits, torch.as_tensor(targets))
            engine.results = engine._new_results(task, clean_logits.shape[1])
            if engine.progress is not None:
                engine.progress.save_header(task, clean_logits.shape[1])
        results = engine.results
        labels = prepare_labels(results.task, torch.as_tensor(targets).to(clean_logits.device), clean_logits, "label")
        clean = sample_outcome(results.task, clean_logits, labels)
        extra = engine._sanity_flags(inputs, targets, results.task) if engine.check else {}
        if engine.min_norm_spec is not None:
            extra.update(engine._min_norm_rows(inputs, targets, mask, results.task))
        clean_rows = results.clean.add(clean_logits, labels, clean, clean, None, 0.0, 0, index=index, extra=extra)
        batch_cells: List[CellRows] = [[None, None, clean_rows]]
        output = {"image": inputs, "label": targets, "pred": clean_logits}
        if not engine.eps_specs:  # only patches and corruptions: the figures show the clean samples
            engine._keep_examples(inputs, targets, clean, (inputs.as_subclass(torch.Tensor), clean_logits, clean))
        for eps in engine.eps_values if engine.eps_specs else ():
            adversarial: List[Tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor]] = []
            any_success: Optional[torch.Tensor] = None
            for spec in engine.eps_specs:
                engine.query_counter.count = 0
                attack = engine._attacks[(spec.name, eps)]
                start = time.perf_counter()
                result = attack.perturb(inputs, targets, mask=mask)
                seconds = time.perf_counter() - start
                x_adv = result.x_adv
                adv_logits = engine._forward(x_adv, *args, what=f"the {spec.name} examples", **kwargs)
                outcome = sample_outcome(results.task, adv_logits, labels)
                success = engine._attack_success(attack, result, results.task)
                if success is None:
                    success = derived_success(results.task, outcome, clean, engine.seg_success_ratio)
                success = success.to(device=outcome.correct.device, dtype=torch.bool)
                any_success = success if any_success is None else any_success | success
                norms = perturbation_norms(inputs, x_adv)
                changed = _changed(results.task, outcome, clean) if spec.name in results.universal_names else None
                rows = results.cell(spec.name, eps).add(
                    adv_logits,
                    labels,
                    outcome,
                    clean,
                    norms,
                    seconds,
                    engine.query_counter.count,
                    success,
                    index,
                    changed,
                )
                batch_cells.append([spec.name, eps, rows])
                adversarial.append((x_adv.detach().as_subclass(torch.Tensor), adv_logits, outcome, norms))
                engine.fire_event(RobustnessEvents.ATTACK_COMPLETED)
            worst = self._worst_case(adversarial)
            if len(adversarial) > 1:
                seconds = sum(c.seconds_last for c in (results.cell(s.name, eps) for s in engine.eps_specs))
                queries = sum(c.queries_last for c in (results.cell(s.name, eps) for s in engine.eps_specs))
                rows = results.cell(WORST_CASE, eps).add(
                    worst[1], labels, worst[2], clean, worst[3], seconds, queries, any_success, index
                )
                batch_cells.append([WORST_CASE, eps, rows])
            if eps == engine.eps_values[-1]:
                output["adversarial_image"], output["adversarial_pred"] = worst[0], worst[1]
                engine._keep_examples(inputs, targets, clean, worst)
        for size in engine.patch_sizes:
            for spec in engine.patch_specs:
                engine.query_counter.count = 0
                attack = engine._attacks[(spec.name, size)]
                start = time.perf_counter()
                result = attack.perturb(inputs, targets, mask=mask)
                seconds = time.perf_counter() - start
                batch_cells.append(
                    engine._score_cell(
                        spec.name,
                        size,
                        result.x_adv,
                        inputs,
                        labels,
                        clean,
                        seconds,
                        args,
                        kwargs,
                        index,
                        attack,
                        result,
                    )
                )
                engine.fire_event(RobustnessEvents.ATTACK_COMPLETED)
        for name in engine.corruptions:
            for severity in engine.severities:
                start = time.perf_counter()
                x_corrupt = corrupt(
                    inputs.as_subclass(torch.Tensor), name, severity, engine.seed or 0, engine.value_range
                )
                seconds = time.perf_counter() - start
                batch_cells.append(
                    engine._score_cell(
                        corruption_cell(name), severity, x_corrupt, inputs, labels, clean, seconds, args, kwargs, index
                    )
                )
                engine.fire_event(RobustnessEvents.ATTACK_COMPLETED)
        if engine.progress is not None:
            engine.progress.save_batch(engine._rank(), index, batch_cells)
        engine.state.output = output
        return output

    def _score_cell(
        self,
        name: str,
        budget: float,
        x_new: torch.Tensor,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        clean: SampleOutcome,
        seconds: float,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        index: torch.Tensor,
        attack: Any = None,
        result: Optional[AttackResult] = None,
    ) -> CellRows:
        """Score changed inputs (a patch attack's, a corruption's) into the cell ``(name, budget)``; its rows."""
        results = self.results
        logits = self._forward(x_new, *args, what=f"the {name} inputs", **kwargs)
        outcome = sample_outcome(results.task, logits, labels)
        success = None if result is None else self._attack_success(attack, result, results.task)
        if success is None:
            success = derived_success(results.task, outcome, clean, self.seg_success_ratio)
        success = success.to(device=outcome.correct.device, dtype=torch.bool)
        queries = self.query_counter.count if attack is not None else 0  # corruptions query no model
        norms = perturbation_norms(inputs, x_new)
        extra = None
        if result is not None and isinstance(result.details.get("location"), torch.Tensor):
            # a sample without an admissible window (its mask too close to the border) is left unchanged
            extra = {"unplaced": (result.details["location"] < 0).all(dim=1).cpu()}
        rows = results.cell(name, budget).add(
            logits, labels, outcome, clean, norms, seconds, queries, success, index, extra
        )
        return [name, budget, rows]

    def _rank(self) -> int:
        return dist.get_rank() if self._distributed() else 0

    def _min_norm_rows(self, inputs: torch.Tensor, targets: Any, mask: Optional[torch.Tensor], task: str):
        """Run the minimum-norm attack on the batch: per-sample smallest adversarial norm, time and queries."""
        if task != "classification":
            raise ValueError(
                f"`min_norm_attack` ({self.min_norm_spec.name!r}) draws the curve of classification models; this "
                f"evaluation's task is {task!r}."
            )
        n = int(inputs.shape[0])
        self.query_counter.count = 0
        start = time.perf_counter()
        result = self._min_norm.perturb(inputs, targets, mask=mask)
        seconds = time.perf_counter() - start
        return {
            "min_norm": result.details["min_norm"].detach().double().cpu(),
            "min_norm_seconds": torch.full((n,), seconds / max(n, 1), dtype=torch.float64),
            "min_norm_queries": torch.full((n,), self.query_counter.count / max(n, 1), dtype=torch.float64),
        }

    @staticmethod
    def _worst_case(adversarial: List[Tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor]]):
        """Gather each sample's worst (x_adv, logits, outcome, norms) across the attacks."""
        if len(adversarial) == 1:
            return adversarial[0]
        pick = worst_case_index([a[2] for a in adversarial])
        rows = torch.arange(pick.numel(), device=pick.device)

        def gather(tensors: List[torch.Tensor]) -> torch.Tensor:
            stacked = torch.stack([t.to(pick.device) for t in tensors])
            return stacked[pick, rows]

        outcome = SampleOutcome(
            gather([a[2].predictions for a in adversarial]),
            gather([a[2].correct for a in adversarial]),
            gather([a[2].quality for a in adversarial]),
        )
        x_adv = gather([a[0] for a in adversarial])
        return x_adv, gather([a[1] for a in adversarial]), outcome, gather([a[3] for a in adversarial])

    def _keep_examples(self, inputs: torch.Tensor, targets: Any, clean: Any, worst: Tuple) -> None:
        kept = self.state.examples
        have = 0 if not kept else kept["image"].shape[0]
        room = self.keep_examples - have
        if room <= 0:
            return
        new = {
            "image": inputs.detach().as_subclass(torch.Tensor)[:room].cpu(),
            "adversarial_image": worst[0][:room].cpu(),
            "label": torch.as_tensor(targets)[:room].cpu(),
            "clean_pred": clean.predictions[:room].cpu(),
            "adversarial_pred": worst[2].predictions[:room].cpu(),
        }
        self.state.examples = new if not kept else {k: torch.cat([kept[k], v]) for k, v in new.items()}
        if self.progress is not None and self._rank() == 0:
            self.progress.save_examples(self.state.examples)

    def _finish_results(self, engine: RobustnessEvaluator) -> None:
        """Join the rows of every rank and of the batches stored by earlier runs; fill ``state.metrics``."""
        if self._distributed() or self._stored:
            local = None
            if self.results is not None:
                local = {"task": self.results.task, "num_classes": self.results.num_classes, "cells": None}
                local["cells"] = self.results.export()
            gathered = [g for g in all_gather_objects(local) if g is not None]
            header = gathered[0] if gathered else (self.progress.header() if self.progress is not None else None)
            if header is None:
                return
            self.results = self._new_results(header["task"], header["num_classes"])
            for part in gathered:
                self.results.extend(part["cells"])
            for cells in self._stored:
                self.results.extend(cells)
        if self.results is None:
            return
        if self.check:
            flags = self.results.clean.rows()
            self.notes = sanity_notes({k[len("check/") :]: v for k, v in flags.items() if k.startswith("check/")})
            from monai_adv.attacks.diagnostics import evaluation_notes, sample_voxels  # false-robustness checks

            self.notes += evaluation_notes(
                {  # the per-image eps-ball cells: a universal perturbation is weaker by design, not by masking
                    (name, eps): cell.rows()
                    for name, eps, cell in self.results.rows()
                    if name not in self.results.universal_names
                },
                {spec.name: spec.attack for spec in self.specs},
                self.norm,
                self.value_range,
                self.results.task,
                sample_voxels(getattr(self.state, "output", None)),
                masked=self.mask_key is not None,
                eps_label=lambda e: eps_label(e, self.value_range),
            )
            for note in self.notes:
                warnings.warn(note, UserWarning, stacklevel=2)
        flat = self.results.flat_metrics(self.value_range)
        self.state.metrics.update(tracking_metrics(flat) if self.tracking_names else flat)

    def _sanity_flags(self, inputs: torch.Tensor, targets: Any, task: str) -> Dict[str, torch.Tensor]:
        """Per-sample flags of what would make the numbers untrustworthy (see ``sanity_flags``), with the crafting
        model called with the batch's extra arguments (uncounted)."""
        model = self.query_counter.model
        labels = torch.as_tensor(targets).to(inputs.device)
        parts = [sanity_flags(model, inputs[rows], labels[rows], task) for rows in self._chunks(inputs.shape[0])]
        return {f"check/{k}": torch.cat([p[k] for p in parts]) for k in parts[0]}

    def report(self, **info: Any) -> Dict[str, Any]:
        """The report of the last run, as a JSON-ready dict (see ``monai_adv/benchmark/report_schema.json``).

        Args:
            info: entries describing the run, e.g. ``model={"name": "PGD-AT"}``, ``data={"name": "demo"}``.
        """
        if self.results is None:
            raise RuntimeError("RobustnessEvaluator.report() needs a finished run(): call run() first.")
        if self.min_norm_spec is not None and "curve" not in info:
            same_norm = [s.name for s in self.specs if s.kwargs.get("norm", self.norm) == self.norm]
            info["curve"] = robustness_curve(
                self.results,
                self.min_norm_spec.name,
                curve_grid(self.eps_values, self.curve_points),
                same_norm,
                lambda e: eps_label(e, self.value_range),
            )
        if self.fit_info and "fitted" not in info:
            info["fitted"] = [dict(entry) for entry in self.fit_info]
        if "provenance" not in info:
            info["provenance"] = run_provenance(self.seed, self.state.device)
        return self.results.report(
            norm=self.norm,
            value_range=self.value_range,
            setting=self.setting,
            attacks=[{"name": s.name, "attack": s.attack, "kwargs": dict(s.kwargs)} for s in self.specs],
            eps_label=lambda e: eps_label(e, self.value_range),
            **{"notes": self._fit_notes() + list(self.notes), **info},
        )

    def _fit_notes(self) -> List[str]:
        """Notes on the families beyond the eps-ball: fitted on the evaluation data, patches left unplaced."""
        notes = []
        if self.fit_info and self.fit_data_loader is None:
            names = sorted({entry["attack"] for entry in self.fit_info})
            notes.append(
                f"{', '.join(names)}: fitted on the evaluation data itself (no `fit_data_loader`), so the numbers "
                "measure the perturbation on the images it was fitted to, not its transfer to unseen images."
            )
        from monai_adv.attacks.patch import size_label

        for name, size, cell in self.results.patch_rows():
            rows = cell.rows()
            if "unplaced" in rows:
                unplaced = int((rows["unplaced"].bool() & rows["eligible"].bool()).sum())
                if unplaced:
                    notes.append(
                        f"{name} at {size_label(size)}: {unplaced} eligible sample(s) had no window whose centre lies "
                        "inside the region of interest and were left unchanged (counted as not broken)."
                    )
        return notes


class _PreparedBatches:
    """The batches of a loader as the evaluator reads them (through its ``prepare_batch``, on its device), as dicts
    with "image", "label" and, with ``mask_key``, "mask": the fit data of the fitted attacks; re-iterable."""

    def __init__(self, evaluator: RobustnessEvaluator, loader: Iterable) -> None:
        self.evaluator, self.loader = evaluator, loader

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        ev = self.evaluator
        for batchdata in self.loader:
            batch = ev.prepare_batch(batchdata, ev.state.device, ev.non_blocking, **ev.to_kwargs)
            item = {"image": batch[0], "label": batch[1]}
            if ev.mask_key is not None:
                if not isinstance(batchdata, Mapping) or ev.mask_key not in batchdata:
                    raise KeyError(f"`mask_key` {ev.mask_key!r} is not a key of the fit data's batches.")
                item["mask"] = batchdata[ev.mask_key]
            yield item


def _changed(task: str, outcome: SampleOutcome, clean: SampleOutcome) -> Optional[Dict[str, torch.Tensor]]:
    """Per sample, whether the prediction differs from the clean one (the fooling rate of a universal perturbation;
    classification and multi-label)."""
    if task == "segmentation":
        return None
    n = outcome.predictions.shape[0]
    differs = outcome.predictions.reshape(n, -1) != clean.predictions.to(outcome.predictions.device).reshape(n, -1)
    return {"changed": differs.any(dim=1).cpu()}


def _check_patch_sizes(sizes: Sequence[Union[int, float]]) -> List[Union[int, float]]:
    """The patch sizes: a non-empty list of distinct sides in voxels (ints >= 1) or fractions in (0, 1)."""
    from monai_adv.attacks.patch import patch_side

    if isinstance(sizes, (int, float, str)) or not isinstance(sizes, Sequence) or not sizes:
        raise ValueError(f"`patch_sizes` must be a non-empty list of patch sizes, e.g. [0.02, 0.05], got {sizes!r}.")
    for size in sizes:
        patch_side(size, (10**6,))  # the form only: ints >= 1 or fractions in (0, 1]
        if isinstance(size, float) and size == 1.0:
            raise ValueError(
                "`patch_sizes`: 1.0 is the whole image, not a patch; give fractions below 1 or sides in voxels (ints)."
            )
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"`patch_sizes` must be distinct, got {list(sizes)}.")
    return list(sizes)


def _check_severities(severities: Sequence[int]) -> List[int]:
    if isinstance(severities, int) or not isinstance(severities, Sequence) or not severities:
        raise ValueError(f"`corruption_severities` must be a non-empty list of severities 1-5, got {severities!r}.")
    valid = all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in severities)
    if not valid or len(set(severities)) != len(severities):
        raise ValueError(f"`corruption_severities` must be distinct integers from 1 to 5, got {list(severities)}.")
    return sorted(severities)


def _min_norm_spec(attack: Union[str, Mapping[str, Any], AttackSpec]) -> AttackSpec:
    """The specification of a minimum-norm attack, checked: it must report per-sample minimal norms."""
    (spec,) = parse_attack_specs([attack])
    if "min_norm" not in attack_class(spec.attack).per_sample_details:
        raise ValueError(
            f"`min_norm_attack` must be an attack that reports each sample's smallest adversarial norm "
            f'(result.details["min_norm"]), e.g. "fmn"; got {spec.attack!r}.'
        )
    return spec


def _spec_settings(spec: AttackSpec) -> Dict[str, Any]:
    return {"name": spec.name, "attack": spec.attack, "kwargs": dict(spec.kwargs)}
