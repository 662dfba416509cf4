# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Free adversarial training (Shafahi et al. 2019): minibatch replays that reuse each backward pass twice."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import torch

from monai_adv.attacks.projections import ascent_step, clip_to_range, project
from monai_adv.attacks.validation import check_eps, check_int
from monai_adv.defenses.objectives import Defense

__all__ = ["FreeAT"]


class FreeAT(Defense):
    """Free adversarial training (Shafahi et al., NeurIPS 2019, "Adversarial training for free!").

    Each minibatch is replayed ``replays`` (m) times in a row. Every replay is one forward and one backward pass
    of the task loss at ``clip(x + delta)`` that gives at once the gradient of the weights (the optimizer step)
    and the gradient of the input, from which the perturbation takes one signed step of ``alpha`` (default
    ``eps``, the paper's) projected onto the eps-ball: ``delta <- clip(delta + eps * sign(grad_delta), -eps, eps)``.
    The perturbation is never reset between replays nor between minibatches (the next batch starts from the last
    one's, as in the paper), only when the batch's shape or dtype changes (e.g. a smaller last batch), to zero.
    Adversarial examples are thus built up over the replays at no extra cost: m replays cost m forward and
    backward passes, as m natural training steps.

    **Epochs.** Every batch gets m optimizer steps: train ``epochs / m`` epochs for the cost (and number of
    updates) of ``epochs`` epochs of natural training, as the paper does to compare at equal cost. The training
    loops (:class:`~monai_adv.engines.RobustTrainer`, the benchmark) do not divide the epochs themselves.

    **Training loop.** :class:`~monai_adv.engines.RobustTrainer` reads :attr:`replays` and runs the loss, the
    backward pass and the optimizer step m times per batch, calling :meth:`after_backward` after each backward
    pass so that the perturbation is updated from that very pass. A single call ``defense(network, x, y)`` is one
    replay; in a loop of your own call ``loss.backward()``, then ``defense.after_backward()`` (or nothing: the
    next call applies a pending update first), and replay each batch m times yourself.

    **State.** The perturbation (one per batch position, not per sample: a position's delta carries over to the
    sample at that position in the next batch, as in the paper) lives on this object: one instance trains one
    network, and is not thread-safe. Under DistributedDataParallel every rank keeps its own perturbation of its
    own shard (the weight gradients are synchronized by DDP as usual). :meth:`reset` sets it back to zero. It is
    not in the network's or the optimizer's state: to resume a run exactly, checkpoint the defense too (it has
    ``state_dict()`` and ``load_state_dict()``, e.g. ``save_dict={..., "defense": trainer.defense}`` of MONAI's
    ``CheckpointSaver`` and ``CheckpointLoader``); otherwise a resumed run restarts the perturbation from zero.

    The backward pass reaches the perturbation through the clipping to ``value_range`` (as the paper's code,
    which clamps ``x + delta`` to [0, 1]): a coordinate clipped at the range's bound gets no gradient and keeps
    its delta. For classification (CE), multi-label (BCE) and segmentation (CE or Dice, 2D and 3D). With
    ``norm="L2"`` the step is ``alpha`` along the normalized gradient, projected onto the L2 ball. It returns the
    logits at ``clip(x + delta)`` as the ``"adversarial"`` output and no clean logits. There are no random
    draws: the call's ``seed`` is not used.

    Args:
        eps: the budget, in the units of ``value_range``.
        replays: m, the replays of each minibatch (>= 1); default 4. ``replays=1`` trains on the perturbation
            of the previous batch.
        alpha: the step of the perturbation per replay; default ``eps`` (the paper's).
        steps: accepted so that one set of defense arguments serves every defense; free-AT takes one step per
            replay, and any other value is ignored with a warning.
        kwargs: ``norm``, ``value_range``, ``task``, ``loss`` of :class:`~monai_adv.defenses.Defense`.
    """

    name = "free_at"

    def __init__(
        self,
        eps: float = 8 / 255,
        replays: int = 4,
        alpha: Optional[float] = None,
        steps: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if steps is not None and check_int(steps, "steps") != 1:
            warnings.warn(
                f"free_at takes one step per replay (see `replays`): `steps`={steps} is ignored.",
                UserWarning,
                stacklevel=2,
            )
        eps = check_eps(eps)
        super().__init__(eps=eps, steps=1, alpha=eps if alpha is None else alpha, **kwargs)
        self.replays = check_int(replays, "replays")
        self._delta: Optional[torch.Tensor] = None  # the perturbation of the next replay
        self._leaf: Optional[torch.Tensor] = None  # the perturbation of the last call, whose .grad is pending

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, replays={self.replays}, alpha={self.alpha:g})"

    @property
    def delta(self) -> Optional[torch.Tensor]:
        """The perturbation the next call starts from (N, C, *spatial), after any pending update; None before the
        first batch or after :meth:`reset`."""
        self._update()
        return self._delta

    def reset(self) -> None:
        """Forget the perturbation: the next batch starts from zero."""
        self._delta, self._leaf = None, None

    def state_dict(self) -> Dict[str, Optional[torch.Tensor]]:
        """The perturbation, for a checkpoint: ``{"delta": tensor or None}``."""
        delta = self.delta
        return {"delta": None if delta is None else delta.detach().clone()}

    def load_state_dict(self, state: Dict[str, Optional[torch.Tensor]]) -> None:
        """Restore the perturbation of :meth:`state_dict` (moved to the next batch's device at its first call)."""
        if not isinstance(state, dict) or "delta" not in state:
            raise ValueError('`state` must be a dict with the key "delta", as returned by state_dict().')
        delta = state["delta"]
        if delta is not None and not (isinstance(delta, torch.Tensor) and delta.is_floating_point()):
            raise ValueError(f'`state["delta"]` must be a floating-point tensor or None, got {type(delta).__name__}.')
        self._delta, self._leaf = (None if delta is None else delta.detach().clone()), None

    def after_backward(self) -> None:
        """Update the perturbation from the gradient the last backward pass left on the input perturbation."""
        self._update()

    def _update(self) -> None:
        leaf, self._leaf = self._leaf, None
        if leaf is None or leaf.grad is None:
            return
        with torch.no_grad():
            grad = torch.nan_to_num(leaf.grad, nan=0.0)
            self._delta = project(ascent_step(leaf.detach(), grad, self.alpha, self.norm), self.eps, self.norm)

    def objective(self, network, inputs, targets):
        self._update()  # a backward pass not reported through after_backward (a loop of one's own)
        x = inputs.detach().as_subclass(torch.Tensor)
        delta = self._delta
        if delta is not None and delta.shape == x.shape and delta.dtype == x.dtype:
            delta = delta.to(x.device)  # e.g. restored from a checkpoint loaded on the host
        if delta is None or delta.shape != x.shape or delta.dtype != x.dtype:
            delta = torch.zeros_like(x)
        leaf = delta.detach().requires_grad_(True)
        logits = network(clip_to_range(x + leaf, self.value_range))
        self._delta, self._leaf = delta, leaf
        return self._criterion(logits, targets), {"clean": None, "adversarial": logits}
