# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Input purification as a defense: ``Purified(network, purifier)`` runs a purifier of
:mod:`monai_adv.defenses.purifiers` in front of a network, and its evaluation by non-adaptive and adaptive attacks.

Purification defenses that are evaluated only against attacks unaware of the purifier report robustness that
adaptive attacks remove (Athalye, Carlini & Wagner, ICML 2018; Tramer et al., NeurIPS 2020, "On adaptive attacks
to adversarial example defenses"). :func:`evaluate_purification` therefore reports both numbers, and says which to
quote: the adaptive one.

Non-adaptive crafting model (``non_adaptive="auto"``, the setting such papers report):

- differentiable purifier (:class:`~monai_adv.defenses.purifiers.GaussianSmoothing`, a
  :class:`~monai_adv.defenses.purifiers.LearnedDenoiser`, Gaussian noise alone): the ``Purified`` model itself,
  one pass per step, with the purifier's own gradient (for a randomized purifier: one draw of its randomness per
  step, no averaging);
- non-differentiable purifier (median, bit depth, noise followed by either): the bare classifier
  ``purified.network``; the examples are transferred through the purifier (the "oblivious" adversary of Xu et al.
  2018 and Guo et al. 2018). ``non_adaptive="purified"`` crafts on the ``Purified`` model with autograd's gradient
  instead (zero for bit depth), ``"classifier"`` on the bare classifier for every purifier.

Adaptive crafting model (Athalye et al. 2018, :mod:`monai_adv.attacks.adaptive`):

- non-differentiable purifier: ``network(BPDA(purifier)(x))``: the purifier's exact forward pass; in the
  backward pass the gradient of the purifier's own differentiable approximation where it declares one
  (``purifier.bpda_backward()``: the mean over the window of a median filter), else the identity (bit depth);
- randomized purifier: :class:`~monai_adv.attacks.EoT` over ``samples`` passes (of the BPDA model when the
  randomized purifier is also non-differentiable);
- deterministic differentiable purifier: the ``Purified`` model itself (the two crafting models are the same).

Whichever model crafts them, the adversarial examples are scored on the real ``Purified`` model: a deterministic
one in one pass; a randomized one in ``passes`` passes, each a fresh draw of its randomness, the accuracy being
the mean over samples and passes (the probability that one run of the defense classifies the example correctly).

With :class:`~monai_adv.engines.RobustnessEvaluator`, the adaptive evaluation of a whole data set is
``RobustnessEvaluator(..., network=purified, surrogate=purification_attack_models(purified)["adaptive"])``: the
examples are crafted on the adaptive model and scored on ``purified`` (one pass per sample).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from monai_adv.attacks import PGD, adaptive_model, make_attack, model_dtype, model_state_guard
from monai_adv.attacks.validation import check_choice, check_eps, check_int, check_value_range
from monai_adv.defenses.purifiers import make_purifier

__all__ = ["Purified", "purification_attack_models", "evaluate_purification", "train_denoiser"]

#: BPDA's backward pass: "auto", "identity", None (the identity) or a differentiable approximation
Backward = Union[str, Callable[[torch.Tensor], torch.Tensor], None]


class Purified(nn.Module):
    """A network behind an input purifier: ``forward(x) = network(purifier(x))``.

    ``differentiable`` and ``randomized`` are the purifier's (a purifier without them is taken as differentiable
    and deterministic). Use it as the deployed (scored) model; :func:`purification_attack_models` builds the models
    to craft adversarial examples on.

    Args:
        network: the classifier (logits (N, K)).
        purifier: a purifier module or callable keeping the input's shape, or a purifier name for
            :func:`~monai_adv.defenses.purifiers.make_purifier` (its defaults).

    Example::

        defended = Purified(network, make_purifier("bit_depth", bits=3))
        results = evaluate_purification(defended, x, y, attack="pgd", eps=8 / 255, steps=20)
        print(results[results["quote"] + "_accuracy"])
    """

    def __init__(self, network: nn.Module, purifier: Union[Callable[[torch.Tensor], torch.Tensor], str]) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"`network` must be an nn.Module, got {type(network).__name__}.")
        if isinstance(purifier, str):
            purifier = make_purifier(purifier)
        if not callable(purifier):
            raise TypeError(f"`purifier` must be a purifier module, callable or name, got {type(purifier).__name__}.")
        self.network = network
        self.purifier = purifier

    @property
    def differentiable(self) -> bool:
        return bool(getattr(self.purifier, "differentiable", True))

    @property
    def randomized(self) -> bool:
        return bool(getattr(self.purifier, "randomized", False))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.network(self.purifier(x), *args, **kwargs)


