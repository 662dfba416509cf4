# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""A MONAI ``SupervisedTrainer`` that trains with an adversarial training objective."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys as Keys
from torch import nn

from monai_adv.attacks import InfererModel, model_state_guard
from monai_adv.attacks.guard import model_dtype
from monai_adv.attacks.tasks import infer_task, predict, prepare_labels
from monai_adv.attacks.validation import check_int
from monai_adv.defenses import Defense, make_defense

__all__ = ["RobustTrainer", "NetworkCall"]


class NetworkCall(nn.Module):
    """A network called the way a MONAI engine calls it: ``inferer(x, network, *args, **kwargs)``, or
    ``network(x, *args, **kwargs)`` without an inferer, where ``args`` and ``kwargs`` are the extra arguments
    the engine's ``prepare_batch`` returned with the batch (``batch[2]``, ``batch[3]``).

    It is a module holding the network, so an attack guards the network through it (eval mode, frozen, left as
    found) and gradients flow through the inferer.

    Args:
        network: the network.
        inferer: a callable ``inferer(inputs, network, *args, **kwargs)`` (e.g. a ``monai.inferers.Inferer``),
            or None to call the network directly.
        args: extra positional arguments of every call.
        kwargs: extra keyword arguments of every call.
    """

    def __init__(
        self,
        network: Callable,
        inferer: Optional[Callable] = None,
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if inferer is not None and not callable(inferer):
            raise TypeError(f"`inferer` must be callable as inferer(inputs, network), got {type(inferer).__name__}.")
        self.network = network
        self.inferer = inferer
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inferer is None:
            return self.network(x, *self.args, **self.kwargs)
        return self.inferer(x, self.network, *self.args, **self.kwargs)


def _batch_accuracy(logits: Optional[torch.Tensor], targets: torch.Tensor, task: str = "auto") -> Optional[float]:
    """Accuracy of a classification (exact match for multi-label) batch with the shared prediction rule
    (:func:`monai_adv.attacks.tasks.predict`); None for other outputs."""
    if logits is None or logits.ndim != 2:
        return None
    with torch.no_grad():
        logits = logits.detach().as_subclass(torch.Tensor)
        targets = torch.as_tensor(targets).detach().as_subclass(torch.Tensor).to(logits.device)
        task = infer_task(task, logits, targets)
        labels = prepare_labels(task, targets, logits, "targets")
        correct = predict(task, logits) == labels
        if task == "multilabel":
            correct = correct.all(dim=1)
        return float(correct.float().mean())


class RobustTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration minimizes an adversarial training objective.

    It takes every argument of MONAI's ``SupervisedTrainer`` plus ``defense`` (a
    :class:`~monai_adv.defenses.Defense` or a name for :func:`~monai_adv.defenses.make_defense`), fires MONAI's
    ``IterationEvents`` (FORWARD_COMPLETED, LOSS_COMPLETED, BACKWARD_COMPLETED, MODEL_COMPLETED), supports
    ``amp=True``, and puts into ``engine.state.output``, next to the usual image/label/pred/loss, the batch
    accuracy on clean inputs (``"clean_accuracy"``) and on the defense's adversarial inputs
    (``"adversarial_accuracy"``) for classification tasks. ``pred`` holds the logits the loss was computed on
    (the adversarial ones for PGD-AT). A defense whose outputs hold more entries than ``"clean"`` and
    ``"adversarial"`` (loss terms, e.g. ``{"kl": ...}``) gets them into the output as ``"loss_<term>"`` (detached);
    :func:`monai_adv.handlers.training_metrics` and :func:`monai_adv.handlers.iteration_scalars` log them, with the
    accuracies and the loss, through MONAI's ``TensorBoardStatsHandler`` and ``MLFlowHandler`` (see
    ``docs/tracking.md``). ``loss_function`` is not used by the defense (the defense owns its loss)
    and may be None. The clean accuracy comes free with the defenses that evaluate the clean batch (NAT, TRADES,
    MART, HAT); PGD-AT and fast-AT never do, and report it (instead of None) only with ``clean_accuracy=True``,
    for one more forward pass without gradients per iteration.

    The network is called the way ``SupervisedTrainer`` calls it: through ``inferer`` (gradients of the
    training attack flow through it, e.g. a ``SlidingWindowInferer``), with the extra ``(args, kwargs)`` that
    ``prepare_batch`` may return as ``batch[2]`` and ``batch[3]`` (``inferer(x, network, *args, **kwargs)``),
    both in the defense's training attack and in its loss.

    A defense whose ``replays`` is m > 1 (free adversarial training, :class:`~monai_adv.defenses.FreeAT`) trains
    on each batch m times in a row: each replay is one call of the defense, one backward pass, a call of the
    defense's ``after_backward()`` hook (where FreeAT updates its input perturbation from that backward pass) and
    one optimizer step (through the grad scaler with ``amp=True``). Each replay is then an inner iteration, as in
    MONAI's interactive trainers: it fires ``INNER_ITERATION_STARTED``, FORWARD_COMPLETED, LOSS_COMPLETED,
    BACKWARD_COMPLETED, MODEL_COMPLETED and ``INNER_ITERATION_COMPLETED`` (each m times per iteration;
    ``Events.ITERATION_COMPLETED`` once), each replay's ``engine.state.output`` is a new dict, and the iteration
    ends with the last replay's. Every replay of an iteration gets the same ``seed``; with ``clean_accuracy=True``
    each replay runs its own clean pass. ``max_epochs`` counts passes over the data, not optimizer steps: divide
    it by m for the cost of ``max_epochs`` epochs of another defense.

    ``seed`` (an int) makes the defense's own random draws (the training attack's random start) a function of
    ``seed`` and the iteration count, so a run killed and resumed from MONAI's ``CheckpointLoader`` (saving the
    network, the optimizer and the trainer, whose state holds the iteration count) ends with the same weights as
    the uninterrupted run. The data order and dropout stay the loader's and the network's: use a seeded sampler
    (or ``shuffle=False``) and a network without dropout for bit-identical resumption. ``seed=None`` draws from
    PyTorch's global generator.

    Example (``default_device`` from ``monai_adv.devices``: ``cuda`` when available, else ``cpu``)::

        trainer = RobustTrainer(device=default_device(), max_epochs=10, train_data_loader=loader, network=net,
                                optimizer=opt, loss_function=None, defense="pgd_at",
                                defense_kwargs={"eps": 8 / 255})
        trainer.run()
    """

    def __init__(
        self,
        *args: Any,
        defense: Union[str, Defense] = "pgd_at",
        defense_kwargs: Optional[Dict[str, Any]] = None,
        loss_function: Optional[Any] = None,
        clean_accuracy: bool = False,
        seed: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}.")
        self.seed = seed
        if isinstance(defense, str):
            defense = make_defense(defense, **(defense_kwargs or {}))
        elif not isinstance(defense, Defense):
            raise TypeError(f"`defense` must be a Defense or a defense name, got {type(defense).__name__}.")
        elif defense_kwargs:
            raise ValueError("`defense_kwargs` only applies when `defense` is a name.")
        self.defense = defense
        self.clean_accuracy = bool(clean_accuracy)
        super().__init__(*args, loss_function=loss_function or torch.nn.CrossEntropyLoss(), **kwargs)

    def _model(self, engine: RobustTrainer, args: Sequence[Any] = (), kwargs: Optional[Mapping] = None) -> Any:
        """The network the defense trains and attacks: called through the inferer with the batch's extra
        arguments, as ``SupervisedTrainer`` calls it."""
        plain = engine.inferer is None or type(engine.inferer) is SimpleInferer
        if args or kwargs:
            return NetworkCall(engine.network, None if plain else engine.inferer, args, kwargs)
        return engine.network if plain else InfererModel(engine.network, engine.inferer)

    def _iteration_seed(self, engine: RobustTrainer) -> Optional[int]:
        """The seed of this iteration's attack: a function of ``seed`` and the iteration count only, so a run
        resumed from a checkpoint (which restores the iteration count) draws what the uninterrupted run drew."""
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + int(engine.state.iteration)) % (2**31 - 1)

    def _iteration(self, engine: RobustTrainer, batchdata: Dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        model = self._model(engine, args, kwargs)
        replays = check_int(engine.defense.replays, "replays")
        engine.network.train()
        for _ in range(replays):
            if replays > 1:
                engine.fire_event(IterationEvents.INNER_ITERATION_STARTED)
            self._replay(engine, model, inputs, targets)
            if replays > 1:
                engine.fire_event(IterationEvents.INNER_ITERATION_COMPLETED)
        return engine.state.output

    def _replay(self, engine: RobustTrainer, model: Callable, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One loss, backward pass and optimizer step on the batch, with the IterationEvents and the outputs."""
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        def _compute_loss():
            loss, outputs = engine.defense(model, inputs, targets, seed=self._iteration_seed(engine))
            engine.state.output[Keys.PRED] = (
                outputs["adversarial"] if outputs["adversarial"] is not None else outputs["clean"]
            )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return outputs

        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                outputs = _compute_loss()
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.defense.after_backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            outputs = _compute_loss()
            engine.state.output[Keys.LOSS].backward()
            engine.defense.after_backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        clean = outputs["clean"]
        if clean is None and inputs.ndim >= 3 and engine.clean_accuracy:
            with model_state_guard(model) as view, torch.inference_mode():
                clean = view(inputs.to(model_dtype(model) or inputs.dtype))  # the network's dtype, as the defense
        task = getattr(engine.defense, "task", "auto")
        engine.state.output["clean_accuracy"] = None if clean is None else _batch_accuracy(clean, targets, task)
        engine.state.output["adversarial_accuracy"] = _batch_accuracy(outputs["adversarial"], targets, task)
        for term, value in outputs.items():  # loss terms the defense reports, e.g. {"kl": ...} -> "loss_kl"
            if term not in ("clean", "adversarial") and value is not None:
                engine.state.output[f"loss_{term}"] = value.detach() if isinstance(value, torch.Tensor) else value
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
