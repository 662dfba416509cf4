# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""AutoAttack (Croce & Hein 2020): a parameter-free ensemble, per-sample worst case, for 2D and 3D tasks."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

from monai_adv.attacks.apgd import APGD, APGDT
from monai_adv.attacks.base import Attack, AttackState
from monai_adv.attacks.diagnostics import autoattack_notes
from monai_adv.attacks.fab import FAB
from monai_adv.attacks.registry import attack_arguments, make_attack
from monai_adv.attacks.sanity import sanity_checks
from monai_adv.attacks.scoring import score_examples
from monai_adv.attacks.square import Square
from monai_adv.attacks.validation import check_choice, check_int

__all__ = ["AutoAttack"]

VERSIONS = ("standard", "fast", "plus", "rand", "custom")
#: per version, the default number of target classes of APGD-T / FAB-T and the Square query budget
VERSION_DEFAULTS = {"fast": {"target_classes": 3, "queries": 1000}}
STANDARD_DEFAULTS = {"target_classes": 9, "queries": 5000}


class AutoAttack(Attack):
    """AutoAttack: run an ensemble of attacks, each only on the samples still handled correctly, and keep each
    sample's worst case.

    Versions (classification):
        - "standard": APGD-CE, APGD-T (targeted DLR, 9 targets), FAB-T (9 targets), Square (5000 queries).
        - "fast": APGD-CE, APGD-T on the 3 targets closest by linearized distance (MALT's ranking, see
          :class:`~monai_adv.attacks.APGDT`), Square (1000 queries) on the samples the gradient attacks leave; with
          2 classes, APGD on the CW margin (which covers both APGD-CE and APGD-T there) and Square. See
          docs/performance.md for how it compares with "standard", sample by sample, and what it costs. For
          multi-label and segmentation tasks it runs the standard chain with Square's smaller budget.
        - "plus": APGD-CE and APGD-DLR with 5 restarts each, APGD-T, FAB-T with 5 restarts, Square; the
          untargeted FAB of the original "plus" is covered by FAB-T over the target classes.
        - "rand": APGD-CE and APGD-DLR with expectation over transformation (20 passes per step), for
          randomized models.
        - "custom": the attacks given in ``attacks`` (registered names or attack instances).

    DLR needs at least 3 classes (targeted DLR 4): with fewer (binary diagnosis), APGD-DLR and APGD-T use the CW
    margin instead, and the result's notes say so. For multi-label tasks the chain is APGD-CE (BCE), APGD on the
    multi-label margin and Square; for segmentation APGD-CE, APGD on the soft Dice loss and Square (success:
    Dice below ``seg_success_ratio`` of the clean Dice).

    The returned examples are checked in one last forward pass: ``result.success`` and ``result.loss`` (the
    cross-entropy; BCE or voxel-mean cross-entropy for the other tasks) are measured on them. ``result.details``
    holds ``attacks`` (the chain, in order), ``broken_by`` (per sample, the attack that broke it first, "clean"
    if it failed clean, None if robust), ``broken_counts`` and ``seconds`` per attack, and ``notes``
    (substitutions, sanity-check warnings).

    Args:
        model: the model under attack.
        version: "standard", "plus", "rand" or "custom".
        attacks: for "custom": names from :func:`~monai_adv.attacks.available_attacks` or built attacks.
        steps: iterations of APGD and FAB.
        queries: query budget of Square; None: the version's (5000, "fast" 1000).
        target_classes: target classes of APGD-T and FAB-T; None: the version's (9, "fast" 3).
        check: run :func:`~monai_adv.attacks.sanity_checks` on the first batch this instance attacks (once, not
            per batch); its warnings are issued then and join every result's notes.
        kwargs: the other arguments of :class:`~monai_adv.attacks.Attack` (eps, norm, value_range, task,
            seg_success_ratio, seed of every attack of the chain, ...). AutoAttack is untargeted.

    Example::

        result = make_attack("autoattack", model, eps=8 / 255).perturb(x, y)
        robust_accuracy = 1 - result.success.float().mean()
        result.details["broken_by"]  # e.g. [None, "apgd-ce", "clean", "apgd-t", ...]
    """

    name = "autoattack"
    fixed_arguments = ("loss", "targeted", "kappa", "early_stop", "loss_kwargs", "objective")
    per_sample_details = ("broken_by",)

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        version: str = "standard",
        attacks: Optional[Sequence[Union[str, Attack]]] = None,
        steps: int = 100,
        queries: Optional[int] = None,
        target_classes: Optional[int] = None,
        check: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.version = check_choice(version, "version", VERSIONS)
        if self.version == "custom" and not attacks:
            raise ValueError('`attacks` must list at least one attack for version="custom".')
        if attacks and self.version != "custom":
            raise ValueError('`attacks` is only for version="custom".')
        self.custom = list(attacks or [])
        for item in self.custom:
            if not isinstance(item, Attack):
                attack_arguments(item)  # an unknown name fails now
        self.steps = check_int(steps, "steps")
        defaults = VERSION_DEFAULTS.get(self.version, STANDARD_DEFAULTS)
        self.queries = check_int(defaults["queries"] if queries is None else queries, "queries", minimum=2)
        target_classes = defaults["target_classes"] if target_classes is None else target_classes
        self.target_classes = check_int(target_classes, "target_classes")
        self.check = bool(check)
        self._sanity_notes: Optional[List[str]] = None
        self._sanity_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AutoAttack(version={self.version!r}, norm={self.norm!r}, eps={self.eps:g})"

    def _chain(self, task: str, num_classes: int) -> Tuple[List[Tuple[str, Attack]], List[str]]:
        """The attacks to run, in order, with their names, and notes on substitutions."""
        common = {
            "eps": self.eps,
            "norm": self.norm,
            "value_range": self.value_range,
            "seed": self.seed,
            "loss_in_mask": self.loss_in_mask,
        }
        seg = {"seg_success_ratio": self.seg_success_ratio}
        notes: List[str] = []
        if self.version == "custom":
            chain = []
            for item in self.custom:
                if isinstance(item, Attack):
                    chain.append((type(item).__name__, item))
                    continue
                # classification-only attacks (APGD-T, FAB-T) take no `task`: pass each one what it accepts
                accepted = attack_arguments(item)
                offered = {"task": task, **seg, **common}
                chain.append(
                    (str(item), make_attack(item, self.model, **{k: v for k, v in offered.items() if k in accepted}))
                )
            return chain, notes
        apgd = {"steps": self.steps, "task": task, **common}
        square = Square(self.model, queries=self.queries, task=task, **common, **seg)
        if task == "multilabel":
            return [
                ("apgd-ce", APGD(self.model, loss="ce", **apgd)),
                ("apgd-margin", APGD(self.model, loss="cw", **apgd)),
                ("square", square),
            ], notes
        if task == "segmentation":
            return [
                ("apgd-ce", APGD(self.model, loss="ce", **apgd, **seg)),
                ("apgd-dice", APGD(self.model, loss="dice", **apgd, **seg)),
                ("square", square),
            ], notes
        classes = max(num_classes, 2)
        dlr = "dlr"
        if classes < 3:
            dlr = "cw"
            notes.append(f"DLR is undefined with {classes} classes: APGD-DLR uses the CW margin loss instead.")
        targeted = {"steps": self.steps, "target_classes": self.target_classes, **common}
        if self.version == "rand":
            return [
                ("apgd-ce", APGD(self.model, loss="ce", eot_iter=20, **apgd)),
                ("apgd-dlr", APGD(self.model, loss=dlr, eot_iter=20, **apgd)),
            ], notes
        if self.version == "plus":
            return [
                ("apgd-ce", APGD(self.model, loss="ce", restarts=5, **apgd)),
                ("apgd-dlr", APGD(self.model, loss=dlr, restarts=5, **apgd)),
                ("apgd-t", APGDT(self.model, **targeted)),
                ("fab-t", FAB(self.model, restarts=5, **targeted)),
                ("square", square),
            ], notes
        if self.version == "fast" and classes < 3:
            notes.append(
                f"{classes} classes: APGD on the CW margin replaces APGD-CE and APGD-T (with one other class both "
                "ascend the same margin, whose gradient does not vanish where the cross-entropy saturates)."
            )
            return [("apgd-margin", APGD(self.model, loss="cw", **apgd)), ("square", square)], notes
        if self.version == "fast":
            return [
                ("apgd-ce", APGD(self.model, loss="ce", **apgd)),
                ("apgd-t", APGDT(self.model, target_ranking="linearized", **targeted)),
                ("square", square),
            ], notes
        return [
            ("apgd-ce", APGD(self.model, loss="ce", **apgd)),
            ("apgd-t", APGDT(self.model, **targeted)),
            ("fab-t", FAB(self.model, **targeted)),
            ("square", square),
        ], notes

    def _sanity(self, state: AttackState) -> List[str]:
        """The sanity-check warnings, found on the first batch this instance attacks and kept for the later ones."""
        if not self.check:
            return []
        with self._sanity_lock:
            if self._sanity_notes is None:
                self._sanity_notes = sanity_checks(self.model, state.x, state.y, state.objective.task)
                for warning in self._sanity_notes:
                    warnings.warn(warning, UserWarning, stacklevel=5)
            return list(self._sanity_notes)

    def _perturb(self, state: AttackState):
        objective, x = state.objective, state.x_input
        chain, notes = self._chain(objective.task, objective.num_classes)
        notes += self._sanity(state)
        n = x.shape[0]
        x_adv = x.clone()
        broken_by: List[Optional[str]] = ["clean" if c else None for c in state.clean_success.tolist()]
        broken_counts, seconds = {}, {}
        attacked = todo = (~state.clean_success).nonzero()[:, 0]
        for index, (name, attack) in enumerate(chain):
            broken_counts[name], seconds[name] = 0, 0.0
            if todo.numel() == 0:
                continue
            start = time.perf_counter()
            rows = _rows(state.mask, todo, n), _rows(state.loss_mask, todo, n)
            result = attack.perturb(x[todo], state.y[todo], mask=rows[0], loss_mask=rows[1])
            if result.success is None:  # an attack that does not evaluate its output (e.g. FGSM): score it
                result = score_examples(attack, self.model, x[todo], result.x_adv, state.y[todo], rows[0])
            seconds[name] = time.perf_counter() - start
            notes += [f"{name}: {note}" for note in result.details.get("notes", []) if f"{name}: {note}" not in notes]
            newly = result.success & ~result.clean_success
            take = torch.ones_like(newly) if index == 0 else newly  # robust samples keep APGD-CE's best point
            x_adv[todo[take]] = result.x_adv.as_subclass(torch.Tensor)[take].to(x_adv.dtype)
            flags = newly.tolist()  # one read of the outcome per attack of the chain
            for i, broken in zip(todo.tolist(), flags):
                if broken:
                    broken_by[i] = name
            broken_counts[name] = sum(flags)
            todo = todo[~result.success]
        # the returned examples are what counts: check them in one pass
        success, loss = state.clean_success.clone(), state.clean_loss.double().clone()
        if attacked.numel():
            with torch.inference_mode():
                logits = self.call_model(x_adv[attacked].to(state.x.dtype))
                success[attacked] = objective.success(logits, attacked)
                loss[attacked] = objective.loss(logits, attacked).double()
        confirmed = success.tolist()
        unconfirmed = [i for i in attacked.tolist() if broken_by[i] not in (None, "clean") and not confirmed[i]]
        for i in unconfirmed:
            broken_by[i] = None
        if unconfirmed:
            notes.append(
                f"{len(unconfirmed)} sample(s) an attack reported broken are classified correctly on the returned "
                "examples (a randomized model?): they count as robust here."
            )
        attacks = [name for name, _ in chain]
        notes += [note for note in autoattack_notes(broken_by, attacks) if note not in notes]
        return state.result(
            x_adv,
            success,
            loss,
            attacks=attacks,
            broken_by=broken_by,
            broken_counts=broken_counts,
            seconds=seconds,
            notes=notes,
            version=self.version,
        )


def _rows(per_sample: Optional[torch.Tensor], idx: torch.Tensor, n: int) -> Optional[torch.Tensor]:
    """The rows ``idx`` of a per-sample tensor (N, ...); one shared by all samples is passed as it is."""
    if per_sample is None or per_sample.shape[0] != n:
        return per_sample
    return per_sample[idx.to(per_sample.device)]
