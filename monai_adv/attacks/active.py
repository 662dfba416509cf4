# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-sample bookkeeping of the iterative attacks: the best point so far, and the samples still attacked."""

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

    def update(self, idx: torch.Tensor, x_new: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        """Offer new points for the samples ``idx`` of the batch; return which of them were taken."""
        better = is_better(success, loss, self.success[idx], self.loss[idx])
        if bool(better.any()):
            self.set(idx[better], x_new[better], loss[better], success[better])
        return better

    def set(self, idx: torch.Tensor, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        """Take the points as the best of the samples ``idx`` (e.g. from a search that compared them itself)."""
        self.x[idx] = x.to(self.x.dtype)
        self.loss[idx] = loss.to(self.loss.dtype)
        self.success[idx] = success

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
        """Keep the samples where ``keep`` is True in every row; return whether any sample is left."""
        if not bool(keep.all()):
            flags = keep.tolist()
            for name in self._names:
                value = getattr(self, name)
                if isinstance(value, torch.Tensor):
                    object.__setattr__(self, name, value[keep])
                elif isinstance(value, list):
                    object.__setattr__(self, name, [v for v, k in zip(value, flags) if k])
        return len(self) > 0