def _check_purified(purified: Any) -> Purified:
    if not isinstance(purified, Purified):
        raise TypeError(f"`purified` must be a Purified(network, purifier), got {type(purified).__name__}.")
    return purified


def purification_attack_models(
    purified: Purified,
    samples: int = 8,
    non_adaptive: str = "auto",
    backward: Backward = "auto",
) -> Dict[str, Callable[..., torch.Tensor]]:
    """The models to craft adversarial examples on for a purified network: ``{"non_adaptive": ..., "adaptive": ...}``
    (see the module's notes for each choice). Score the examples of both on ``purified`` itself.

    Args:
        purified: the defended model.
        samples: EoT passes of the adaptive model for a randomized purifier (>= 1).
        non_adaptive: "auto" (the purified model for a differentiable purifier, the bare classifier otherwise),
            "purified" or "classifier".
        backward: BPDA's backward pass for a non-differentiable purifier: "auto" (the purifier's
            ``bpda_backward()`` where it has one, else the identity), "identity" (or None), or a differentiable
            callable approximating the purifier (e.g. :class:`~monai_adv.defenses.purifiers.GaussianSmoothing`).
    """
    purified = _check_purified(purified)
    samples = check_int(samples, "samples")
    non_adaptive = check_choice(non_adaptive, "non_adaptive", ("auto", "purified", "classifier"))
    backward = _resolve_backward(purified, backward)
    if non_adaptive == "auto":
        non_adaptive = "purified" if purified.differentiable else "classifier"
    crafted = purified if non_adaptive == "purified" else purified.network
    eot = samples if purified.randomized else 1
    # EoT averages log-probabilities: the cross-entropy of the mean is then the mean cross-entropy over the draws
    if purified.differentiable:
        adaptive = adaptive_model(purified, eot_samples=eot, eot_output="log_probs")
    else:
        adaptive = adaptive_model(
            purified.network, preprocess=purified.purifier, backward=backward, eot_samples=eot, eot_output="log_probs"
        )
    return {"non_adaptive": crafted, "adaptive": adaptive}


def _resolve_backward(purified: Purified, backward: Backward) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The callable of BPDA's backward pass (None: the identity) for ``backward``."""
    if isinstance(backward, str):
        backward = check_choice(backward, "backward", ("auto", "identity"))
        if backward == "identity" or purified.differentiable:
            return None
        approximation = getattr(purified.purifier, "bpda_backward", None)
        return approximation() if callable(approximation) else None
    if backward is not None and not callable(backward):
        raise TypeError(f'`backward` must be "auto", "identity", None or a callable, got {type(backward).__name__}.')
    if backward is not None and purified.differentiable:
        raise ValueError("`backward` approximates a non-differentiable purifier; this purifier is differentiable.")
    return backward


def _describe(purified: Purified, models: Mapping[str, Callable], samples: int, backward: Optional[Callable]) -> Dict:
    gradient = "identity" if backward is None else repr(backward) if isinstance(backward, nn.Module) else "given"
    eot = f"EoT over {samples} passes of " if purified.randomized and samples > 1 else ""
    adaptive = "the purified model (its own gradient)"
    if not purified.differentiable:
        adaptive = f"network(BPDA(purifier)(x)), {gradient} backward"
    non_adaptive = "the bare classifier, transferred through the purifier"
    if models["non_adaptive"] is purified:
        single = ", one draw of its randomness per pass" if purified.randomized else ""
        non_adaptive = f"the purified model, with autograd's gradient of the purifier{single}"
    return {"non_adaptive_model": non_adaptive, "adaptive_model": eot + adaptive}


