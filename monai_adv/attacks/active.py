# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-sample bookkeeping of the iterative attacks: the best point so far, and the samples still attacked.

Both run inside an attack's per-step loop, so neither reads a device tensor on the host except where it must:
:meth:`BestIterate.update` selects with ``torch.where`` (no host synchronisation), and :meth:`ActiveSet.keep`
reads its keep flags once (one synchronisation: the number of samples left decides the shapes of the next step).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["ActiveSet", "BestIterate", "is_better"]


def is_better(
    success: torch.Tensor, loss: torch.Tensor, old_success: torch.Tensor, old_loss: torch.Tensor
) -> torch.Tensor:
    """Per sample, whether a new point beats the old one: meeting the goal first, then the higher loss."""
    return (success & ~old_success) | ((success == old_success) & (loss > old_loss))


class BestIterate:
    """Per-sample best point so far (the rule of :func:`is_better`).

    Starts from the clean input, which counts only if it already meets the goal (its loss is -inf).

    Args:
        x: the clean batch (N, C, *spatial).
        clean_success: per-sample bool, whether the clean input meets the goal (None: it does not).
    """

    def __init__(self, x: torch.Tensor, clean_success: Optional[torch.Tensor]) -> None:
        self.x = x.clone()
        n = x.shape[0]
        no = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.success = no if clean_success is None else clean_success.clone()
        self.loss = torch.full((n,), float("-inf"), dtype=torch.float64, device=x.device)

    def update(
        self,
        idx: torch.Tensor,
        x_new: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
        offered: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Offer new points for the samples ``idx`` of the batch (only where ``offered``, when given); return which
        of them were taken. Selects on the device: no host synchronisation."""
        old_loss, old_success = self.loss.index_select(0, idx), self.success.index_select(0, idx)
        better = is_better(success, loss, old_success, old_loss)
        if offered is not None:
            better = better & offered
        rows = better.reshape(-1, *([1] * (x_new.ndim - 1)))
        self.x.index_copy_(0, idx, torch.where(rows, x_new.to(self.x.dtype), self.x.index_select(0, idx)))
        self.loss.index_copy_(0, idx, torch.where(better, loss.to(self.loss.dtype), old_loss))
        self.success.index_copy_(0, idx, torch.where(better, success, old_success))
        return better

    def set(
        self,
        idx: torch.Tensor,
        x: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
        which: Optional[torch.Tensor] = None,
    ) -> None:
        """Take the points as the best of the samples ``idx`` (e.g. from a search that compared them itself); only
        where ``which`` is True, when given (selected on the device: no host synchronisation)."""
        if which is None:
            self.x[idx] = x.to(self.x.dtype)
            self.loss[idx] = loss.to(self.loss.dtype)
            self.success[idx] = success
            return
        rows = which.reshape(-1, *([1] * (x.ndim - 1)))
        self.x.index_copy_(0, idx, torch.where(rows, x.to(self.x.dtype), self.x.index_select(0, idx)))
        self.loss.index_copy_(0, idx, torch.where(which, loss.to(self.loss.dtype), self.loss.index_select(0, idx)))
        self.success.index_copy_(0, idx, torch.where(which, success, self.success.index_select(0, idx)))

    def overwrite(self, idx: torch.Tensor, x_new: torch.Tensor) -> None:
        """Take the points as they are, unevaluated (last-iterate mode)."""
        self.x[idx] = x_new.to(self.x.dtype)


class ActiveSet:
    """The samples an iterative attack still works on: their batch indices ``idx`` and per-sample rows, which
    shrink together when samples leave (early exit).

    Rows are tensors whose first dim is the sample, lists with one entry per sample (e.g. random generators),
    or None. They are read and written as attributes::

        active = ActiveSet(idx, x0=x0, x_adv=x_adv, mask=None)
        active.keep(~success)   # every row drops the fooled samples
        if not active: ...      # no sample left
    """

    def __init__(self, idx: torch.Tensor, **rows: Any) -> None:
        object.__setattr__(self, "_names", ["idx"])
        self.idx = idx
        for name, value in rows.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        object.__setattr__(self, name, value)  # rows are plain attributes: reading one costs nothing extra

    def __len__(self) -> int:
        return int(self.idx.numel())

    def keep(self, keep: torch.Tensor) -> bool:
        """Keep the samples where ``keep`` is True in every row; return whether any sample is left.

        One host synchronisation: the flags are read once (how many samples stay sets the rows' new size); the
        rows are then gathered on the device.
        """
        flags = keep.tolist()
        count = sum(flags)
        if count == len(flags):
            return count > 0
        rows = _true_rows(keep, count)
        for name in self._names:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                object.__setattr__(self, name, value.index_select(0, rows.to(value.device)))
            elif isinstance(value, list):
                object.__setattr__(self, name, [v for v, k in zip(value, flags) if k])
        return count > 0


def _true_rows(flags: torch.Tensor, count: int) -> torch.Tensor:
    """The indices where the bool vector ``flags`` is True, ``count`` of them (known already: no synchronisation)."""
    try:
        return torch.nonzero_static(flags, size=count)[:, 0]
    except (NotImplementedError, RuntimeError):  # a device without nonzero_static
        return flags.nonzero()[:, 0]
