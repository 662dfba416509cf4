# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The segmentation attack ensemble (SEA; Croce, Singh & Hein, ECCV 2024), adapted to medical segmentation: APGD on
several segmentation losses with a progressive reduction of the radius, and per image the example of lowest Dice."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from monai_adv.attacks.apgd import APGD
from monai_adv.attacks.base import AttackState, IterativeAttack
from monai_adv.attacks.objective import LossFunction, Objective, check_loss
from monai_adv.attacks.projections import clip_to_range, project
from monai_adv.attacks.tasks import hard_dice, predict
from monai_adv.attacks.validation import check_positive

__all__ = ["SegmentationEnsemble", "DEFAULT_LOSSES", "DEFAULT_SCHEDULE", "schedule_steps"]

#: the losses of the ensemble: the paper's four, then the soft Dice loss (the metric the evaluation reports)
DEFAULT_LOSSES = ("masked_ce", "balanced_ce", "js", "masked_spherical", "dice")
#: progressive radius reduction: (radius as a multiple of eps, share of the steps), run in this order
DEFAULT_SCHEDULE = ((2.0, 0.3), (1.5, 0.3), (1.0, 0.4))


def schedule_steps(steps: int, schedule: Sequence[Tuple[float, float]]) -> List[Tuple[float, int]]:
    """The (radius factor, iterations) of each stage for ``steps`` iterations per loss: each stage but the last gets
    ``int(share * steps)`` iterations, the last one the rest (at least one); stages left with none are dropped."""
    counts = [int(share * steps) for _, share in schedule[:-1]]
    counts.append(steps - sum(counts))
    return [(factor, count) for (factor, _), count in zip(schedule, counts) if count > 0]


def _check_schedule(schedule: Any) -> Tuple[Tuple[float, float], ...]:
    try:
        stages = tuple((float(factor), float(share)) for factor, share in schedule)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`schedule` must be a sequence of (radius factor, share of the steps) pairs, got {schedule!r}."
        ) from e
    if not stages:
        raise ValueError("`schedule` must have at least one stage.")
    for factor, share in stages:
        check_positive(factor, "schedule radius factor")
        check_positive(share, "schedule share of the steps")
    if stages[-1][0] != 1.0:
        raise ValueError(
            f"The last stage of `schedule` must run at the budget itself (factor 1.0), got {stages[-1][0]}."
        )
    if not math.isclose(sum(share for _, share in stages), 1.0, rel_tol=0.0, abs_tol=1e-6):
        raise ValueError(f"The shares of the steps in `schedule` must sum to 1, got {[s for _, s in stages]}.")
    return stages


class _LowestDiceGoal(Objective):
    """The goal of the ensemble's APGD runs: a sample is done when the Dice of its prediction is 0 (it cannot go
    lower). Each call of :meth:`success` keeps the Dice it measured in ``last_dice`` for the run's bookkeeping."""

    last_dice: Optional[torch.Tensor] = None

    def success(self, logits: torch.Tensor, idx) -> torch.Tensor:
        self.last_dice = hard_dice(predict(self.task, logits), self.labels[idx], self.num_classes)
        return self.last_dice == 0


class _LowestDice:
    """Per sample, the point of lowest Dice offered so far; between points of equal Dice the higher loss wins.

    Args:
        x: the points to start from (N, C, *spatial).
        dice: their Dice (N,) (float64); +inf takes the first point offered.
    """

    def __init__(self, x: torch.Tensor, dice: torch.Tensor) -> None:
        self.x = x.clone()
        self.dice = dice.clone()
        self.loss = torch.full_like(self.dice, float("-inf"))

    def update(self, idx: torch.Tensor, x_new: torch.Tensor, dice: torch.Tensor, loss: torch.Tensor) -> None:
        """Offer points for the samples ``idx`` (selected on the device: no host synchronisation)."""
        old_dice, old_loss = self.dice.index_select(0, idx), self.loss.index_select(0, idx)
        dice, loss = dice.to(old_dice.dtype), loss.to(old_loss.dtype)
        better = (dice < old_dice) | ((dice == old_dice) & (loss > old_loss))
        rows = better.reshape(-1, *([1] * (x_new.ndim - 1)))
        self.x.index_copy_(0, idx, torch.where(rows, x_new.to(self.x.dtype), self.x.index_select(0, idx)))
        self.dice.index_copy_(0, idx, torch.where(better, dice, old_dice))
        self.loss.index_copy_(0, idx, torch.where(better, loss, old_loss))


