# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial patches: a square (2D) or cube (3D) window of unbounded intensity, per image or universal.

A patch replaces the voxels of a window of side ``patch_side(size, spatial_shape)`` with any values of the value
range; nothing outside the window changes. :class:`PatchAttack` optimizes one patch per image (Brown et al. 2017's
threat model, attacked per image like LaVAN, Karmon et al. 2018); :class:`UniversalPatch` fits one patch on a data
set and pastes it into every image (Brown et al. 2017, "Adversarial Patch").

Placement, shared by both: per sample the corner of the window, drawn uniformly among the windows that fit the image
(``location="random"``) or a fixed corner. With a region of interest (the ``mask`` of ``perturb``), random windows
are drawn only among those whose centre voxel (corner + side // 2 along each axis) lies inside the region, and the
voxels of the window outside the region keep their values (a fixed corner is used as given, the region limiting
which of its voxels change). A sample with no such window is left unchanged (its ``location`` is -1). Drawing a
corner reads the region once, cropped to the admissible centres (no mask per candidate window), so it is cheap for
3D volumes too.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from numbers import Integral, Real
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from monai_adv.attacks.active import ActiveSet, BestIterate
from monai_adv.attacks.base import Attack, AttackResult, AttackState, IterativeAttack
from monai_adv.attacks.fitted import FitBatch, FittedAttack
from monai_adv.attacks.guard import model_dtype
from monai_adv.attacks.objective import Objective
from monai_adv.attacks.seeding import resolve_seed
from monai_adv.attacks.tasks import infer_task
from monai_adv.attacks.validation import check_int, check_positive, check_value_range

__all__ = [
    "PatchAttack",
    "UniversalPatch",
    "apply_patch",
    "draw_corners",
    "patch_side",
    "size_label",
    "window_mask",
]

Location = Union[str, Sequence[int]]
_DEFAULT_RANGE = inspect.signature(Attack.__init__).parameters["value_range"].default
_UNPLACED_NOTE = "a sample whose region of interest holds no window centre is left unchanged (location -1)"


def _check_size(size: Any) -> Union[int, float]:
    """``size`` as an int side (>= 1) or a float fraction in (0, 1]; raises naming ``size`` otherwise."""
    expected = "an int >= 1 (the side in voxels) or a float in (0, 1] (the fraction of the image covered)"
    if isinstance(size, bool) or not isinstance(size, Real):
        raise ValueError(f"`size` must be {expected}, got {size!r}.")
    if isinstance(size, Integral):
        if size < 1:
            raise ValueError(f"`size` must be {expected}, got {size}.")
        return int(size)
    size = float(size)
    if not (math.isfinite(size) and 0 < size <= 1):
        raise ValueError(f"`size` must be {expected}, got {size}.")
    return size


def patch_side(size: Union[int, float], spatial_shape: Sequence[int]) -> int:
    """The side in voxels of the square (2D) or cube (3D) patch of ``size`` in images of ``spatial_shape``.

    Args:
        size: an int >= 1, the side in voxels; or a float in (0, 1], the fraction of the image's area (2D) or
            volume (3D) the patch covers: ``side = round((size * prod(spatial_shape)) ** (1 / D))``, at least 1 and
            at most the smallest spatial size.
        spatial_shape: the image's spatial size (D values).

    Raises:
        ValueError: for a ``size`` of another form, or an int side larger than the image.
    """
    size = _check_size(size)
    shape = [int(s) for s in spatial_shape]
    if not shape or min(shape) < 1:
        raise ValueError(f"`spatial_shape` must hold 1 to 3 sizes >= 1, got {tuple(spatial_shape)}.")
    if isinstance(size, int):
        if size > min(shape):
            raise ValueError(
                f"`size`={size} voxels does not fit images of spatial shape {tuple(shape)}; pass an int side "
                f"<= {min(shape)} or a float fraction in (0, 1]."
            )
        return size
    side = round((size * math.prod(shape)) ** (1.0 / len(shape)))
    return int(min(max(side, 1), min(shape)))


def size_label(size: Union[int, float]) -> str:
    """A short label of a patch size for reports: "5%" for 0.05 (a fraction), "16 px" for 16 (a side)."""
    size = _check_size(size)
    if isinstance(size, int):
        return f"{size} px"
    return f"{round(size * 100, 6):g}%"


def _check_location(location: Any) -> Location:
    """``location`` as "random" or a tuple of non-negative ints (checked against the image at the call)."""
    if isinstance(location, str):
        if location.lower() != "random":
            raise ValueError(f'`location` must be "random" or a corner (c1, ..., cD) of ints >= 0, got {location!r}.')
        return "random"
    if isinstance(location, torch.Tensor):
        location = location.tolist()
    if not isinstance(location, Sequence) or not 1 <= len(location) <= 3:
        raise ValueError(f'`location` must be "random" or a corner (c1, ..., cD) of ints >= 0, got {location!r}.')
    for c in location:
        if isinstance(c, bool) or not isinstance(c, Integral) or c < 0:
            raise ValueError(f'`location` must be "random" or a corner (c1, ..., cD) of ints >= 0, got {location!r}.')
    return tuple(int(c) for c in location)


def _fixed_corners(location: Tuple[int, ...], spatial: Sequence[int], side: int, n: int, device) -> torch.Tensor:
    """The fixed corner for ``n`` samples (n, D), after checking the window fits the image."""
    spatial = tuple(int(s) for s in spatial)
    fits = len(location) == len(spatial) and all(c + side <= s for c, s in zip(location, spatial))
    if not fits:
        raise ValueError(
            f"`location`={location}: a window of side {side} at this corner does not fit images of spatial shape "
            f"{spatial}; each corner coordinate must be at most the size minus {side}, one per spatial dim."
        )
    return torch.tensor(location, dtype=torch.long, device=device).expand(n, -1).clone()


def draw_corners(
    spatial: Sequence[int], side: int, uniforms: torch.Tensor, region: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Random window corners, one per sample, from uniform numbers the caller drew.

    Without a region, corner ``d`` is drawn uniformly among ``0 .. spatial[d] - side``. With a region, the corner
    is drawn uniformly among the windows whose centre voxel (corner + side // 2 per axis) lies in the region: the
    region cropped to those centres is the map of admissible corners, and the ``k``-th admissible one is found by a
    cumulative sum, so no mask per candidate window is built.

    Args:
        spatial: the images' spatial size (D values).
        side: the window's side (fits the image).
        uniforms: (N, D) numbers in [0, 1) (float64), e.g. one row per sample from its own generator.
        region: None, or a bool (N, *spatial) region of interest.

    Returns:
        (N, D) long corners; a row of -1 for a sample whose region holds no admissible centre.
    """
    spatial = [int(s) for s in spatial]
    free = [s - side + 1 for s in spatial]  # corner choices per axis
    n, device = uniforms.shape[0], uniforms.device
    choices = torch.tensor(free, dtype=uniforms.dtype, device=device)
    if region is None:
        corners = (uniforms * choices).long()
        return torch.minimum(corners, (choices - 1).long())
    half = side // 2
    admissible = region[(slice(None),) + tuple(slice(half, half + f) for f in free)].reshape(n, -1)
    counts = admissible.sum(dim=1)
    k = torch.minimum((uniforms[:, 0] * counts.to(uniforms.dtype)).long(), counts - 1).clamp_min(0)
    position = torch.searchsorted(admissible.long().cumsum(dim=1), (k + 1)[:, None])[:, 0]
    coords = []
    for f in reversed(free):
        coords.append(position % f)
        position = torch.div(position, f, rounding_mode="floor")
    corners = torch.stack(coords[::-1], dim=1)
    return torch.where((counts > 0)[:, None], corners, torch.full_like(corners, -1))


def window_mask(corners: torch.Tensor, spatial: Sequence[int], side: int) -> torch.Tensor:
    """The windows as a bool (N, 1, *spatial) mask, from (N, D) corners (no window for a row of -1)."""
    n, dims = corners.shape
    placed = (corners >= 0).all(dim=1)
    window = placed.reshape(n, *([1] * dims))
    for d, size in enumerate(spatial):
        axis = torch.arange(int(size), device=corners.device)
        inside = (axis >= corners[:, d : d + 1]) & (axis < corners[:, d : d + 1] + side)  # (N, size)
        window = window & inside.reshape(n, *[int(size) if e == d else 1 for e in range(dims)])
    return window.unsqueeze(1)


def _canvas(patch: torch.Tensor, corners: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """The patches spread over images of ``spatial`` size: voxel ``p`` holds patch voxel ``p - corner`` (clamped to
    the patch; only the window's voxels are read). Differentiable in ``patch`` (a chain of gathers)."""
    n, dims = corners.shape
    side = patch.shape[-1]
    out = patch.expand(n, *patch.shape[-dims - 1 :])
    for d, size in enumerate(spatial):
        axis = torch.arange(int(size), device=corners.device)
        index = (axis - corners[:, d : d + 1]).clamp(0, side - 1)  # (N, size)
        shape = list(out.shape)
        shape[2 + d] = int(size)
        view = [n] + [1] * (dims + 1)
        view[2 + d] = int(size)
        out = torch.gather(out, 2 + d, index.reshape(view).expand(shape))
    return out


def apply_patch(
    x: torch.Tensor, patch: torch.Tensor, corners: torch.Tensor, region: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Paste patches into images: ``x * (1 - window) + patch * window``, differentiable in ``patch``.

    The window is the patch's square or cube at each sample's corner, restricted to ``region``; it is applied as
    a selection, so every voxel outside it keeps its exact value.

    Args:
        x: images (N, C, *spatial).
        patch: one patch per image (N, C, side, ..., side), or one for all (C, side, ..., side).
        corners: (N, D) long corners; a row of -1 leaves its image unchanged.
        region: None, or a bool tensor broadcastable to ``x``: only voxels where it is True change.
    """
    spatial = x.shape[2:]
    window = window_mask(corners, spatial, patch.shape[-1])
    if region is not None:
        window = window & region
    return torch.where(window, _canvas(patch.to(x.dtype), corners, spatial), x)


def _wide(device: torch.device) -> torch.dtype:
    """float64, or float32 on a device without it."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _uniforms(generators: Sequence[torch.Generator], dims: int, device: torch.device) -> torch.Tensor:
    """(N, D) uniforms in [0, 1) (float64 where the device has it), one row from each sample's generator."""
    rows = [torch.rand(dims, generator=g, device=g.device, dtype=_wide(g.device)) for g in generators]
    return torch.stack(rows).to(device)


def _seeded_generator(seed: int, *numbers: int) -> torch.Generator:
    """A CPU generator seeded from the attack seed and some numbers (epoch, batch), not from any content."""
    material = b"".join(int(v).to_bytes(16, "little", signed=True) for v in (seed, *numbers))
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _patch_range(kwargs: Dict[str, Any]) -> Tuple[float, float]:
    """The (bounded) value range of a patch attack's keyword arguments."""
    value_range = check_value_range(kwargs.get("value_range", _DEFAULT_RANGE))
    if value_range is None:
        raise ValueError(
            "`value_range` must be a pair (lo, hi) for a patch attack, got None: a patch may take any value of "
            "the range, so the range must be bounded (e.g. the clipped intensity window of CT)."
        )
    return value_range


def _region(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The perturbation mask as bool, or None."""
    return None if mask is None else mask != 0


def _centre_region(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Where a window's centre may lie: voxels (N, *spatial) where any channel of the mask is non-zero."""
    return None if mask is None else (mask != 0).any(dim=1)


class _Placement:
    """What both patch attacks share: the size, the placement, the details of a result."""

    size: Union[int, float]
    location: Location
    per_sample_details = ("location",)
    threat_model = "patch"
    budget = "size"
    fixed_arguments: Tuple[str, ...] = ("eps", "norm")

    def _corners(
        self,
        spatial: Sequence[int],
        side: int,
        mask: Optional[torch.Tensor],
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> torch.Tensor:
        """Per-sample corners: drawn from each sample's generator, or the fixed ``location``."""
        if self.location != "random":
            return _fixed_corners(self.location, spatial, side, len(generators), device)
        return draw_corners(spatial, side, _uniforms(generators, len(spatial), device), _centre_region(mask))

    def _side(self, spatial: Sequence[int]) -> int:
        return patch_side(self.size, spatial)

    def _attack_chunks(self, bounds, x, *args: Any, **kwargs: Any) -> AttackResult:
        result = super()._attack_chunks(bounds, x, *args, **kwargs)  # type: ignore[misc]
        result.details["patch_side"] = self._side(x.shape[2:])  # one side for the batch, not a per-chunk sum
        return result

    @staticmethod
    def _details(corners: torch.Tensor, side: int, unplaced: torch.Tensor) -> Dict[str, Any]:
        """The result's details: the corners, the side, and a note when a sample had no admissible window."""
        details: Dict[str, Any] = {"location": corners, "patch_side": side}
        if bool(unplaced.any()):
            details["notes"] = [_UNPLACED_NOTE]
        return details


class PatchAttack(_Placement, IterativeAttack):
    """An adversarial patch per image: a window of side ``patch_side(size, ...)`` whose voxels take any value of
    the value range, optimized for each image by signed-gradient ascent; nothing outside the window changes.

    Per sample and restart: the window is placed (see :mod:`monai_adv.attacks.patch`; a new random placement at
    each restart with ``location="random"``), the patch starts uniform at random in the range (each sample draws
    from its own content-keyed stream, so its result does not depend on the batch), then ``steps`` steps
    ``patch <- clamp(patch + alpha_t * sign(grad), lo, hi)`` ascend the objective's loss, with the step size
    ``alpha_t = alpha * (1 + cos(pi * t / steps)) / 2`` decaying from ``alpha`` towards 0: large steps move the
    patch across the range early, small ones refine it. Each sample keeps its best iterate over all steps and
    restarts (meeting the goal first, then the highest loss); with ``early_stop`` a sample leaves once it meets the
    goal, and samples that fail clean are not attacked.

    ``eps`` and ``norm`` are fixed (the budget is the patch size): the base class's budget keeps only the value
    range and the ``mask``. ``result.details`` holds ``location`` (N, D), each sample's corner (-1 where no window
    was placed: a sample not attacked, or whose mask holds no window centre) and ``patch_side``.

    Cost: ``steps`` forward and backward passes per restart, plus the clean pass and one forward pass per restart.

    Args:
        model: the model under attack.
        size: the patch side in voxels (int >= 1), or the fraction of the image's area (2D) / volume (3D) it
            covers (float in (0, 1]); see :func:`patch_side`.
        location: "random" (a window drawn per sample and restart) or a fixed corner (c1, ..., cD).
        steps: signed-gradient steps per restart.
        alpha: the first (largest) step size, in the units of ``value_range``; default a quarter of its width (the
            patch values soon reach the bounds of the range, where patches tend to end up; the decay refines them).
        restarts: runs per sample, each from a new random patch (and placement, with ``location="random"``).
        kwargs: the arguments of :class:`~monai_adv.attacks.Attack` but ``eps`` and ``norm`` (loss, value_range,
            which must be bounded, targeted, task, early_stop, seed, max_batch, ...).

    Example::

        atk = PatchAttack(model, size=0.05, steps=100)
        result = atk.perturb(x, y, mask=body)  # windows centred inside the body mask
        result.details["location"]  # the corner of each sample's window
    """

    name = "image_patch"

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        size: Union[int, float] = 0.1,
        location: Location = "random",
        steps: int = 100,
        alpha: Optional[float] = None,
        restarts: int = 1,
        **kwargs: Any,
    ) -> None:
        lo, hi = _patch_range(kwargs)
        super().__init__(model, steps=steps, restarts=restarts, eps=hi - lo, norm="Linf", **kwargs)
        self.size = _check_size(size)
        self.location = _check_location(location)
        self.alpha = 0.25 * (hi - lo) if alpha is None else check_positive(alpha, "alpha")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={size_label(self.size)!r}, location={self.location!r}, steps={self.steps}, "
            f"alpha={self.alpha:g}, restarts={self.restarts}, loss={self.loss!r})"
        )

    def _perturb(self, state: AttackState) -> AttackResult:
        x = state.x
        side = self._side(x.shape[2:])
        if self.location != "random":  # checked at every call, whether or not a sample is attacked
            _fixed_corners(self.location, x.shape[2:], side, 0, x.device)
        best = BestIterate(x, state.clean_success)
        locations = torch.full((x.shape[0], x.ndim - 2), -1, dtype=torch.long, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        unplaced = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            todo = todo[~unplaced[todo]]
            if self.early_stop:
                todo = todo[~best.success[todo]]
            if todo.numel() == 0:
                break
            self._run(state, todo, restart, side, best, locations, unplaced)
        return state.result(best.x, best.success, best.loss, **self._details(locations, side, unplaced))

    def _step_size(self, step: int) -> float:
        return self.alpha * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))

    def _run(
        self,
        state: AttackState,
        idx: torch.Tensor,
        restart: int,
        side: int,
        best: BestIterate,
        locations: torch.Tensor,
        unplaced: torch.Tensor,
    ) -> None:
        """One restart on the samples ``idx``: place the windows, ascend the patches, offer iterates to ``best``."""
        objective, x0 = state.objective, state.x[idx]
        mask = None if state.mask is None else state.mask[idx]
        lo, hi = self.value_range
        generators = self.generators(state, idx, restart)
        corners = self._corners(x0.shape[2:], side, mask, generators, x0.device)  # placement first, then the start
        shape = (x0.shape[1],) + (side,) * (x0.ndim - 2)
        start = [torch.rand(shape, generator=g, device=g.device, dtype=_wide(g.device)) for g in generators]
        patch = (lo + (hi - lo) * torch.stack(start).to(x0.device)).to(x0.dtype).clamp(lo, hi)
        placed = (corners >= 0).all(dim=1)
        unplaced[idx] = ~placed
        active = ActiveSet(idx, x0=x0, patch=patch, corners=corners, region=_region(mask))
        if not active.keep(placed):
            return
        for step in range(self.steps):
            leaf = active.patch.detach().requires_grad_(True)
            x_adv = apply_patch(active.x0, leaf, active.corners, active.region)
            logits = self.call_model(x_adv)
            loss = objective.loss(logits, active.idx)
            grad = self.input_gradient(loss, leaf)
            with torch.no_grad():
                success = objective.success(logits.detach(), active.idx)
            self._offer(best, locations, active, x_adv.detach(), loss.detach(), success)
            if self.early_stop:
                active.grad = grad
                if not active.keep(~success):
                    return
                grad = active.grad
            with torch.no_grad():
                active.patch = (active.patch + self._step_size(step) * grad.sign()).clamp(lo, hi)
        x_adv = apply_patch(active.x0, active.patch, active.corners, active.region)
        loss, success = self.query(state, x_adv, active.idx)
        self._offer(best, locations, active, x_adv, loss, success)

    @staticmethod
    def _offer(best: BestIterate, locations: torch.Tensor, active: ActiveSet, x_adv, loss, success) -> None:
        """Offer the iterates to ``best``; the samples that take one record its window's corner."""
        taken = best.update(active.idx, x_adv, loss, success)
        old = locations.index_select(0, active.idx)
        locations.index_copy_(0, active.idx, torch.where(taken[:, None], active.corners, old))


class UniversalPatch(_Placement, FittedAttack):
    """One adversarial patch for every image: fitted on a data set by :meth:`fit`, then pasted by :meth:`perturb`
    into each image's window (Brown et al. 2017).

    The patch (C, side, ..., side) takes any values of the value range; its side follows from ``size`` and the
    first fit batch's spatial shape, and it keeps that side when applied to images of another size.

    Fit: the patch starts uniform at random in the range (a generator seeded with ``seed``). For each epoch and
    batch, every image gets a random window (drawn from a generator seeded with the seed, the epoch and the batch
    number, not from the content; or the fixed ``location``), the patch is pasted, and one signed-gradient step
    ``patch <- clamp(patch + alpha_e * sign(g), lo, hi)`` ascends the mean over the batch of the objective's
    per-sample loss (untargeted: away from the labels; with ``target_class``, the objective's targeted loss, which
    decreases towards the target). The gradient is accumulated over chunks of ``max_batch`` images before the step.
    The step size decays per epoch, ``alpha_e = alpha * (1 + cos(pi * e / epochs)) / 2`` (constant within an
    epoch). After each epoch the patch is evaluated on the fit data (forward only, at placements drawn once for the
    evaluation, the same every epoch) and the fit keeps the patch with the most successes over the epochs (ties: the
    higher mean loss), not necessarily the last; ``fit_history`` lists each epoch's success rate and mean loss.

    Apply: each sample's window is drawn from its own content-keyed stream (as every attack's random choices: its
    result does not depend on the batch), or is the fixed ``location``; one forward pass gives the outcome.
    ``result.details`` holds ``location`` (N, D), -1 where no window was placed, and ``patch_side``.

    Args:
        model: the model the patch is fitted on.
        size: the patch side in voxels (int >= 1), or the fraction of the image's area (2D) / volume (3D) it
            covers (float in (0, 1]); see :func:`patch_side`.
        location: "random" (a window drawn per image) or a fixed corner (c1, ..., cD).
        epochs: passes over the fit data.
        alpha: the first epoch's step size, in the units of ``value_range``; default a twentieth of its width.
        target_class: None (untargeted), or the class every image should be pushed to: the target of a sample is
            ``full(N, target_class)`` for classification, a label map full of it for segmentation.
        patch: a fitted patch (C, side, ..., side) to apply without fitting (e.g. one saved from ``fitted``).
        kwargs: the arguments of :class:`~monai_adv.attacks.Attack` but ``eps``, ``norm`` and ``targeted`` (loss,
            value_range, which must be bounded, task, seed, max_batch, ...).

    Example::

        atk = UniversalPatch(model, size=0.05, epochs=10)
        atk.fit(train_loader)
        result = atk.perturb(x, y)
        torch.save(atk.fitted, "patch.pt")
    """

    name = "universal_patch"
    fixed_arguments = ("eps", "norm", "targeted")

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        size: Union[int, float] = 0.1,
        location: Location = "random",
        epochs: int = 10,
        alpha: Optional[float] = None,
        target_class: Optional[int] = None,
        patch: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> None:
        lo, hi = _patch_range(kwargs)
        if target_class is not None:
            target_class = check_int(target_class, "target_class", minimum=0)
        super().__init__(model, epochs=epochs, eps=hi - lo, norm="Linf", targeted=target_class is not None, **kwargs)
        self.size = _check_size(size)
        self.location = _check_location(location)
        self.alpha = 0.05 * (hi - lo) if alpha is None else check_positive(alpha, "alpha")
        self.target_class = target_class
        self.fit_history: List[Dict[str, float]] = []
        if patch is not None:
            self.fitted = self._check_patch(patch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={size_label(self.size)!r}, location={self.location!r}, epochs={self.epochs}, "
            f"alpha={self.alpha:g}, target_class={self.target_class}, fitted={self.fitted is not None})"
        )

    def _check_patch(self, patch: Any) -> torch.Tensor:
        if not isinstance(patch, torch.Tensor) or not patch.is_floating_point():
            raise TypeError(
                f"`patch` must be a floating-point tensor (C, side, ..., side), got {type(patch).__name__}."
            )
        patch = patch.detach().as_subclass(torch.Tensor)
        spatial = tuple(patch.shape[1:])
        if not 2 <= patch.ndim <= 4 or len(set(spatial)) != 1 or spatial[0] < 1:
            raise ValueError(
                f"`patch` must have shape (C, side, ..., side), a square or cube, got {tuple(patch.shape)}."
            )
        if isinstance(self.size, int) and spatial[0] != self.size:
            raise ValueError(f"`patch` has side {spatial[0]}, but `size`={self.size} voxels.")
        lo, hi = self.value_range
        if not bool(torch.isfinite(patch).all()) or float(patch.min()) < lo or float(patch.max()) > hi:
            raise ValueError(f"`patch` values must be finite and inside `value_range`=({lo:g}, {hi:g}).")
        return patch.clone()

    def _side(self, spatial: Sequence[int]) -> int:
        if self.fitted is not None:
            return int(self.fitted.shape[-1])
        return patch_side(self.size, spatial)

    # ---- apply ------------------------------------------------------------------------------------------------
    def _attack(self, x, y, mask, target, loss_mask, need_clean: bool) -> AttackResult:
        if self.fitted is None:
            self.check_fitted(x)  # raises: not fitted
        if self.target_class is not None and target is None and isinstance(x, torch.Tensor):
            target = self._target_like(y, x)
        return super()._attack(x, y, mask, target, loss_mask, need_clean)

    def _target_like(self, y: Any, x: torch.Tensor) -> torch.Tensor:
        """The target of ``target_class`` in the form of the labels: (N,) or a label map (N, 1, *spatial)."""
        y = torch.as_tensor(y)
        n = x.shape[0]
        if y.ndim == x.ndim:  # segmentation labels
            return torch.full((n, 1, *y.shape[2:]), self.target_class, dtype=torch.long, device=y.device)
        return torch.full((n,), self.target_class, dtype=torch.long, device=y.device)

    def _perturb(self, state: AttackState) -> AttackResult:
        x = state.x
        patch = self.check_fitted(x)
        spatial, side = x.shape[2:], int(patch.shape[-1])
        if patch.shape[0] != x.shape[1] or patch.ndim != x.ndim - 1 or side > min(spatial):
            raise ValueError(
                f"The fitted patch {tuple(patch.shape)} does not fit images {tuple(x.shape[1:])}: it needs the same "
                "channels and spatial dims, and a side no larger than the image."
            )
        if isinstance(self.size, float) and patch_side(self.size, spatial) != side:
            raise ValueError(
                f"The patch was fitted with side {side} for `size`={self.size} of the fit images, but covers "
                f"{self.size:g} of images {tuple(spatial)} only with side {patch_side(self.size, spatial)}: apply it "
                "to images of the fit data's size, or give `size` as a side in voxels."
            )
        idx = torch.arange(x.shape[0], device=x.device)
        corners = self._corners(spatial, side, state.mask, self.generators(state, idx, 0), x.device)
        x_adv = apply_patch(x, patch, corners, _region(state.mask))
        loss, success = self.query(state, x_adv, idx)
        if state.objective.targeted and state.objective.task == "classification":
            success = success & (state.objective.labels != state.objective.targets)  # already the target: no success
        placed = (corners >= 0).all(dim=1)
        if state.clean_success is not None:  # an image left unchanged keeps its clean outcome
            success = torch.where(placed, success, state.clean_success)
        return state.result(x_adv, success, loss, **self._details(corners, side, ~placed))

    # ---- fit --------------------------------------------------------------------------------------------------
    def _fit(self, batches: Callable[[], Iterator[FitBatch]]) -> torch.Tensor:
        seed = resolve_seed(self.seed)
        lo, hi = self.value_range
        dtype = model_dtype(self.model)
        patch: Optional[torch.Tensor] = None
        best: Optional[Tuple[int, float, torch.Tensor]] = None
        self.fit_history = []
        for epoch in range(self.epochs):
            step = self.alpha * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
            for number, (x, y, mask) in enumerate(batches()):
                x = x if dtype is None else x.to(dtype)
                if patch is None:
                    side = patch_side(self.size, x.shape[2:])
                    shape = (x.shape[1],) + (side,) * (x.ndim - 2)
                    init = torch.rand(shape, generator=torch.Generator().manual_seed(seed % 2**64), dtype=torch.float64)
                    patch = (lo + (hi - lo) * init).to(device=x.device, dtype=x.dtype).clamp(lo, hi)
                self._check_batch(x, patch)
                corners = self._fit_corners(x, patch, mask, _seeded_generator(seed, epoch, number))
                grad = self._batch_gradient(patch, x, y, mask, corners)
                patch = (patch + step * grad.sign()).clamp(lo, hi)
            successes, count, loss = self._evaluate(patch, batches, seed)
            self.fit_history.append({"epoch": epoch, "success_rate": successes / count, "loss": loss})
            if best is None or (successes, loss) > best[:2]:
                best = (successes, loss, patch.clone())
        return best[2]

    def _check_batch(self, x: torch.Tensor, patch: torch.Tensor) -> None:
        if x.shape[1] != patch.shape[0] or x.ndim != patch.ndim + 1 or patch.shape[-1] > min(x.shape[2:]):
            raise ValueError(
                f"fit data: images {tuple(x.shape[1:])} do not take the patch {tuple(patch.shape)} sized on the first "
                "batch; every batch needs the same channels and spatial dims, and room for the patch."
            )

    def _fit_corners(
        self, x: torch.Tensor, patch: torch.Tensor, mask: Optional[torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """The corners of a fit batch, drawn from one generator (seeded from the seed, epoch and batch)."""
        spatial, side = x.shape[2:], int(patch.shape[-1])
        if self.location != "random":
            return _fixed_corners(self.location, spatial, side, x.shape[0], x.device)
        uniforms = torch.rand((x.shape[0], len(spatial)), generator=generator, dtype=torch.float64)
        return draw_corners(spatial, side, uniforms.to(device=x.device, dtype=_wide(x.device)), _centre_region(mask))

    def _chunks_of(self, n: int) -> List[slice]:
        size = n if self.max_batch is None else self.max_batch
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def _target(self, logits: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
        if self.target_class is None:
            return None
        if infer_task(self.task, logits.detach(), y) == "segmentation":
            return torch.full((y.shape[0], 1, *logits.shape[2:]), self.target_class, device=y.device)
        return torch.full((y.shape[0],), self.target_class, dtype=torch.long, device=y.device)

    def _batch_gradient(
        self, patch: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor], corners
    ) -> torch.Tensor:
        """The gradient of the batch's mean loss with respect to the patch only, accumulated over the chunks."""
        region = _region(mask)
        total = torch.zeros_like(patch)
        for rows in self._chunks_of(x.shape[0]):
            leaf = patch.detach().requires_grad_(True)
            x_adv = apply_patch(x[rows], leaf, corners[rows], None if region is None else region[rows])
            logits = self.call_model(x_adv)
            objective = self.batch_objective(logits, y[rows], self._target(logits, y[rows]))
            loss = objective.loss(logits, slice(None)).sum() / x.shape[0]
            total += self.input_gradient(loss, leaf)
        return total

    def _evaluate(
        self, patch: torch.Tensor, batches: Callable[[], Iterator[FitBatch]], seed: int
    ) -> Tuple[int, int, float]:
        """Successes, samples and mean loss of the patch on the fit data, at the evaluation's own placements."""
        successes, count, loss_sum = 0, 0, 0.0
        dtype = model_dtype(self.model)
        with torch.inference_mode():
            for number, (x, y, mask) in enumerate(batches()):
                x = x if dtype is None else x.to(dtype)
                corners = self._fit_corners(x, patch, mask, _seeded_generator(seed, -1, number))
                region = _region(mask)
                for rows in self._chunks_of(x.shape[0]):
                    x_adv = apply_patch(x[rows], patch, corners[rows], None if region is None else region[rows])
                    logits = self.call_model(x_adv)
                    objective = self._evaluation_objective(logits, x[rows], y[rows])
                    loss_sum += float(objective.loss(logits, slice(None)).double().sum())
                    successes += int(objective.success(logits, slice(None)).sum())
                    count += x_adv.shape[0]
        return successes, count, loss_sum / max(count, 1)

    def _evaluation_objective(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> Objective:
        """The objective at the patched logits; for segmentation, whose goal is relative to the clean Dice, built
        with the clean logits (one more forward pass)."""
        target = self._target(logits, y)
        clean = self.call_model(x) if infer_task(self.task, logits, y) == "segmentation" else None
        return self.batch_objective(logits, y, target, clean)
