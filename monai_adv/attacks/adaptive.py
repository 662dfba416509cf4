# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adaptive attacks (Athalye et al. 2018): give gradient attacks a model whose gradients mean something.

A defense that puts a non-differentiable step in front of the network (quantization, a median filter, JPEG-like
compression, thresholding) or that draws random transformations at every pass makes its input gradients zero,
undefined or noisy: gradient attacks then fail and the robustness they report is false. Two wrappers make the
model an attack crafts on an honest one:

- :class:`BPDA` (backward pass differentiable approximation) wraps the non-differentiable step: its forward pass
  is exactly the step's, its backward pass is the identity (or the gradient of a differentiable approximation).
- :class:`ExpectationOverTransformation` (alias :class:`EoT`) averages the logits of several passes of a
  randomized model, so every gradient attack ascends the expected loss.

:func:`adaptive_model` builds either or both from the network and the step, so the adaptive attack is one
argument away. How to use them with an attack or with the
:class:`~monai_adv.engines.RobustnessEvaluator`:

- A deterministic, non-differentiable step (``defended = nn.Sequential(quantize, network)``): the adaptive model
  ``adaptive_model(network, preprocess=quantize)`` computes exactly what ``defended`` computes, so it can simply
  replace it: ``PGD(adaptive, eps=...)`` or ``RobustnessEvaluator(..., network=adaptive, ...)``. The forward
  passes are identical, so the scores, the attacks' success and the report (setting "white-box") are those of the
  defended model; only the gradients differ.
