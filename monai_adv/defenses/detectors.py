# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial example detectors fitted on clean data.

A detector scores each input (higher means more likely adversarial) and flags the inputs whose score exceeds a
threshold chosen at fit time for a target false-positive rate on clean data:

- :class:`MahalanobisDetector` (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples
  and Adversarial Attacks", NeurIPS 2018): class-conditional Gaussians with a tied covariance on the globally
  average-pooled features of intermediate layers; the score is differentiable with respect to the input.
- :class:`FeatureSqueezingDetector` (Xu et al., "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
  Networks", NDSS 2018): the L1 distance between the softmax of the input and of its squeezed versions
  (bit-depth reduction, median smoothing); the squeezers are not differentiable.

:func:`~monai_adv.defenses.detection_metrics.detection_metrics` measures how well scores separate adversarial from
clean inputs; the detector-aware attacks and the "classify or reject" evaluation are in
:mod:`monai_adv.defenses.detection_attack`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from monai_adv.attacks.adaptive import BPDA
from monai_adv.attacks.guard import model_dtype, model_state_guard
from monai_adv.attacks.validation import as_tensor_labels, check_input, check_int, check_value_range
from monai_adv.defenses.detection_metrics import _check_fpr, threshold_at_fpr
from monai_adv.defenses.squeezers import make_squeezer

__all__ = ["Detector", "FeatureSqueezingDetector", "MahalanobisDetector"]


def _unwrap(network: Any) -> Any:
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def _batches(data: Any, name: str, image_key: str, label_key: str, labels: bool) -> Iterator[Tuple[Any, Any]]:
    """(images, labels or None) of each batch of ``data``: dicts with the two keys, or (images, labels) pairs."""
    if isinstance(data, (torch.Tensor, Mapping, str)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"`{name}` must be an iterable of batches (a DataLoader of dicts with {image_key!r}/{label_key!r}, "
            f"or of (images, labels) pairs), got {type(data).__name__}."
        )
    for batch in data:
        if isinstance(batch, Mapping):
            keys = (image_key, label_key) if labels else (image_key,)
            for key in keys:
                if key not in batch:
                    raise KeyError(f"`{name}`: the batch has no key {key!r} (keys: {sorted(batch)}).")
            yield batch[image_key], batch.get(label_key)
        elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= (2 if labels else 1):
            yield batch[0], batch[1] if len(batch) > 1 else None
        else:
            raise TypeError(
                f"`{name}`: each batch must be a dict with {image_key!r} and {label_key!r} or an (images, labels) "
                f"pair, got {type(batch).__name__}."
            )


def _class_indices(y: Any, n: int, device: torch.device) -> torch.Tensor:
    y = as_tensor_labels(y, "label", device)
    if y.ndim == 2 and y.shape[1] > 1 and y.shape[0] == n:  # one-hot
        y = y.argmax(dim=1)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (n,) or y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(f"The labels must be class indices (N,) for the {n} images, got shape {tuple(y.shape)}.")
    return y.long()


class Detector:
    """Base of the detectors: :meth:`fit` on clean data, :meth:`score` (higher = more likely adversarial) and
    :meth:`detect` (score above the threshold chosen at fit time for the false-positive rate ``fpr``).

    The network is run through :func:`~monai_adv.attacks.model_state_guard`: in eval mode, with frozen parameters,
    and left exactly as found (parameters, buffers, flags, ``.grad`` fields, hooks). Classification networks only:
    the network must return logits (N, K).

    Args:
        network: the classifier the detector guards.
        fpr: the false-positive rate on clean data the threshold is chosen for, in (0, 1).
    """

    #: whether :meth:`fit` reads the labels of the fit data
    needs_labels = True

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], fpr: float = 0.05) -> None:
        if not callable(network):
            raise TypeError(f"`network` must be an nn.Module or a callable, got {type(network).__name__}.")
        self.network = network
        self.fpr = _check_fpr(fpr)
        self.threshold: Optional[float] = None
        self.fit_samples = 0

    # ---- what subclasses implement ----------------------------------------------------------------------------
    def _fit(self, batches: Iterator[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Fit the detector's statistics on clean batches (images, labels); return the scores of those images."""
        raise NotImplementedError

    def logits_and_score(
        self, x: torch.Tensor, surrogate: bool = False, network: Optional[Callable] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The network's logits (N, K) and the detector's score (N,) on ``x`` (no checks, the caller's grad mode).

        Args:
            x: images (N, C, *spatial), a plain tensor in the network's dtype.
            surrogate: score with the differentiable surrogate an adaptive attack ascends (the same values; the
                gradient of a non-differentiable step replaced by the identity, see :class:`BPDA`).
            network: the module to run instead of a new guarded view of ``self.network`` (an attack's view of it).
        """
        raise NotImplementedError

    # ---- the shared interface ---------------------------------------------------------------------------------
    def fit(
        self,
        data: Iterable,
        calibration: Optional[Iterable] = None,
        image_key: str = "image",
        label_key: str = "label",
    ) -> Detector:
        """Fit on clean data and choose the threshold; returns the detector.

        Args:
            data: clean batches: dicts with ``image_key`` and ``label_key`` (MONAI style) or ``(images, labels)``
                pairs (e.g. a ``DataLoader``), iterated once; labels are class indices (N,) (or one-hot), needed
                only by the detectors that read them (``needs_labels``).
            calibration: clean batches (labels optional) the threshold is chosen on; default ``data`` itself.
                Held-out data gives a false-positive rate on new data closer to ``fpr``.
            image_key: the images' key in dict batches.
            label_key: the labels' key in dict batches.

        Raises:
            ValueError: when ``data`` (or ``calibration``) holds no image.
        """
        with torch.inference_mode(False), torch.no_grad():
            self.threshold, self.fit_samples = None, 0
            scores = self._fit(self._iterate(data, "data", image_key, label_key, labels=self.needs_labels))
            if calibration is not None:
                batches = self._iterate(calibration, "calibration", image_key, label_key, labels=False)
                scores = torch.cat([self.logits_and_score(x)[1] for x, _ in batches])
            self.threshold = threshold_at_fpr(scores, self.fpr)
        return self

    def _iterate(self, data: Any, name: str, image_key: str, label_key: str, labels: bool) -> Iterator:
        seen = 0
        dtype, device = model_dtype(self.network), self._device()
        for x, y in _batches(data, name, image_key, label_key, labels):
            x = check_input(torch.as_tensor(x), None).as_subclass(torch.Tensor)
            if x.shape[0] == 0:
                continue
            x = x.to(device=device, dtype=dtype or x.dtype)
            seen += x.shape[0]
            yield x, _class_indices(y, x.shape[0], x.device) if labels else None
        if seen == 0:
            raise ValueError(f"`{name}` holds no image: the detector is fitted on at least one clean image.")
        if name == "data":
            self.fit_samples = seen

    def _device(self) -> torch.device:
        for tensor in getattr(_unwrap(self.network), "parameters", lambda: iter(()))():
            return tensor.device
        return torch.device("cpu")

    def _prepare(self, x: Any) -> torch.Tensor:
        x = check_input(x, None).as_subclass(torch.Tensor)
        return x.to(model_dtype(self.network) or x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample score (N,), float64, higher = more likely adversarial; differentiable with respect to ``x``
        where the detector allows (computed in the caller's grad mode)."""
        if not self._fitted():
            raise RuntimeError(f"{type(self).__name__} is not fitted: call `fit` on clean data first.")
        return self.logits_and_score(self._prepare(x))[1]

    def _fitted(self) -> bool:
        return self.threshold is not None

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample bool (N,): whether the score of ``x`` exceeds the threshold (flagged as adversarial)."""
        if self.threshold is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call `fit` on clean data first.")
        with torch.no_grad():
            return self.score(x) > self.threshold

    def __repr__(self) -> str:
        threshold = "not fitted" if self.threshold is None else f"{self.threshold:.6g}"
        return f"{type(self).__name__}(fpr={self.fpr:g}, threshold={threshold})"


def _check_logits(logits: Any) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"The detectors guard classifiers returning logits (N, K >= 2), got {shape}.")
    return logits.as_subclass(torch.Tensor) if type(logits) is not torch.Tensor else logits


# ---- Mahalanobis ---------------------------------------------------------------------------------------------------
class MahalanobisDetector(Detector):
    """Mahalanobis-distance detector (Lee et al., NeurIPS 2018), fitted on clean data only.

    Features: the output of each chosen layer, averaged over its spatial dims (global average pooling; a layer
    output (N, C) is used as it is). On the clean fit data, per layer ``l``: the class means ``mu_{l,c}`` (true
    labels; the classes absent from the fit data are left out) and one tied covariance ``S_l`` of the features
    around their class mean, shrunk towards its mean variance (``S_l + shrinkage * trace(S_l) / C * I``) and
    inverted. The layer's distance is the smallest squared Mahalanobis distance to a class mean,
    ``d_l(x) = min_c (f_l(x) - mu_{l,c})^T S_l^{-1} (f_l(x) - mu_{l,c})`` (the paper's confidence score, negated),
    and the score sums the
    standardized distances, ``score(x) = sum_l (d_l(x) - m_l) / s_l``, with ``m_l``, ``s_l`` the mean and standard
    deviation of ``d_l`` on the fit data. This clean-only combination replaces the paper's logistic regression,
    which is fitted on adversarial examples of a known attack; the paper's input pre-processing step is not applied.
    The score is differentiable with respect to the input (an adaptive attack ascends it directly).

    The features are read with forward hooks on the named modules, registered for one forward pass and removed
    right after it (a module called several times in one pass gives its last output). Works on 1D, 2D and 3D inputs.

    Args:
        network: the classifier (an ``nn.Module`` returning logits (N, K)).
        layers: names of modules of ``network`` (as in ``network.named_modules()``) whose outputs are the features;
            None picks, at fit time, the last ``num_layers`` convolutions (``nn.Conv1d/2d/3d`` and transposed ones,
            e.g. inside MONAI's ``Convolution`` blocks) in the order a forward pass runs them.
        num_layers: how many convolutions the default picks.
        shrinkage: covariance shrinkage towards the identity, relative to the mean variance (>= 0); it keeps the
            inverse stable when features are (nearly) constant.
        fpr: the clean false-positive rate the threshold is chosen for.

    Example::

        detector = MahalanobisDetector(net).fit(train_loader)
        flagged = detector.detect(x)  # bool (N,)
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Optional[Sequence[str]] = None,
        num_layers: int = 2,
        shrinkage: float = 0.01,
        fpr: float = 0.05,
    ) -> None:
        super().__init__(network, fpr)
        if not isinstance(_unwrap(network), nn.Module):
            raise TypeError(f"`network` must be an nn.Module (its layers are hooked), got {type(network).__name__}.")
        modules = dict(_unwrap(network).named_modules())
        if layers is not None:
            if isinstance(layers, str):
                layers = (layers,)
            layers = tuple(layers)
            unknown = [name for name in layers if name not in modules or name == ""]
            if not layers or unknown:
                raise ValueError(
                    f"`layers` must name modules of the network, got unknown {unknown or list(layers)}; "
                    f"e.g. {[n for n in modules if n][-4:]}."
                )
        self.layers: Optional[Tuple[str, ...]] = layers
        self.num_layers = check_int(num_layers, "num_layers")
        if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not shrinkage >= 0:
            raise ValueError(f"`shrinkage` must be a number >= 0, got {shrinkage!r}.")
        self.shrinkage = float(shrinkage)
        self.classes: Optional[torch.Tensor] = None
        self.means: List[torch.Tensor] = []  # per layer (classes, C), float64
        self.precisions: List[torch.Tensor] = []  # per layer (C, C), float64
        self.standardize: List[Tuple[float, float]] = []  # per layer (mean, std) of the clean distances

    def _fitted(self) -> bool:
        return bool(self.means)

    def _modules(self) -> Dict[str, nn.Module]:
        return dict(_unwrap(self.network).named_modules())

    def _default_layers(self, x: torch.Tensor) -> Tuple[str, ...]:
        order: List[str] = []
        convs = {name: m for name, m in self._modules().items() if isinstance(m, nn.modules.conv._ConvNd) and name}
        thread = threading.get_ident()

        def record_as(name: str) -> Callable:
            def record(module: nn.Module, inputs: Any, output: Any) -> None:
                if threading.get_ident() == thread and name not in order:
                    order.append(name)

            return record

        handles = [module.register_forward_hook(record_as(name)) for name, module in convs.items()]
        try:
            with model_state_guard(self.network) as net:
                net(x[:1])
        finally:
            for handle in handles:
                handle.remove()
        if not order:
            raise ValueError("`layers`: the network runs no convolution; name the layers to read the features from.")
        return tuple(order[-self.num_layers :])

    def features(self, x: torch.Tensor, network: Optional[Callable] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The network's logits and the pooled features (N, C_l) of each layer, in one forward pass.

        Args:
            x: images (N, C, *spatial) in the network's dtype.
            network: the module to run (an attack's view of the network); default a guarded view of it.
        """
        if self.layers is None:
            raise RuntimeError("MahalanobisDetector is not fitted: call `fit` on clean data first.")
        captured: Dict[str, torch.Tensor] = {}
        thread = threading.get_ident()

        def hook_for(name: str) -> Callable:
            def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                if threading.get_ident() != thread:  # another thread's pass of the same network
                    return
                if not isinstance(output, torch.Tensor) or output.ndim < 2:
                    found = type(output).__name__ if not isinstance(output, torch.Tensor) else tuple(output.shape)
                    raise ValueError(f"`layers`: {name!r} must output a tensor (N, C, *spatial), got {found}.")
                out = output.as_subclass(torch.Tensor) if type(output) is not torch.Tensor else output
                captured[name] = out.flatten(2).mean(dim=2) if out.ndim > 2 else out

            return hook

        modules = self._modules()
        handles = [modules[name].register_forward_hook(hook_for(name)) for name in self.layers]
        try:
            if network is None:
                with model_state_guard(self.network) as net:
                    logits = net(x)
            else:
                logits = network(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.layers if name not in captured]
        if missing:
            raise ValueError(f"`layers`: {missing} did not run in the network's forward pass.")
        return _check_logits(logits), [captured[name] for name in self.layers]

    def _distances(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per layer: the smallest class-conditional Mahalanobis distance (N,), float64."""
        out = []
        for feat, mean, precision in zip(features, self.means, self.precisions):
            mean, precision = mean.to(feat.device), precision.to(feat.device)
            diff = feat.double()[:, None, :] - mean[None]  # (N, classes, C)
            out.append(torch.einsum("nkc,cd,nkd->nk", diff, precision, diff).amin(dim=1))
        return out

    def _combine(self, distances: List[torch.Tensor]) -> torch.Tensor:
        return sum((d - m) / s for d, (m, s) in zip(distances, self.standardize))

    def _fit(self, batches: Iterator[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        feats: List[List[torch.Tensor]] = []
        labels: List[torch.Tensor] = []
        for x, y in batches:
            if self.layers is None:
                self.layers = self._default_layers(x)
            _, features = self.features(x)
            feats.append([f.double() for f in features])
            labels.append(y)
        y = torch.cat(labels)
        per_layer = [torch.cat([f[i] for f in feats]) for i in range(len(self.layers))]
        self.classes = torch.unique(y)
        self.means, self.precisions, self.standardize = [], [], []
        for f in per_layer:
            means = torch.stack([f[y == c].mean(dim=0) for c in self.classes])
            centered = f - means[torch.searchsorted(self.classes, y)]
            cov = centered.T @ centered / f.shape[0]
            ridge = self.shrinkage * float(cov.diagonal().mean()) + 1e-12
            cov = cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            self.means.append(means)
            self.precisions.append(torch.linalg.pinv(cov, hermitian=True))
        distances = self._distances(per_layer)
        for d in distances:
            std = float(d.std()) if d.numel() > 1 else 0.0
            self.standardize.append((float(d.mean()), std if std > 0 else 1.0))
        return self._combine(distances)

    def logits_and_score(
        self, x: torch.Tensor, surrogate: bool = False, network: Optional[Callable] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.features(x, network)
        return logits, self._combine(self._distances(features))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, layers={self.layers})"


class FeatureSqueezingDetector(Detector):
    """Feature-squeezing detector (Xu et al., NDSS 2018).

    ``score(x) = max_s || softmax(f(x)) - softmax(f(s(x))) ||_1`` over the squeezers ``s``: an adversarial input
    typically changes its prediction more under squeezing than a clean one. The fit only chooses the threshold
    (the clean scores' quantile for ``fpr``) and needs no labels.

    The squeezers are not differentiable (rounding has a zero gradient, a median a sparse one): :meth:`score`
    propagates gradients only through the un-squeezed branch ``softmax(f(x))``. An adaptive attack scores with
    ``surrogate=True``, which passes the gradient through each squeezer as the identity (:class:`BPDA`), with the
    same score values.

    Args:
        network: the classifier (returning logits (N, K)).
        squeezers: squeezer names (see :func:`~monai_adv.defenses.squeezers.make_squeezer`) or callables
            ``x -> x'`` of the input's shape. The default is the paper's pair for CIFAR-10 (5-bit depth, 2x2 median
            smoothing) without its third squeezer, non-local means, which is not provided.
        value_range: the images' range, for bit-depth reduction.
        fpr: the clean false-positive rate the threshold is chosen for.

    Example::

        detector = FeatureSqueezingDetector(net, squeezers=("bit_depth_5", "median_2x2")).fit(train_loader)
    """

    needs_labels = False

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        squeezers: Sequence[Union[str, Callable]] = ("bit_depth_5", "median_2x2"),
        value_range: Optional[Sequence[float]] = (0.0, 1.0),
        fpr: float = 0.05,
    ) -> None:
        super().__init__(network, fpr)
        if isinstance(squeezers, str) or callable(squeezers):
            squeezers = (squeezers,)
        if not squeezers:
            raise ValueError("`squeezers` must hold at least one squeezer.")
        self.value_range = check_value_range(value_range)
        self.squeezers = [make_squeezer(s, self.value_range) for s in squeezers]

    def _fitted(self) -> bool:
        return True  # the score needs no statistics: only `detect` needs the threshold

    def _fit(self, batches: Iterator[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([self.logits_and_score(x)[1] for x, _ in batches])

    def logits_and_score(
        self, x: torch.Tensor, surrogate: bool = False, network: Optional[Callable] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if network is None:
            with model_state_guard(self.network) as net:
                return self._logits_and_score(x, surrogate, net)
        return self._logits_and_score(x, surrogate, network)

    def _logits_and_score(self, x: torch.Tensor, surrogate: bool, network: Callable):
        logits = _check_logits(network(x))
        probs = torch.softmax(logits.double(), dim=1)
        distances = []
        for squeeze in self.squeezers:
            squeezed = BPDA(squeeze)(x) if surrogate else squeeze(x.detach())
            other = torch.softmax(_check_logits(network(squeezed)).double(), dim=1)
            distances.append((probs - other).abs().sum(dim=1))
        return logits, torch.stack(distances, dim=1).amax(dim=1)
