# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""AutoAttack (Croce & Hein 2020): a parameter-free ensemble, per-sample worst case, for 2D and 3D tasks."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from monai_adv.attacks.apgd import APGD, APGDT
from monai_adv.attacks.base import Attack, AttackResult, _like_input
from monai_adv.attacks.fab import FAB
from monai_adv.attacks.guard import model_dtype, model_state_guard
from monai_adv.attacks.objective import infer_task
from monai_adv.attacks.sanity import sanity_checks
from monai_adv.attacks.scoring import score_examples
from monai_adv.attacks.square import Square
from monai_adv.attacks.validation import as_tensor_labels, check_choice, check_eps, check_input, check_norm

__all__ = ["AutoAttack", "AutoAttackReport"]

VERSIONS = ("standard", "plus", "rand", "custom")


@dataclass
class AutoAttackReport:
    """What an AutoAttack run did.

    Attributes:
        version, norm, eps, task: the configuration.
        attacks: the attacks run, in order.
        clean_accuracy: fraction of samples handled correctly before any attack.
        robust_accuracy: fraction of samples no attack broke (per-sample worst case).
        broken_by: per sample, the attack that broke it first, "clean" if it failed clean, None if robust.
        broken_counts: per attack, how many samples it broke that the earlier ones had not.
        seconds: per attack, wall time.
        notes: substitutions made (e.g. for binary tasks) and sanity-check warnings.
    """

    version: str
    norm: str
    eps: float
    task: str
    attacks: List[str]
    clean_accuracy: float = 0.0
    robust_accuracy: float = 0.0
    broken_by: List[Optional[str]] = field(default_factory=list)
    broken_counts: Dict[str, int] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"AutoAttack {self.version} ({self.norm}, eps={self.eps:.6g}, {self.task}): "
            f"clean accuracy {self.clean_accuracy:.4f}, robust accuracy {self.robust_accuracy:.4f}"
        ]
        for name in self.attacks:
            lines.append(f"  {name}: broke {self.broken_counts.get(name, 0)} ({self.seconds.get(name, 0):.1f} s)")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class AutoAttack:
    """AutoAttack: run an ensemble of attacks, each only on the samples still handled correctly, and keep each
    sample's worst case. The report records which attack broke each sample.

    Versions (classification):
        - "standard": APGD-CE, APGD-T (targeted DLR, 9 targets), FAB-T (9 targets), Square (5000 queries).
        - "plus": APGD-CE and APGD-DLR with 5 restarts each, APGD-T, FAB-T with 5 restarts, Square; the
          untargeted FAB of the original "plus" is covered by FAB-T over the target classes.
        - "rand": APGD-CE and APGD-DLR with expectation over transformation (20 passes per step), for
          randomized models.
        - "custom": the attacks given in ``attacks`` (registered names or attack instances).

    DLR needs at least 3 classes (targeted DLR 4): with fewer (binary diagnosis), APGD-DLR and APGD-T use the CW
    margin instead, and the report says so. For multi-label tasks the chain is APGD-CE (BCE), APGD on the
    multi-label margin and Square; for segmentation APGD-CE, APGD on the soft Dice loss and Square (success:
    Dice below ``seg_success_ratio`` of the clean Dice).

    Args:
        model: the model under attack (see :class:`~monai_adv.attacks.base.Attack`).
        eps: budget.
        norm: "Linf" or "L2".
        version: "standard", "plus", "rand" or "custom".
        attacks: for "custom": names from :func:`~monai_adv.attacks.available_attacks` or built attacks.
        value_range: ``(lo, hi)`` or None.
        task: "auto", "classification", "multilabel" or "segmentation".
        steps: iterations of APGD and FAB.
        queries: query budget of Square.
        target_classes: target classes of APGD-T and FAB-T.
        seg_success_ratio: segmentation goal.
        check: run :func:`~monai_adv.attacks.sanity_checks` first and add its warnings to the report.
        seed: seed of every attack.

    Example::

        aa = AutoAttack(model, eps=8 / 255)
        x_adv = aa(x, y)
        print(aa.last_report.summary())
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        eps: float = 8 / 255,
        norm: str = "Linf",
        version: str = "standard",
        attacks: Optional[Sequence[Union[str, Attack]]] = None,
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        task: str = "auto",
        steps: int = 100,
        queries: int = 5000,
        target_classes: int = 9,
        seg_success_ratio: float = 0.5,
        check: bool = True,
        seed: Optional[int] = 0,
    ) -> None:
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning logits, got {type(model).__name__}.")
        self.model = model
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.version = check_choice(version, "version", VERSIONS)
        if self.version == "custom" and not attacks:
            raise ValueError('`attacks` must list at least one attack for version="custom".')
        if attacks and self.version != "custom":
            raise ValueError('`attacks` is only for version="custom".')
        self.custom = list(attacks or [])
        self.value_range = value_range
        self.task = task
        self.steps, self.queries, self.target_classes = steps, queries, target_classes
        self.seg_success_ratio = seg_success_ratio
        self.check = bool(check)
        self.seed = seed
        self.last_report: Optional[AutoAttackReport] = None

    def __repr__(self) -> str:
        return f"AutoAttack(version={self.version!r}, norm={self.norm!r}, eps={self.eps:g})"

    def _chain(self, task: str, num_classes: int) -> Tuple[List[Tuple[str, Attack]], List[str]]:
        """The attacks to run, in order, with their names, and notes on substitutions."""
        common = {"eps": self.eps, "value_range": self.value_range, "seed": self.seed}
        seg = {"seg_success_ratio": self.seg_success_ratio}
        notes: List[str] = []
        if self.version == "custom":
            from monai_adv.attacks.registry import attack_arguments, make_attack

            chain = []
            for item in self.custom:
                if isinstance(item, Attack):
                    chain.append((type(item).__name__, item))
                    continue
                # classification-only attacks (APGD-T, FAB-T) take no `task`: pass each one what it accepts
                accepted = attack_arguments(item)
                kwargs = {k: v for k, v in {"norm": self.norm, "task": task, **common}.items() if k in accepted}
                chain.append((str(item), make_attack(item, self.model, **kwargs)))
            return chain, notes
        apgd = {"steps": self.steps, "norm": self.norm, "task": task, **common}
        square = Square(self.model, queries=self.queries, norm=self.norm, task=task, **common, **seg)
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
        if classes < 4:
            notes.append(
                f"Targeted DLR needs 4 classes, the model has {classes}: APGD-T uses the targeted CW margin instead."
            )
        targeted = {"steps": self.steps, "norm": self.norm, "target_classes": self.target_classes, **common}
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
        return [
            ("apgd-ce", APGD(self.model, loss="ce", **apgd)),
            ("apgd-t", APGDT(self.model, **targeted)),
            ("fab-t", FAB(self.model, **targeted)),
            ("square", square),
        ], notes

    def __call__(self, x: torch.Tensor, y: Any, mask: Optional[Any] = None) -> torch.Tensor:
        return self.perturb(x, y, mask=mask).x_adv

    def perturb(self, x: torch.Tensor, y: Any, mask: Optional[Any] = None) -> AttackResult:
        """Run the chain; return the worst case per sample (``success``: broken by some attack or failed clean).

        The report is in ``self.last_report``.
        """
        with model_state_guard(self.model):  # one eval view of the network for every attack of the chain
            return self._run_chain(x, y, mask)

    def _run_chain(self, x: torch.Tensor, y: Any, mask: Optional[Any]) -> AttackResult:
        check_input(x, None if self.value_range is None else tuple(self.value_range))
        n = x.shape[0]
        x_plain = x.detach().as_subclass(torch.Tensor)
        labels = as_tensor_labels(y, "y", x_plain.device)
        with torch.inference_mode(False), model_state_guard(self.model) as model, torch.no_grad():
            logits = model(x_plain[:1].to(model_dtype(self.model) or x_plain.dtype)) if n else None
        if n == 0:
            empty = torch.zeros(0, dtype=torch.bool, device=x.device)
            return AttackResult(x.detach().clone(), empty, None, empty, self.task)
        task = infer_task(self.task, logits.as_subclass(torch.Tensor), labels)
        chain, notes = self._chain(task, logits.shape[1])
        report = AutoAttackReport(self.version, self.norm, self.eps, task, [name for name, _ in chain], notes=notes)
        if self.check:
            for warning in sanity_checks(self.model, x_plain, labels, task):
                report.notes.append(warning)
                warnings.warn(warning, UserWarning, stacklevel=2)

        x_adv = x_plain.clone()
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        broken_by: List[Optional[str]] = [None] * n
        clean_success = None
        todo = torch.arange(n, device=x.device)
        for name, attack in chain:
            if todo.numel() == 0:
                report.broken_counts[name], report.seconds[name] = 0, 0.0
                continue
            start = time.perf_counter()
            sub_mask = _rows(mask, todo, x_plain)
            result = attack.perturb(x_plain[todo], labels[todo], mask=sub_mask, target=None)
            if result.success is None:  # an attack that does not evaluate its output (e.g. FGSM): score it
                result = score_examples(attack, self.model, x_plain[todo], result.x_adv, labels[todo], sub_mask)
            report.seconds[name] = time.perf_counter() - start
            if clean_success is None:
                clean_success = result.clean_success.clone()
                x_adv = result.x_adv.as_subclass(torch.Tensor).clone()  # robust samples keep APGD-CE's best point
                for i in clean_success.nonzero()[:, 0].tolist():
                    broken_by[i] = "clean"
            newly = result.success & ~result.clean_success
            rows = todo[newly]
            x_adv[rows] = result.x_adv.as_subclass(torch.Tensor)[newly]
            for i in rows.tolist():
                broken_by[i] = name
            broken[todo[result.success]] = True
            report.broken_counts[name] = int(newly.sum())
            todo = todo[~result.success]
        report.broken_by = broken_by
        report.clean_accuracy = 1.0 - float(clean_success.float().mean())
        report.robust_accuracy = 1.0 - float(broken.float().mean())
        self.last_report = report
        return AttackResult(_like_input(x, x_adv), broken, None, clean_success, task)


def _rows(mask: Optional[Any], idx: torch.Tensor, x: torch.Tensor) -> Optional[Any]:
    """The rows ``idx`` of a per-sample mask (N, ...); a mask shared by all samples is passed as it is."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if mask.ndim == x.ndim and mask.shape[0] == x.shape[0] and x.shape[0] > 1:
        return mask[idx.to(mask.device)]
    return mask
