# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The attack base class: what every attack shares (checks, model guard, budget, mask, objective, seeding)."""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.guard import active_model, model_dtype, model_state_guard
from monai_adv.attacks.objective import LossFunction, Objective, check_loss
from monai_adv.attacks.projections import enforce_budget
from monai_adv.attacks.seeding import resolve_seed, sample_generators, sample_keys
from monai_adv.attacks.tasks import TASK_CHOICES, choose_targets, infer_task, looks_like_probabilities, prepare_labels
from monai_adv.attacks.validation import (
    as_tensor_labels,
    check_choice,
    check_eps,
    check_input,
    check_int,
    check_logits,
    check_mask,
    check_norm,
    check_positive,
    check_value_range,
)

__all__ = [
    "ActiveSet",
    "Attack",
    "AttackResult",
    "AttackState",
    "BASE_ARGUMENTS",
    "BestIterate",
    "FirstPass",
    "IterativeAttack",
    "QueryAttack",
    "join_results",
]

TARGET_STREAM = 2**32  # random stream of the random targets, apart from the restart streams 0, 1, ...


@dataclass
class AttackResult:
    """What an attack returns from :meth:`Attack.perturb`.

    Attributes:
        x_adv: the adversarial batch, same shape, dtype, device and type as the input (a MetaTensor stays one).
        success: per-sample bool, whether ``x_adv`` meets the attack's goal (misclassified, Dice dropped,
            target reached); None when the attack did not evaluate its final iterate (``best_iterate=False``).
        loss: per-sample attack loss at ``x_adv`` (None when not evaluated).
        clean_success: per-sample bool, whether the clean input already met the goal (e.g. misclassified);
            None only from ``attack(x, y)`` when the attack skipped the clean pass.
        task: the task the attack ran as ("classification", "multilabel" or "segmentation").
        queries: per-sample number of model evaluations, for query-based attacks (None for gradient attacks).
        details: what else the run found, per attack: e.g. AutoAttack's ``broken_by`` (which attack broke each
            sample), ``broken_counts`` and ``seconds`` per attack; ``notes`` (substituted losses, sanity-check
            warnings); a transfer attack's ``source`` result on the surrogate.
    """

    x_adv: torch.Tensor
    success: Optional[torch.Tensor]
    loss: Optional[torch.Tensor]
    clean_success: Optional[torch.Tensor]
    task: str
    queries: Optional[torch.Tensor] = None
    details: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FirstPass:
    """A forward pass kept with its graph, so that the first gradient step reuses it instead of a new pass.

    Attributes:
        x: the input leaf (requires grad).
        logits: the model's logits at ``x``, with their graph.
        clean: whether ``x`` is the clean input (else a random start evaluated in the clean pass's place).
    """

    x: torch.Tensor
    logits: torch.Tensor
    clean: bool


@dataclass
class AttackState:
    """The prepared batch an attack works on (plain tensors in the network's dtype, on the input's device).

    Attributes:
        x: the clean batch.
        y: the labels as given (a tensor), for attacks that run other attacks.
        mask: the perturbation mask broadcast to ``x``, or None.
        objective: the loss and goal on this batch.
        keys, seed: the per-sample random streams (see :meth:`Attack.generators`).
        clean_logits, clean_loss, clean_success: the clean pass; None when the attack skipped it because its
            run never reads it (see :attr:`first`).
        first: a forward pass the first step reuses, or None.
        target: the target labels as given, or None.
        loss_mask: the loss mask as given, or None.
        notes: what the attack changed for this batch (e.g. a loss substituted for a binary task).
        x_input: the clean batch in the input's own dtype, for attacks that run other attacks on it.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: Optional[torch.Tensor]
    objective: Objective
    keys: List[bytes]
    seed: int
    clean_logits: Optional[torch.Tensor]
    clean_loss: Optional[torch.Tensor]
    clean_success: Optional[torch.Tensor]
    first: Optional[FirstPass] = None
    target: Optional[torch.Tensor] = None
    loss_mask: Optional[torch.Tensor] = None
    notes: List[str] = field(default_factory=list)
    x_input: Optional[torch.Tensor] = None

    def result(self, x_adv: torch.Tensor, success=None, loss=None, queries=None, **details: Any) -> AttackResult:
        """An :class:`AttackResult` for this batch; the state's ``notes`` (e.g. a substituted loss) join ``details``."""
        if self.notes:
            details = {**details, "notes": list(self.notes) + list(details.get("notes", []))}
        return AttackResult(x_adv, success, loss, self.clean_success, self.objective.task, queries, details)