class _Discard:
    """Stands for APGD's own best-iterate record, which the ensemble replaces by :class:`_LowestDice`."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


class _StageAPGD(APGD):
    """APGD for one stage of the schedule: its run starts from given points (the previous stage's, projected) instead
    of a random point on the sphere, and offers every iterate it evaluates, with its Dice, to a :class:`_LowestDice`.

    The first run starts from ``start`` when given (the rows of the samples it attacks), later ones from APGD's own
    random start.
    """

    def __init__(
        self, model: Callable, start: Optional[torch.Tensor], record: _LowestDice, rho: float, **kwargs: Any
    ) -> None:
        super().__init__(model, rho=rho, **kwargs)
        self.start, self.record, self.passes = start, record, 0

    def _start(self, state, idx: torch.Tensor, stream: int, x0: torch.Tensor, mask: Optional[torch.Tensor]):
        start, self.start = self.start, None  # the first run only; later restarts draw their own start
        if start is None:
            return super()._start(state, idx, stream, x0, mask)
        return start.index_select(0, idx).to(x0.dtype)

    def _evaluate(self, objective: Objective, x_adv: torch.Tensor, idx: torch.Tensor):
        loss, success, grad = super()._evaluate(objective, x_adv, idx)
        self.record.update(idx, x_adv, objective.last_dice, loss)
        self.passes += idx.numel() * self.eot_iter
        return loss, success, grad


class SegmentationEnsemble(IterativeAttack):
    """The segmentation attack ensemble (SEA; Croce, Singh & Hein, ECCV 2024) with Dice as the metric.

    For each loss of ``losses``, in order, an untargeted :class:`~monai_adv.attacks.APGD` attack with progressive
    radius reduction runs on every image whose Dice is not yet 0, and each image keeps the example of lowest Dice
    (of its prediction with the label map) over all losses: the worst case the evaluation reports, also for the
    images that no loss brings below the goal. Between losses that reach the same Dice the earlier one in ``losses``
    keeps the image. Success is the attack's segmentation goal: Dice below ``seg_success_ratio`` times the clean Dice.

    Losses (see :mod:`monai_adv.attacks.losses`): "masked_ce" (cross-entropy of the voxels still classified
    correctly), "balanced_ce" (masked cross-entropy with each voxel weighted by the inverse frequency of its class in
    the label map), "js" (Jensen-Shannon divergence between the softmax and the one-hot label map), "masked_spherical"
    (minus the label's coordinate of the normalised logit vector, on the correct voxels) - the paper's four - and
    "dice" (soft Dice loss), the metric itself. Any segmentation loss name or callable ``(logits, y, **context)`` works.

    Progressive radius reduction (the paper's schedule, ``DEFAULT_SCHEDULE``): the ``steps`` iterations of each loss
    are split 30 % / 30 % / 40 % over the radii 2 eps, 1.5 eps and eps. The first stage starts from a random point on
    the sphere of radius 2 eps; each later stage restarts APGD (step size 2 r) from the previous stage's point of
    lowest Dice projected onto its smaller ball (and the value range). A segmentation attack must flip many voxels at
    once, and their decision boundaries pull the perturbation different ways: in a larger ball the attack finds a
    region where most voxels are misclassified, and most of it stays misclassified as the ball shrinks back to the
    budget, which a run at the budget alone finds less often. Only the last stage's iterates (radius eps) can be
    returned. The same schedule serves L-inf and L2.

    Cost: per image and loss, ``steps`` iterations plus one evaluation of each stage's start point, each one forward
    and one backward pass: 5 losses x (200 + 3) = 1015 forward+backward passes with the defaults (fewer where an
    image reaches Dice 0: its later iterations and losses are skipped), plus the clean pass and one final forward
    pass. The AutoAttack segmentation chain (APGD-CE 100, APGD-Dice 100, Square 5000 queries) costs up to
    2 x 101 forward+backward passes and 5000 forward passes per image: with a backward pass about twice a forward
    pass, about 5600 forward-pass equivalents against about 3050 here (equal at a backward of 5 forward passes).
    ``result.details["passes"]`` counts the forward+backward passes of each loss.

    ``result.details`` holds ``attacks`` (the losses, in order), ``broken_by`` (per image, the first loss whose
    example met the goal, "clean" when the clean prediction already has Dice 0, None if none did), ``lowest_by`` (per
    image, the loss whose example is returned; None for images not attacked), ``broken_counts``, ``seconds`` and
    ``passes`` per loss, ``dice`` (per image, the Dice of the returned examples, float64), ``clean_dice``,
    ``dice_by_loss`` (per loss and image, the Dice of that loss's example; NaN where the loss did not run because an
    earlier loss reached Dice 0) and ``schedule`` (the (radius, iterations) stages).

    Args:
        model: the model under attack (a segmentation network, or an :class:`~monai_adv.attacks.InfererModel`).
        losses: the losses to run, in order: segmentation loss names or callables ``(logits, y, **context)``.
        loss_options: options per loss name, e.g. ``{"dice": {"include_background": True}}``.
        schedule: the stages of the radius reduction, (radius as a multiple of eps, share of the steps) each; the
            last one at 1.0. ``((1.0, 1.0),)`` runs plain APGD at the budget.
        rho: APGD's step-size check (see :class:`~monai_adv.attacks.APGD`).
        kwargs: ``steps`` (iterations per loss, default 200) and ``restarts`` (runs of the whole schedule per loss,
            each from its own random start, on the images whose Dice is not yet 0; default 1) of
            :class:`~monai_adv.attacks.base.IterativeAttack`, and the arguments of :class:`~monai_adv.attacks.Attack`
            (eps, norm, value_range, seg_success_ratio, seed, loss_in_mask, max_batch). The attack is untargeted, on
            segmentation, and runs each image until its Dice is 0 (no early stop at the goal).

    Example::

        result = SegmentationEnsemble(InfererModel(unet, inferer), eps=4 / 255).perturb(volumes, label_maps)
        result.details["dice"].mean()  # mean Dice under attack
        result.details["lowest_by"]    # e.g. ["js", "masked_ce", None, ...]
    """

    name = "sea"
    fixed_arguments = ("loss", "targeted", "kappa", "early_stop", "loss_kwargs", "objective", "task")
    tasks = ("segmentation",)
    per_sample_details = ("broken_by", "lowest_by")

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        losses: Sequence[Union[str, LossFunction]] = DEFAULT_LOSSES,
        loss_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
        schedule: Sequence[Tuple[float, float]] = DEFAULT_SCHEDULE,
        rho: float = 0.75,
        steps: int = 200,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, steps=steps, task="segmentation", **kwargs)
        if isinstance(losses, (str, bytes)) or callable(losses):
            losses = [losses]
        options = dict(loss_options or {})
        self.losses: List[Tuple[str, Union[str, LossFunction], Dict[str, Any]]] = []
        for i, loss in enumerate(losses):
            name = loss if isinstance(loss, str) else getattr(loss, "__name__", f"loss{i}")
            checked, loss_kwargs = check_loss(loss, options.pop(name, None))
            if isinstance(checked, str):
                name = checked
            if any(name == seen for seen, _, _ in self.losses):
                raise ValueError(f"`losses` lists {name!r} twice.")
            self.losses.append((name, checked, loss_kwargs))
        if not self.losses:
            raise ValueError("`losses` must list at least one loss.")
        if options:
            raise ValueError(f"`loss_options` names losses not in `losses`: {sorted(options)}.")
        self.schedule = _check_schedule(schedule)
        self.rho = check_positive(rho, "rho")
        if self.rho > 1:
            raise ValueError(f"`rho` must be in (0, 1], got {rho}.")

    def __repr__(self) -> str:
        names = [name for name, _, _ in self.losses]
        return f"SegmentationEnsemble(eps={self.eps:g}, norm={self.norm!r}, steps={self.steps}, losses={names})"

    def _perturb(self, state: AttackState):
        objective, x = state.objective, state.x
        n, device = x.shape[0], x.device
        clean_dice = objective.clean_reference.clone()
        stages = schedule_steps(self.steps, self.schedule)
        # images at Dice 0 cannot go lower: the clean ones are done, the others until a loss brings them there
        best = _LowestDice(x, torch.where(clean_dice == 0, clean_dice, torch.full_like(clean_dice, float("inf"))))
        broken_by: List[Optional[str]] = ["clean" if c else None for c in state.clean_success.tolist()]
        lowest_by: List[Optional[str]] = [None] * n
        seconds: Dict[str, float] = {}
        passes: Dict[str, int] = {}
        dice_by_loss: Dict[str, torch.Tensor] = {}
        everyone = torch.arange(n, device=device)
        attacked = everyone[best.dice > 0]
        for name, loss, loss_kwargs in self.losses:
            start = time.perf_counter()
            goal = _LowestDiceGoal(
                "segmentation",
                objective.labels,
                None,
                state.clean_logits,
                loss=loss,
                seg_success_ratio=0.0,
                loss_mask=objective.loss_mask,
                loss_kwargs=loss_kwargs,
                num_classes=objective.num_classes,
            )
            ran = best.dice > 0
            todo = everyone[ran]
            result = _LowestDice(x, clean_dice)  # the clean point stands until an iterate of Dice as low is found
            passes[name] = 0
            for restart in range(self.restarts):
                if restart > 0:
                    todo = todo[result.dice[todo] > 0]
                if todo.numel() == 0:
                    break
                passes[name] += self._schedule(state, goal, todo, restart, stages, result)
            seconds[name] = time.perf_counter() - start
            dice_by_loss[name] = torch.where(ran, result.dice, torch.full_like(result.dice, float("nan")))
            lower = ran & (result.dice < best.dice)  # ties: the earlier loss keeps the image
            best.x = torch.where(lower.reshape(-1, *([1] * (x.ndim - 1))), result.x, best.x)
            best.dice = torch.where(lower, result.dice, best.dice)
            met = ran & self._goal_met(result.dice, clean_dice)
            for i, (is_lower, is_met) in enumerate(zip(lower.tolist(), met.tolist())):
                if is_lower:
                    lowest_by[i] = name
                if is_met and broken_by[i] is None:
                    broken_by[i] = name
        # the returned examples are what counts: check them in one pass
        success, loss_value = state.clean_success.clone(), state.clean_loss.double().clone()
        dice = clean_dice.clone()
        notes: List[str] = []
        if attacked.numel():
            with torch.inference_mode():
                logits = self.call_model(best.x[attacked])
                success[attacked] = objective.success(logits, attacked)
                loss_value[attacked] = objective.loss(logits, attacked).double()
                dice[attacked] = hard_dice(
                    predict("segmentation", logits), objective.labels[attacked], objective.num_classes
                )
            if not torch.equal(dice[attacked], best.dice[attacked]):
                notes.append(
                    "The Dice of some returned examples differs from the one measured during the attack (a randomized "
                    "model?): `dice` and `success` are those of the returned examples."
                )
        names = [name for name, _, _ in self.losses]
        return state.result(
            best.x,
            success,
            loss_value,
            attacks=names,
            broken_by=broken_by,
            lowest_by=lowest_by,
            broken_counts={name: sum(1 for b in broken_by if b == name) for name in names},
            seconds=seconds,
            passes=passes,
            dice=dice,
            clean_dice=clean_dice,
            dice_by_loss=dice_by_loss,
            schedule=[(factor * self.eps, count) for factor, count in stages],
            notes=notes,
        )

    def _goal_met(self, dice: torch.Tensor, clean_dice: torch.Tensor) -> torch.Tensor:
        """The segmentation goal of :class:`~monai_adv.attacks.Objective` on Dice values."""
        return (dice < self.seg_success_ratio * clean_dice) | (dice == 0)

    def _schedule(
        self,
        state: AttackState,
        goal: _LowestDiceGoal,
        todo: torch.Tensor,
        stream: int,
        stages: Sequence[Tuple[float, int]],
        result: _LowestDice,
    ) -> int:
        """One pass of the radius schedule on the samples ``todo``; the last stage's iterates are offered to
        ``result``. Returns the forward+backward passes it ran (summed over the samples)."""
        x, mask = state.x, state.mask
        start: Optional[torch.Tensor] = None
        passes = 0
        for k, (factor, count) in enumerate(stages):
            last = k == len(stages) - 1
            radius = factor * self.eps
            if start is not None:  # the previous stage's lowest-Dice point, projected onto this stage's ball
                delta = project(start - x, radius, self.norm)
                start = clip_to_range(x + (delta if mask is None else delta * mask), self.value_range)
            record = result if last else _LowestDice(x, torch.full_like(result.dice, float("inf")))
            stage = _StageAPGD(
                self.model,
                start,
                record,
                self.rho,
                eps=radius,
                norm=self.norm,
                steps=count,
                value_range=self.value_range,
                seed=state.seed,
            )
            stage._run(state, goal, todo, stream, _Discard())
            passes += stage.passes
            start = record.x
        return passes