- A randomized model: an attack crafts on ``EoT(model, samples=k)`` while the model itself, one pass per sample,
  is what is scored: ``RobustnessEvaluator(..., network=model, surrogate=EoT(model, samples=k))``. The evaluator
  crafts every attack on the surrogate and scores the examples on ``network`` (the report's setting reads
  "transfer", and success is read from the scored outputs, not from the surrogate's). Used directly,
  ``APGD(model, eot_iter=k)`` and ``AutoAttack(model, version="rand")`` average the gradients of ``k`` passes
  themselves, with the memory of one pass.
- A randomized, non-differentiable defense: ``adaptive_model(network, preprocess=step, eot_samples=k)`` is
  ``EoT(nn.Sequential(BPDA(step), network), samples=k)``; use it as the surrogate as above.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["BPDA", "EoT", "ExpectationOverTransformation", "adaptive_model"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class _BackwardApproximation(torch.autograd.Function):
    """``transform(x)`` forward; backward: the identity, or the vector-Jacobian product of ``approximation``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, transform: Transform, approximation: Optional[Transform]) -> torch.Tensor:
        out = transform(x)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            found = type(out).__name__ if not isinstance(out, torch.Tensor) else out.dtype
            raise TypeError(f"BPDA's `forward` must return a floating-point tensor, got {found}.")
        if approximation is None and out.shape != x.shape:
            raise ValueError(
                f"BPDA's identity backward needs `forward` to keep the input's shape {tuple(x.shape)}, got "
                f"{tuple(out.shape)}: give a differentiable `backward` approximation of the same output shape."
            )
        ctx.approximation = approximation
        ctx.input_dtype = x.dtype
        if approximation is not None:
            ctx.save_for_backward(x)
        return out.clone() if out is x else out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        if ctx.approximation is None:
            return grad_output.to(ctx.input_dtype), None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            approx = ctx.approximation(leaf)
            if not isinstance(approx, torch.Tensor) or approx.shape != grad_output.shape:
                shape = tuple(approx.shape) if isinstance(approx, torch.Tensor) else type(approx).__name__
                raise ValueError(
                    f"BPDA's `backward` must return a tensor of the shape `forward` returns, "
                    f"{tuple(grad_output.shape)}, got {shape}."
                )
            (grad,) = torch.autograd.grad(approx, leaf, grad_output.to(approx.dtype), allow_unused=True)
        if grad is None:  # the approximation does not depend on its input: a zero gradient
            grad = torch.zeros_like(x)
        return grad.to(ctx.input_dtype), None, None


class BPDA(nn.Module):
    """Backward pass differentiable approximation of a non-differentiable step (Athalye et al. 2018).

    The forward pass returns exactly ``forward(x)`` (computed without recording a graph); the backward pass
    passes the incoming gradient through unchanged (the identity, for steps that approximate their input such
    as quantization, JPEG-like compression, median or bilateral filtering, purification), or, given
    ``backward``, through the gradient of that differentiable approximation at ``x`` (e.g. a soft
    quantization, or a smoothing filter for a median filter). Compose it in front of the network, so that an
    attack differentiates through the network and around the step::

        class Quantize(nn.Module):  # 8 levels: its gradient is zero everywhere
            def forward(self, x):
                return torch.round(x * 7) / 7

        defended = nn.Sequential(Quantize(), network)        # what is deployed and scored
        adaptive = nn.Sequential(BPDA(Quantize()), network)  # the same forward pass, useful gradients
        x_adv = PGD(adaptive, eps=8 / 255, steps=20)(x, y)

    Args:
        forward: the step, a callable ``x -> tensor`` (e.g. an ``nn.Module`` or a function); an ``nn.Module``
            is registered as a submodule, so the attacks' model guard runs it in eval mode and leaves it as found.
            Its output must be floating point, and of the input's shape unless ``backward`` is given.
        backward: None for the identity, or a differentiable callable ``x -> tensor`` with the output shape of
            ``forward`` whose gradient replaces the step's (an ``nn.Module`` is registered as well).
    """

    def __init__(self, forward: Transform, backward: Optional[Transform] = None) -> None:
        super().__init__()
        if not callable(forward):
            raise TypeError(f"`forward` must be a callable (a function or an nn.Module), got {type(forward).__name__}.")
        if backward is not None and not callable(backward):
            raise TypeError(f"`backward` must be None or a callable, got {type(backward).__name__}.")
        self.transform = forward
        self.approximation = backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``transform(x)``, whose gradient is the identity's or the approximation's."""
        return _BackwardApproximation.apply(x, self.transform, self.approximation)

    def extra_repr(self) -> str:
        backward = "identity" if self.approximation is None else _name(self.approximation)
        return f"forward={_name(self.transform)}, backward={backward}"


class ExpectationOverTransformation(nn.Module):
    """Expectation over transformation (Athalye et al. 2018): the mean output of ``samples`` passes of a
    randomized model, so any gradient attack crafted on it ascends the expected loss over the randomness.

    The forward pass runs the model ``samples`` times on the same input and returns the mean of the logits
    (``output="logits"``, the default, for every task), or the mean of the log-probabilities
    (``output="log_probs"``: ``log_softmax`` over the channel dimension; classification and segmentation with
    at least two channels), the expected log-likelihood whose cross-entropy is the mean cross-entropy of the passes.
    Either is used by the attacks as logits. The randomness is the model's own: seed PyTorch's generator
    (``torch.manual_seed``) for a reproducible run.

    Memory: the passes run one after the other and are summed, but autograd keeps the graph of every pass until
    the backward pass, so an attack on it holds ``samples`` times the activations of one pass. Lower the attack's
    ``max_batch`` to compensate, or use ``APGD(model, eot_iter=samples)``, which averages the gradients of one
    pass at a time (the same expectation, the memory of one pass).

    Args:
        model: the randomized model (an ``nn.Module``, registered as a submodule, or any callable returning
            logits).
        samples: passes averaged per forward call (>= 1).
        output: "logits" or "log_probs".

    Example::

        eot = EoT(noisy_model, samples=16)
        x_adv = PGD(eot, eps=8 / 255, steps=20)(x, y)  # craft on the expectation, then score on noisy_model
    """

    def __init__(self, model: Callable[..., torch.Tensor], samples: int = 10, output: str = "logits") -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning logits, got {type(model).__name__}.")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"`samples` must be an integer >= 1, got {samples!r}.")
        if output not in ("logits", "log_probs"):
            raise ValueError(f'`output` must be "logits" or "log_probs", got {output!r}.')
        self.model = model
        self.samples = samples
        self.output = output

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The mean output of ``samples`` passes of the model on ``x`` (extra arguments are passed on)."""
        total: Optional[torch.Tensor] = None
        for _ in range(self.samples):
            out = self.model(x, *args, **kwargs)
            if self.output == "log_probs":
                if out.ndim < 2 or out.shape[1] < 2:
                    raise ValueError(
                        f'EoT output="log_probs" needs logits (N, K>=2, ...), got {tuple(out.shape)}: use "logits".'
                    )
                out = torch.log_softmax(out, dim=1)
            total = out if total is None else total + out
        return total / self.samples

    def extra_repr(self) -> str:
        return f"samples={self.samples}, output={self.output!r}"


#: short name of :class:`ExpectationOverTransformation`
EoT = ExpectationOverTransformation


class _Preprocessed(nn.Module):
    """``model(preprocess(x))``; both registered as submodules when they are modules."""

    def __init__(self, preprocess: Transform, model: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(self.preprocess(x), *args, **kwargs)


def adaptive_model(
    model: Callable[..., torch.Tensor],
    preprocess: Optional[Transform] = None,
    backward: Optional[Transform] = None,
    eot_samples: int = 1,
    eot_output: str = "logits",
) -> Callable[..., torch.Tensor]:
    """The model an adaptive attack should craft on, for a defense made of a preprocessing step and a model.

    ``preprocess`` (a non-differentiable step the defense applies before ``model``) is wrapped in :class:`BPDA`
    (identity backward, or the gradient of ``backward``); with ``eot_samples`` > 1 the whole is wrapped in
    :class:`ExpectationOverTransformation`. Without either, ``model`` is returned as it is. Its forward pass
    equals the defense's ``model(preprocess(x))`` exactly when ``eot_samples`` is 1 (so it may replace the defense
    everywhere, scoring included); with EoT, craft on it and score on the defense (see the module's notes).

    Args:
        model: the network (or randomized model) the defense runs after its preprocessing step.
        preprocess: the defense's non-differentiable step, or None.
        backward: a differentiable approximation of ``preprocess`` for the backward pass; None for the identity.
        eot_samples: passes averaged per forward call (1: no averaging).
        eot_output: "logits" or "log_probs" (see :class:`ExpectationOverTransformation`).

    Example::

        defended = nn.Sequential(quantize, network)
        x_adv = APGD(adaptive_model(network, preprocess=quantize), eps=8 / 255)(x, y)
    """
    if not callable(model):
        raise TypeError(f"`model` must be an nn.Module or a callable returning logits, got {type(model).__name__}.")
    if backward is not None and preprocess is None:
        raise ValueError("`backward` approximates `preprocess`: give `preprocess` too.")
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"`eot_samples` must be an integer >= 1, got {eot_samples!r}.")
    crafted = model
    if preprocess is not None:
        crafted = _Preprocessed(BPDA(preprocess, backward), model)
    if eot_samples > 1:
        crafted = ExpectationOverTransformation(crafted, samples=eot_samples, output=eot_output)
    return crafted


def _name(function: Callable) -> str:
    if isinstance(function, nn.Module):
        return type(function).__name__
    return getattr(function, "__name__", type(function).__name__)