class Attack:
    """Base class of all attacks: ``x_adv = attack(x, y)``; ``attack.perturb(x, y)`` for per-sample outcomes.

    Subclasses implement :meth:`_perturb` and declare only their own arguments, passing the others (``**kwargs``)
    to this class; :func:`~monai_adv.attacks.make_attack` reads the whole hierarchy. The base class checks
    arguments, guards the model's state, runs the clean forward pass, resolves the task, labels, targets and
    objective, seeds per-sample random streams, returns the clean input unchanged when ``eps`` is 0, enforces
    the eps-ball, value range and mask exactly, and returns a tensor of the input's type.

    Args:
        model: a callable returning logits: an ``nn.Module`` (guarded: run in eval mode, left exactly as found),
            or any differentiable function such as a closure over a MONAI inferer. Wrap a network and an inferer
            in :class:`monai_adv.attacks.InfererModel` to have the network guarded too.
        eps: perturbation budget (>= 0) in the norm ``norm``, in the units of ``value_range``.
        norm: "Linf" or "L2".
        loss: what the attack ascends: a name, "ce" (cross-entropy; BCE for multi-label and single-logit
            outputs), "cw" (Carlini-Wagner margin capped at ``kappa``), "dlr" (classification, >= 3 classes;
            targeted needs >= 4), "dice" (segmentation soft Dice loss), "kl" (classification: KL divergence from
            the clean prediction, TRADES' inner loss); or a callable ``loss(logits, y, **context) -> (N,)`` (see
            :mod:`monai_adv.attacks.objective` for the context it may read).
        value_range: ``(lo, hi)`` the images live in (default (0, 1)), or None for unbounded intensities
            (z-scored MRI, CT in HU).
        targeted: False; True (pass ``target=`` when calling); "least_likely" or "random" (a target chosen
            per sample among the other classes, classification only).
        task: "auto" (from the shapes of logits and labels), "classification", "multilabel" or "segmentation".
        kappa: confidence cap of the "cw" loss.
        seg_success_ratio: segmentation goal: the Dice of the prediction falls below this fraction of the
            clean Dice (targeted: the distance 1 - Dice to the target falls below this fraction of its clean value).
        early_stop: stop attacking a sample once it meets the goal, and skip samples that already fail clean.
        seed: seed of the per-sample random streams (random starts, random targets); None draws one from
            PyTorch's global generator at each call.
        loss_kwargs: options of a named loss, e.g. ``{"include_background": True, "smooth": 0.0}`` for "dice".
        loss_in_mask: segmentation: average the voxel loss only inside the perturbation ``mask`` (the region of
            interest) when no ``loss_mask`` is given at the call.
        objective: the :class:`~monai_adv.attacks.objective.Objective` class the attack builds per batch; a
            subclass changes the loss or the success criterion.
        max_batch: None (attack the whole batch at once), or the largest number of samples attacked at once: a
            larger batch is attacked in consecutive chunks of at most ``max_batch`` samples, one after the other,
            and their results are joined (per-sample tensors and lists concatenated, counts and seconds in
            ``details`` summed, notes merged). Each sample's result is the same as without chunks (the attacks are
            batch-independent and seeded per sample; a ``seed`` of None is drawn once per call), while the memory an
            attack holds (its graph, its iterates) scales with ``max_batch``. AutoAttack's sanity checks then run
            on the first chunk.
    """

    #: name used by :func:`monai_adv.attacks.make_attack`
    name = "attack"
    #: base arguments a subclass sets itself: not accepted from the caller, not listed by the registry
    fixed_arguments: Tuple[str, ...] = ()
    #: whether ``result.queries`` counts model evaluations (query-based attacks)
    counts_queries = False
    #: keys of ``result.details`` holding one entry per sample (joined by concatenation across ``max_batch`` chunks)
    per_sample_details: Tuple[str, ...] = ()
    #: the tasks the attack is defined for (others are refused with a clear error)
    tasks: Tuple[str, ...] = ("classification", "multilabel", "segmentation")
    #: the threat model: "per-image" (a perturbation per image in the eps-ball), "universal" (one perturbation for
    #: every image, fitted on data) or "patch" (a region of unbounded intensity)
    threat_model = "per-image"
    #: what the attack's budget is: "eps" (the radius of the norm ball) or "size" (the side of a patch)
    budget = "eps"

    def __new__(cls, *args: Any, **kwargs: Any) -> Attack:
        fixed = sorted(set(kwargs) & set(cls.fixed_arguments))
        if fixed:
            raise TypeError(f"{cls.__name__} sets {fixed} itself; it takes no argument(s) {fixed}.")
        return super().__new__(cls)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        norm: str = "Linf",
        loss: Union[str, LossFunction] = "ce",
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        targeted: Union[bool, str] = False,
        task: str = "auto",
        kappa: float = 0.0,
        seg_success_ratio: float = 0.5,
        early_stop: bool = True,
        seed: Optional[int] = 0,
        loss_kwargs: Optional[Dict[str, Any]] = None,
        loss_in_mask: bool = False,
        objective: Type[Objective] = Objective,
        max_batch: Optional[int] = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning logits, got {type(model).__name__}.")
        self.model = model
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.loss, self.loss_kwargs = check_loss(loss, loss_kwargs)
        self.value_range = check_value_range(value_range)
        if isinstance(targeted, str):
            targeted = check_choice(targeted, "targeted", ("least_likely", "random"))
        elif not isinstance(targeted, bool):
            raise TypeError(f'`targeted` must be False, True, "least_likely" or "random", got {targeted!r}.')
        self.targeted = targeted
        self.task = check_choice(task, "task", TASK_CHOICES)
        self.kappa = check_eps(kappa, "kappa")
        self.seg_success_ratio = check_positive(seg_success_ratio, "seg_success_ratio")
        if self.seg_success_ratio > 1:
            raise ValueError(f"`seg_success_ratio` must be in (0, 1], got {seg_success_ratio}.")
        self.early_stop = bool(early_stop)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}.")
        self.seed = seed
        self.loss_in_mask = bool(loss_in_mask)
        if not (isinstance(objective, type) and issubclass(objective, Objective)):
            raise TypeError(f"`objective` must be a subclass of monai_adv.attacks.Objective, got {objective!r}.")
        self.objective = objective
        self.max_batch = None if max_batch is None else check_int(max_batch, "max_batch")

    def __repr__(self) -> str:
        loss = self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", "callable")
        return f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, loss={loss!r})"

    def settings(self) -> Dict[str, Any]:
        """The arguments of :class:`Attack` this attack was built with (without ``model``), e.g. to build another
        attack with the same budget, range, task, goal and seed."""
        return {name: getattr(self, name) for name in BASE_ARGUMENTS}

    def with_model(self, model: Callable[[torch.Tensor], torch.Tensor]) -> Attack:
        """A copy of this attack on another model (the instance itself is left as it is)."""
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning logits, got {type(model).__name__}.")
        other = copy.copy(self)
        other.model = model
        return other

    def __call__(self, x: torch.Tensor, y: Any, mask: Any = None, target: Any = None, loss_mask: Any = None):
        """Return the adversarial batch for ``x`` (N, C, *spatial) with labels ``y``; see :meth:`perturb`.

        The same ``x_adv`` as ``perturb(...).x_adv``. Asked for ``x_adv`` alone, an attack whose run never reads
        the clean prediction (e.g. PGD as adversarial training uses it: random start, no early exit, last
        iterate) skips the clean forward pass, which only :meth:`perturb`'s per-sample outcomes need.
        """
        return self._attack(x, y, mask, target, loss_mask, need_clean=False).x_adv

    def perturb(self, x: torch.Tensor, y: Any, mask: Any = None, target: Any = None, loss_mask: Any = None):
        """Attack a batch and return the adversarial batch with per-sample outcomes.

        Args:
            x: images (N, C, *spatial) with 1-3 spatial dims, floating point, inside ``value_range``.
            y: labels: class indices (N,); multi-hot (N, K); a label map (N, 1, *spatial) or one-hot
                (N, K, *spatial) for segmentation.
            mask: optional region of interest broadcastable to ``x``; only voxels where it is non-zero change.
            target: target labels in the form of ``y``, required when ``targeted=True``.
            loss_mask: segmentation: voxels (N, *spatial) or (N, 1, *spatial), broadcastable, over which the voxel
                loss is averaged; default all voxels (or ``mask`` with ``loss_in_mask=True``).
        """
        return self._attack(x, y, mask, target, loss_mask, need_clean=True)

    def _attack(self, x, y, mask, target, loss_mask, need_clean: bool) -> AttackResult:
        x = check_input(x, self.value_range)
        if self.targeted is True and target is None:
            raise ValueError("`target` is required when the attack is built with targeted=True.")
        if target is not None and self.targeted is not True:
            raise ValueError("`target` was given but the attack is untargeted; build it with targeted=True.")
        if x.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.bool, device=x.device)
            task = self.task if self.task != "auto" else "classification"
            return AttackResult(x.detach().clone(), empty, torch.zeros(0, device=x.device), empty, task)
        with torch.inference_mode(False):
            x_orig = x.detach().as_subclass(torch.Tensor)
            mask_t = check_mask(mask, x_orig)
            y_t = as_tensor_labels(y, "y", x_orig.device)
            target_t = None if target is None else as_tensor_labels(target, "target", x_orig.device)
            loss_mask_t = None if loss_mask is None else as_tensor_labels(loss_mask, "loss_mask", x_orig.device)
            seed = resolve_seed(self.seed)  # one seed for every chunk of the batch
            with model_state_guard(self.model), torch.enable_grad():
                bounds = self._chunks(x_orig, y_t, target_t, loss_mask_t)
                if bounds is None:
                    result = self._attack_rows(x_orig, y_t, mask_t, target_t, loss_mask_t, need_clean, seed)
                else:
                    result = self._attack_chunks(bounds, x_orig, y_t, mask_t, target_t, loss_mask_t, need_clean, seed)
        return replace(result, x_adv=_like_input(x, result.x_adv))

    def _attack_rows(self, x_orig, y, mask, target, loss_mask, need_clean: bool, seed: int) -> AttackResult:
        """Attack the batch ``x_orig`` (plain tensor, the input's dtype) as prepared by :meth:`_attack`, inside its
        model guard; return the result with ``x_adv`` inside the budget, in the input's dtype."""
        x_plain = x_orig.to(model_dtype(self.model) or x_orig.dtype).clone()
        mask_plain = None if mask is None else mask.to(x_plain.dtype)
        state = self._prepare(x_plain, y, target, mask_plain, loss_mask, need_clean, seed)
        state.x_input = x_orig
        result = self._unchanged(state) if self.eps == 0 else self._perturb(state)
        # the budget holds exactly in the input's dtype, whatever dtype the network computed in
        x_adv = enforce_budget(
            x_orig, result.x_adv.detach().to(x_orig.dtype), self.eps, self.norm, mask, self.value_range
        )
        return replace(result, x_adv=x_adv)

    def _chunks(self, x, y, target, loss_mask) -> Optional[List[Tuple[int, int]]]:
        """The (start, stop) rows of the ``max_batch`` chunks, or None to attack the batch at once: when it is
        small enough, or when a per-sample argument does not have one row per sample (then the unchunked call
        reports it exactly as without ``max_batch``)."""
        n = x.shape[0]
        if self.max_batch is None or n <= self.max_batch:
            return None
        for labels in (y, target):
            if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
                return None
        if loss_mask is not None and loss_mask.ndim >= x.ndim - 1 and loss_mask.shape[0] not in (1, n):
            return None
        return [(start, min(start + self.max_batch, n)) for start in range(0, n, self.max_batch)]

    def _attack_chunks(self, bounds, x, y, mask, target, loss_mask, need_clean: bool, seed: int) -> AttackResult:
        """Attack the chunks one after the other (only one chunk's graph and iterates alive at a time) and join
        their results as one result for the whole batch."""
        n = x.shape[0]
        per_sample_mask = loss_mask is not None and loss_mask.ndim >= x.ndim - 1 and loss_mask.shape[0] == n
        x_adv = torch.empty_like(x)
        parts: List[AttackResult] = []
        for start, stop in bounds:
            rows = slice(start, stop)
            part = self._attack_rows(
                x[rows],
                y[rows],
                None if mask is None else mask[rows],
                None if target is None else target[rows],
                loss_mask[rows] if per_sample_mask else loss_mask,
                need_clean,
                seed,
            )
            x_adv[rows] = part.x_adv
            parts.append(replace(part, x_adv=x_adv[rows]))
            del part  # its x_adv is copied: free it before the next chunk runs
        return join_results(parts, self.per_sample_details, x_adv=x_adv)

    # ---- what subclasses implement or refine ------------------------------------------------------------------
    def _perturb(self, state: AttackState) -> AttackResult:
        """The attack on the prepared batch (``eps`` > 0): return ``state.result(x_adv, success, loss, ...)``."""
        raise NotImplementedError

    def _clean_pass(
        self, x: torch.Tensor, mask: Optional[torch.Tensor], keys: List[bytes], seed: int, need_clean: bool
    ) -> Tuple[torch.Tensor, Optional[FirstPass]]:
        """The logits the batch is prepared from, and a pass the first step may reuse (None here).

        The base runs the clean input without gradients. An attack may return instead a :class:`FirstPass` (the
        clean input with its graph, or, when ``need_clean`` is False and its run never reads the clean prediction,
        its first iterate); its logits then stand for the clean ones only when ``FirstPass.clean``.
        """
        with torch.inference_mode():
            logits = self.call_model(x)
        return logits.clone(), None  # a normal tensor: later steps may index it under autograd

    def _objective_loss(self, num_classes: int) -> Tuple[Union[str, LossFunction], List[str]]:
        """The loss of the batch's objective given the model's outputs, and notes on any substitution."""
        return self.loss, []

    def _unchanged(self, state: AttackState) -> AttackResult:
        """The result when ``eps`` is 0: the clean input, with the clean outcome (one query: the clean pass)."""
        queries = torch.ones(state.x.shape[0], dtype=torch.long, device=state.x.device) if self.counts_queries else None
        loss = None if state.clean_loss is None else state.clean_loss.double()
        return state.result(state.x, state.clean_success, loss, queries)

    # ---- shared machinery ----------------------------------------------------------------------------------
    def call_model(self, x: torch.Tensor) -> torch.Tensor:
        """Call the model (its eval view inside the attack) and check it returns logits for the whole batch."""
        out = active_model(self.model)(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"`model` must return a tensor of logits, got {type(out).__name__}; wrap a model with several "
                "outputs in a function that returns the logits."
            )
        if out.ndim < 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"`model` must return logits (N, K[, *spatial]) for a batch of {x.shape[0]}, got {tuple(out.shape)}."
            )
        if not out.is_floating_point():
            raise TypeError(
                f"`model` must return floating-point logits, got {out.dtype}; integer or boolean outputs (e.g. class "
                "predictions) carry no gradient and cannot be scored as logits."
            )
        return out if type(out) is torch.Tensor else out.as_subclass(torch.Tensor)

    @staticmethod
    def input_gradient(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gradient of ``loss.sum()`` with respect to ``x`` only (the model's parameters get no ``.grad``)."""
        message = (
            "The model's output is not differentiable with respect to its input: is it run under "
            "torch.no_grad() or does it detach its input? Attacks need input gradients."
        )
        if not loss.requires_grad:
            raise RuntimeError(message)
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        if grad is None:
            raise RuntimeError(message)
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)

    def query(self, state: AttackState, x: torch.Tensor, idx: torch.Tensor):
        """One model evaluation without gradients: per-sample loss (float64) and success of ``x`` for ``idx``.

        It runs under ``torch.inference_mode`` (no autograd bookkeeping at all); its outputs only feed
        comparisons and copies, never a graph.
        """
        with torch.inference_mode():
            logits = self.call_model(x)
            return state.objective.loss(logits, idx).double(), state.objective.success(logits, idx)

    def generators(self, state: AttackState, idx: torch.Tensor, stream: int) -> List[torch.Generator]:
        """Per-sample generators for the samples ``idx`` and a stream number (e.g. restart index)."""
        keys = [state.keys[i] for i in idx.tolist()]
        return sample_generators(keys, state.seed, stream, state.x.device)

    def _prepare(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        loss_mask: Optional[torch.Tensor] = None,
        need_clean: bool = True,
        seed: Optional[int] = None,
    ) -> AttackState:
        keys = sample_keys(x)
        seed = resolve_seed(self.seed) if seed is None else seed
        logits, first = self._clean_pass(x, mask, keys, seed, need_clean)
        detached = logits.detach()
        check_logits(detached)
        clean_logits = detached if first is None or first.clean else None
        task = infer_task(self.task, detached, y)
        labels = prepare_labels(task, y, detached, "y")
        if clean_logits is not None and looks_like_probabilities(task, clean_logits):
            warnings.warn(
                "The model's outputs look like probabilities (all in [0, 1]); attacks expect logits. Remove the "
                "final softmax/sigmoid, or the attack may be weakened by vanishing gradients.",
                UserWarning,
                stacklevel=4,
            )
        targets = None
        if target is not None:
            targets = prepare_labels(task, target, detached, "target")
        elif isinstance(self.targeted, str):
            gens = sample_generators(keys, seed, TARGET_STREAM, x.device) if self.targeted == "random" else []
            targets = choose_targets(self.targeted, task, labels, detached, gens)
        loss, notes = self._objective_loss(detached.shape[1])
        objective = self.objective(
            task,
            labels,
            targets,
            clean_logits,
            loss=loss,
            kappa=self.kappa,
            seg_success_ratio=self.seg_success_ratio,
            loss_mask=self._loss_mask(loss_mask, mask, labels, task),
            loss_kwargs=self.loss_kwargs,
            num_classes=detached.shape[1],
        )
        clean_loss = clean_success = None
        if clean_logits is not None:
            with torch.no_grad():
                clean_loss = objective.loss(clean_logits, slice(None))
                clean_success = objective.success(clean_logits, slice(None))
        return AttackState(
            x, y, mask, objective, keys, seed, clean_logits, clean_loss, clean_success, first, target, loss_mask, notes
        )

    def _loss_mask(
        self, loss_mask: Optional[torch.Tensor], mask: Optional[torch.Tensor], labels: torch.Tensor, task: str
    ) -> Optional[torch.Tensor]:
        """The loss mask (N, *spatial) of the labels' shape, as 0/1 in float: given, or the perturbation mask."""
        if loss_mask is None and not (self.loss_in_mask and mask is not None):
            return None
        if task != "segmentation":
            raise ValueError(f"`loss_mask` and `loss_in_mask` restrict the voxel loss of segmentation, not {task}.")
        region = loss_mask
        if region is None:  # the perturbation mask (N, C, *spatial): a voxel counts if any channel may change
            region = mask.amax(dim=1)
        elif region.ndim == labels.ndim + 1 and region.shape[1] == 1:
            region = region[:, 0]
        try:
            region = torch.broadcast_to(region, labels.shape)
        except RuntimeError as e:
            raise ValueError(
                f"`loss_mask` of shape {tuple(region.shape)} does not match the label map {tuple(labels.shape)}; "
                "expected (N, *spatial) or (N, 1, *spatial) of the model's output size."
            ) from e
        return (region != 0).float()


#: the arguments every attack takes from :class:`Attack` (besides ``model``)
BASE_ARGUMENTS = tuple(p for p in inspect.signature(Attack.__init__).parameters if p not in ("self", "model"))


class IterativeAttack(Attack):
    """Base of the attacks that iterate from a start point, possibly several times.

    Args:
        model: the model under attack.
        steps: iterations per run (>= 1); the attacks that try several target classes run them per target.
        restarts: runs per sample (>= 1), each from its own random start, only on the samples not yet fooled
            (with ``early_stop``); each sample keeps its best point over all runs.
        kwargs: the arguments of :class:`Attack`.
    """

    def __init__(
        self, model: Callable[[torch.Tensor], torch.Tensor], steps: int = 100, restarts: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.steps = check_int(steps, "steps")
        self.restarts = check_int(restarts, "restarts")


class QueryAttack(Attack):
    """Base of the score-based attacks: they need only the model's outputs, within a budget of ``queries`` model
    evaluations per sample (the clean pass included), and count them exactly in ``result.queries``.

    Args:
        model: the model under attack (any callable returning logits; no gradients are needed).
        queries: model evaluations per sample, including the clean pass (at least ``min_queries``).
        kwargs: the arguments of :class:`Attack`.
    """

    counts_queries = True
    #: the smallest query budget the attack can run with
    min_queries = 1

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], queries: int = 5000, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.queries = check_int(queries, "queries", minimum=self.min_queries)


def join_results(
    parts: Sequence[AttackResult], per_sample_details: Sequence[str] = (), x_adv: Optional[torch.Tensor] = None
) -> AttackResult:
    """One :class:`AttackResult` for a batch attacked in consecutive chunks, from the chunks' results in order.

    Per-sample tensors (``x_adv``, ``success``, ``loss``, ``clean_success``, ``queries``) are concatenated.
    ``details`` are joined key by key: the entries named in ``per_sample_details`` (lists or tensors with one
    entry per sample, e.g. AutoAttack's ``broken_by``) and tensors are concatenated; nested results (a transfer
    attack's ``source``) are joined the same way; numbers (counts, seconds) are summed; dicts are joined per key;
    other lists (``notes``, the names of a chain) keep the first chunk's entries followed by the new ones of the
    others; any other value is kept when every chunk has the same, else listed per chunk.

    Args:
        parts: the chunks' results, in the order of their samples.
        per_sample_details: keys of ``details`` holding one entry per sample.
        x_adv: the joined adversarial batch, when the caller already holds it (else the chunks' are concatenated).
    """
    first = parts[0]
    if len(parts) == 1:
        return first if x_adv is None else replace(first, x_adv=x_adv)

    def cat(name: str) -> Optional[torch.Tensor]:
        values = [getattr(part, name) for part in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    return AttackResult(
        cat("x_adv") if x_adv is None else x_adv,
        cat("success"),
        cat("loss"),
        cat("clean_success"),
        first.task,
        cat("queries"),
        _join_details([part.details for part in parts], set(per_sample_details)),
    )


def _join_details(details: Sequence[Dict[str, Any]], per_sample: set) -> Dict[str, Any]:
    keys: List[str] = []
    for entry in details:
        keys += [key for key in entry if key not in keys]
    return {key: _join_values(key, [d[key] for d in details if key in d], per_sample) for key in keys}


def _join_values(key: str, values: List[Any], per_sample: set) -> Any:
    first = values[0]
    if isinstance(first, AttackResult):
        return join_results(values, per_sample)
    if key in per_sample and isinstance(first, (list, tuple)):
        return [item for value in values for item in value]
    if isinstance(first, torch.Tensor):
        return torch.stack(values).sum(dim=0) if first.ndim == 0 else torch.cat(values)
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(values)
    if isinstance(first, dict):
        return _join_details(values, per_sample)
    if isinstance(first, list):
        joined = list(first)
        for value in values[1:]:
            joined += [item for item in value if item not in joined]
        return joined
    return first if all(_same(value, first) for value in values) else list(values)


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or (type(a) is type(b) and bool(a == b))
    except (TypeError, ValueError, RuntimeError):  # e.g. arrays, whose == is elementwise
        return False


def _like_input(x_in: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Return ``x_adv`` as the type of ``x_in``: a tensor subclass such as MetaTensor keeps its metadata."""
    if type(x_in) is torch.Tensor:
        return x_adv
    out = x_in.detach().clone()
    with torch.no_grad():
        out.copy_(x_adv)
    return out