@contextmanager
def _seeded(seed: Optional[int], device: torch.device) -> Iterator[None]:
    """PyTorch's CPU generator and the generator of ``device`` seeded with ``seed`` inside, restored after (nothing
    done for None)."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    with torch.random.fork_rng(devices=[device], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        yield


def _correct(model: Callable, x: torch.Tensor, y: torch.Tensor, passes: int) -> torch.Tensor:
    """Per sample, the fraction of ``passes`` forward passes of ``model`` (eval mode) that predict ``y``."""
    hits = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    with model_state_guard(model) as view, torch.no_grad():
        for _ in range(passes):
            logits = view(x.to(model_dtype(model) or x.dtype))
            if logits.ndim != 2:
                raise ValueError(
                    f"evaluate_purification scores classifiers (logits (N, K)), got {tuple(logits.shape)}."
                )
            hits += (logits.argmax(dim=1) == y).double()
    return hits / passes


def evaluate_purification(
    purified: Purified,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str = "pgd",
    eps: float = 8 / 255,
    samples: int = 8,
    passes: Optional[int] = None,
    non_adaptive: str = "auto",
    backward: Backward = "auto",
    seed: Optional[int] = 0,
    **attack_kwargs: Any,
) -> Dict[str, Any]:
    """Clean, non-adaptive and adaptive robust accuracy of a purified classifier on ``(x, y)``.

    The attack ``attack`` (a registered name, built by :func:`~monai_adv.attacks.make_attack` with ``eps``,
    ``seed`` and ``attack_kwargs``) crafts adversarial examples on each model of
    :func:`purification_attack_models`; every example is scored on ``purified`` itself (one pass for a
    deterministic purifier; for a randomized one, the mean correctness over ``passes`` passes, each with fresh
    randomness, and over the samples). The clean accuracy is scored the same way. With an int ``seed`` PyTorch's
    global generators are seeded inside the call and restored after, and a purifier with a ``reset`` method (its own
    seeded streams) is reset first, so that the call is reproducible.

    Returns:
        a dict with ``clean_accuracy``, ``non_adaptive_accuracy``, ``adaptive_accuracy``, ``worst_case_accuracy``
        (per sample, the lower of the two robust scores), ``quote`` ("worst_case": the robust accuracy to report, at
        most the adaptive one; the non-adaptive one alone overestimates robustness), ``non_adaptive_model`` and
        ``adaptive_model`` (what crafted the examples), ``attack``, ``eps``, ``samples`` (EoT passes, 1 for a
        deterministic purifier) and ``passes`` (scoring passes).

    Args:
        purified: the defended classifier.
        x: images (N, C, *spatial) in the attack's value range, on the model's device.
        y: class indices (N,).
        attack: a registered attack name ("pgd", "apgd", ...).
        eps: the attack's budget.
        samples: EoT passes of the adaptive model for a randomized purifier.
        passes: scoring passes of a randomized purifier (default 8); must be 1 or None for a deterministic one.
        non_adaptive: the non-adaptive crafting model: "auto", "purified" or "classifier".
        backward: BPDA's backward pass for a non-differentiable purifier: "auto", "identity" or a callable (see
            :func:`purification_attack_models`).
        seed: the attacks' seed and the seed of the randomness inside the call; None for fresh randomness.
        attack_kwargs: further arguments of the attack (``steps``, ``norm``, ``value_range``, ...).
    """
    purified = _check_purified(purified)
    eps = check_eps(eps)
    randomized = purified.randomized
    passes = (8 if randomized else 1) if passes is None else check_int(passes, "passes")
    if passes > 1 and not randomized:
        raise ValueError(f"`passes`={passes}: a deterministic purifier is scored in one pass.")
    backward = _resolve_backward(purified, backward)
    models = purification_attack_models(purified, samples, non_adaptive, backward)
    y = torch.as_tensor(y, device=x.device)
    if y.shape != (x.shape[0],):
        raise ValueError(f"`y` must hold one class index per image of `x` ({x.shape[0]}), got {tuple(y.shape)}.")
    if randomized:  # every sample attacked to the last step: an early stop on one EoT verdict would leave samples
        attack_kwargs = {"early_stop": False, **attack_kwargs}  # that fresh draws of the purifier then score robust
    with _seeded(seed, x.device):
        reset = getattr(purified.purifier, "reset", None)
        if seed is not None and callable(reset):
            reset()
        clean = _correct(purified, x, y, passes)
        scores: Dict[str, torch.Tensor] = {}
        for key in ("non_adaptive", "adaptive"):
            if key == "adaptive" and models["adaptive"] is models["non_adaptive"]:
                scores[key] = scores["non_adaptive"]
                continue
            x_adv = make_attack(attack, models[key], eps=eps, seed=seed, **attack_kwargs)(x, y)
            scores[key] = _correct(purified, x_adv, y, passes)
    return {
        "clean_accuracy": float(clean.mean()),
        "non_adaptive_accuracy": float(scores["non_adaptive"].mean()),
        "adaptive_accuracy": float(scores["adaptive"].mean()),
        "worst_case_accuracy": float(torch.minimum(scores["non_adaptive"], scores["adaptive"]).mean()),
        "quote": "worst_case",
        **_describe(purified, models, samples, backward),
        "attack": attack,
        "eps": eps,
        "samples": samples if randomized else 1,
        "passes": passes,
    }


def _batch_parts(batch: Any, image_key: str, label_key: str):
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        return batch[image_key], batch.get(label_key)
    if isinstance(batch, Sequence) and len(batch) >= 1:
        return batch[0], batch[1] if len(batch) > 1 else None
    raise TypeError(f"A batch must be a tensor, a (images, labels) pair or a dict, got {type(batch).__name__}.")


def train_denoiser(
    denoiser: nn.Module,
    loader: Iterable[Any],
    noise: str = "gaussian",
    sigma: float = 0.1,
    attack: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    classifier: Optional[nn.Module] = None,
    attack_kwargs: Optional[Dict[str, Any]] = None,
    epochs: int = 1,
    lr: float = 1e-3,
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    device: Optional[Union[str, torch.device]] = None,
    seed: Optional[int] = 0,
    image_key: str = "image",
    label_key: str = "label",
) -> List[float]:
    """Train a denoiser (e.g. a :class:`~monai_adv.defenses.purifiers.LearnedDenoiser`) to recover clean images
    with Adam on the mean squared error ``MSE(denoiser(x_noisy), x)`` (the pixel-guided denoiser loss of Liao et
    al., CVPR 2018).

    ``noise="gaussian"``: ``x_noisy = clip(x + N(0, sigma^2))`` (a fresh draw per batch). ``noise="adversarial"``:
    ``x_noisy = attack(x, y)``, adversarial examples of a fixed classifier, by default
    ``PGD(classifier, value_range=value_range, **attack_kwargs)`` (:class:`~monai_adv.attacks.PGD`'s own defaults:
    eps 8/255, 10 steps); the classifier is never changed. The denoiser is left in eval mode.

    Args:
        denoiser: the module to train (its parameters are updated).
        loader: an iterable of batches: image tensors, ``(images, labels)`` sequences or dicts (``image_key``,
            ``label_key``); labels are needed for adversarial noise.
        noise: "gaussian" or "adversarial".
        sigma: Gaussian noise standard deviation.
        attack: for adversarial noise, a callable ``attack(x, y) -> x_adv`` (e.g. an attack of
            :mod:`monai_adv.attacks`); None builds PGD on ``classifier``.
        classifier: the classifier of the default PGD.
        attack_kwargs: arguments of the default PGD (``eps``, ``steps``, ...).
        epochs: passes over ``loader``.
        lr: Adam's learning rate.
        value_range: ``(lo, hi)`` the Gaussian-noisy images are clipped to, or None.
        device: where to train (the denoiser is moved there); None: the device of its parameters.
        seed: seed of the Gaussian noise (None: PyTorch's global generator).
        image_key: the images' key in dict batches.
        label_key: the labels' key in dict batches.

    Returns:
        the mean loss of each epoch.
    """
    noise = check_choice(noise, "noise", ("gaussian", "adversarial"))
    epochs = check_int(epochs, "epochs")
    value_range = check_value_range(value_range)
    if noise == "adversarial" and attack is None:
        if classifier is None:
            raise ValueError('noise="adversarial" needs an `attack` or a `classifier` to attack.')
        attack = PGD(classifier, **{"value_range": value_range, **(attack_kwargs or {})})
    if device is not None:
        denoiser.to(device)
    param = next(denoiser.parameters(), None)
    if param is None:
        raise ValueError("`denoiser` has no parameters to train.")
    device = param.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)
    history = []
    denoiser.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            images, labels = _batch_parts(batch, image_key, label_key)
            images = images.to(device)
            if noise == "gaussian":
                draw = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
                noisy = images + sigma * draw
                noisy = noisy if value_range is None else noisy.clamp(*value_range)
            else:
                if labels is None:
                    raise ValueError('noise="adversarial" needs labels in the batches.')
                noisy = attack(images, torch.as_tensor(labels).to(device)).detach()
            optimizer.zero_grad()
            loss = F.mse_loss(denoiser(noisy), images)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * images.shape[0]
            count += images.shape[0]
        history.append(total / max(count, 1))
    denoiser.eval()
    return history
