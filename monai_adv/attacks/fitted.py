# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Attacks with a fit phase: one perturbation (or patch) optimized over a data set, then applied to any image."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import torch

from monai_adv.attacks.base import Attack
from monai_adv.attacks.guard import model_state_guard
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.tasks import infer_task, prepare_labels
from monai_adv.attacks.validation import as_tensor_labels, check_input, check_logits, check_mask

__all__ = ["FittedAttack", "FitBatch", "model_device"]

#: one batch of the fit data: images (N, C, *spatial), labels, region of interest or None
FitBatch = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a parameter-free callable)."""
    module = getattr(model, "network", model)
    for getter in ("parameters", "buffers"):
        for tensor in getattr(module, getter, lambda: iter(()))():
            return tensor.device
    return torch.device("cpu")


class FittedAttack(Attack):
    """Base of the attacks fitted on a data set: :meth:`fit` optimizes what the attack applies (a universal
    perturbation, a universal patch) on a loader; :meth:`perturb` / ``attack(x, y)`` then apply it to any batch,
    with the per-sample outcome, as every attack does.

    The fitted tensor is the attack's state (``fitted``), set by :meth:`fit` or given when the attack is built, so
    it can be saved (``torch.save(attack.fitted, path)``) and applied elsewhere (e.g. by
    :class:`monai_adv.transforms.ApplyPerturbationd`). Applying an attack that is not fitted raises.

    Args:
        model: the model the attack is fitted on.
        epochs: passes over the fit data.
        kwargs: the arguments of :class:`~monai_adv.attacks.Attack`.
    """

    #: "universal" (one perturbation in the eps-ball for every image) or "patch" (a region of unbounded intensity)
    threat_model = "universal"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], epochs: int = 10, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        from monai_adv.attacks.validation import check_int

        self.epochs = check_int(epochs, "epochs")
        self.fitted: Optional[torch.Tensor] = None
        self.fit_samples = 0

    # ---- the fit phase ----------------------------------------------------------------------------------------
    def fit(
        self,
        data: Iterable,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: Optional[str] = None,
        device: Optional[torch.device] = None,
    ) -> torch.Tensor:
        """Optimize the attack on ``data`` and return what it applies (also kept as ``self.fitted``).

        Args:
            data: an iterable of batches (re-iterated once per epoch, e.g. a ``DataLoader``): dicts with
                ``image_key`` and ``label_key`` (MONAI style) or ``(images, labels)`` pairs; images (N, C, *spatial)
                inside ``value_range``, all of one shape.
            image_key: the images' key in dict batches.
            label_key: the labels' key in dict batches.
            mask_key: a key of dict batches holding a per-image region of interest: the attack changes only voxels
                inside it (applied the same way by :meth:`perturb` with ``mask``).
            device: where the fit runs; default the model's device.
        """
        if isinstance(data, (torch.Tensor, Mapping)) or not hasattr(data, "__iter__"):
            raise TypeError(
                "`data` must be an iterable of batches (a DataLoader of dicts with "
                f"{image_key!r}/{label_key!r}, or of (images, labels) pairs), got {type(data).__name__}."
            )
        device = model_device(self.model) if device is None else torch.device(device)

        def batches() -> Iterator[FitBatch]:
            return self._fit_batches(data, image_key, label_key, mask_key, device)

        with torch.inference_mode(False), model_state_guard(self.model), torch.enable_grad():
            fitted = self._fit(batches)
        self.fitted = fitted.detach()
        return self.fitted

    def _fit(self, batches: Callable[[], Iterator[FitBatch]]) -> torch.Tensor:
        """Optimize on the batches (call ``batches()`` once per pass) and return the fitted tensor."""
        raise NotImplementedError

    def _fit_batches(
        self, data: Iterable, image_key: str, label_key: str, mask_key: Optional[str], device: torch.device
    ) -> Iterator[FitBatch]:
        seen = 0
        for batch in data:
            if isinstance(batch, Mapping):
                for key in (image_key, label_key) + ((mask_key,) if mask_key else ()):
                    if key not in batch:
                        raise KeyError(f"fit data: the batch has no key {key!r} (keys: {sorted(batch)}).")
                x, y, mask = batch[image_key], batch[label_key], batch[mask_key] if mask_key else None
            elif isinstance(batch, Sequence) and len(batch) >= 2 and not isinstance(batch, str):
                x, y, mask = batch[0], batch[1], None
            else:
                raise TypeError(
                    f"fit data: each batch must be a dict with {image_key!r} and {label_key!r} or an (images, labels) "
                    f"pair, got {type(batch).__name__}."
                )
            x = check_input(torch.as_tensor(x), self.value_range).to(device).as_subclass(torch.Tensor)
            if x.shape[0] == 0:
                continue
            y = as_tensor_labels(y, "y", device).as_subclass(torch.Tensor)
            mask = check_mask(mask, x)
            seen += int(x.shape[0])
            yield x.float(), y, mask
        if seen == 0:
            raise ValueError("fit data: no batch with samples was found; `data` must yield at least one image.")
        self.fit_samples = seen

    def batch_objective(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        target: Optional[torch.Tensor] = None,
        clean_logits: Optional[torch.Tensor] = None,
    ) -> Objective:
        """The objective of a fit batch, from the logits at the current (perturbed) input: the task, labels and loss
        are resolved as the attack resolves them on a call. Without ``clean_logits`` the losses that read them and
        the segmentation goal (relative to the clean Dice) are not available."""
        detached = check_logits(logits.detach(), "the fit batch")
        task = infer_task(self.task, detached, y)
        labels = prepare_labels(task, y, detached, "y")
        targets = None if target is None else prepare_labels(task, target, detached, "target")
        loss, _ = self._objective_loss(detached.shape[1])
        return self.objective(
            task,
            labels,
            targets,
            None if clean_logits is None else clean_logits.detach(),
            loss=loss,
            kappa=self.kappa,
            seg_success_ratio=self.seg_success_ratio,
            loss_kwargs=self.loss_kwargs,
            num_classes=detached.shape[1],
        )

    def check_fitted(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted tensor on x's device and dtype; raises when the attack was never fitted."""
        if self.fitted is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call fit(loader) first (or build it with a fitted tensor)."
            )
        return self.fitted.to(device=x.device, dtype=x.dtype)
