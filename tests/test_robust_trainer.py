# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""RobustTrainer: a SupervisedTrainer with an adversarial training objective."""

import pytest
import torch
from monai.data import DataLoader
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_adv.data import BrainLesionDataset
from monai_adv.defenses import make_defense
from monai_adv.engines import RobustTrainer
from monai_adv.engines.robust_trainer import _batch_accuracy
from tests.models import TinyClassifier, TinySegmenter


@pytest.fixture(scope="module")
def loader():
    return DataLoader(BrainLesionDataset("train", "classification", 2, num_samples=64, image_size=32), batch_size=16)


@pytest.mark.parametrize("defense", ["pgd_at", "trades"])
def test_two_epoch_run_fires_events_and_reports_accuracies(loader, defense):
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 2)
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        defense=defense,
        defense_kwargs={"eps": 2 / 255, "steps": 3},
        clean_accuracy=True,
    )
    fired = []
    for event in IterationEvents:
        trainer.add_event_handler(event, lambda engine, e=event: fired.append(e))
    losses = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.iteration == 8
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    expected = {
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    }
    assert set(fired) == expected and fired.count(IterationEvents.MODEL_COMPLETED) == 8
    out = trainer.state.output[0]  # decollated per sample, as MONAI's handlers expect
    assert 0.0 <= out["clean_accuracy"] <= 1.0 and 0.0 <= out["adversarial_accuracy"] <= 1.0
    assert out["pred"].shape == (2,) and len(trainer.state.output) == 16
    assert net.training


def test_accepts_a_defense_instance_and_amp_flag(loader):
    net = TinyClassifier(2, 1, 2)
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.1),
        defense=make_defense("fast_at", eps=2 / 255),
        amp=True,
    )
    trainer.run()
    assert trainer.state.iteration == 4 and trainer.state.output[0]["adversarial_accuracy"] is not None


def test_bad_defense_arguments(loader):
    net = TinyClassifier(2, 1, 2)
    common = {
        "device": "cpu",
        "max_epochs": 1,
        "train_data_loader": loader,
        "network": net,
        "optimizer": torch.optim.SGD(net.parameters(), 0.1),
    }
    with pytest.raises(ValueError, match="`name` must be one of"):
        RobustTrainer(**common, defense="bogus")
    with pytest.raises(TypeError, match="`defense` must be a Defense"):
        RobustTrainer(**common, defense=42)
    with pytest.raises(ValueError, match="`defense_kwargs` only applies"):
        RobustTrainer(**common, defense=make_defense("nat"), defense_kwargs={"eps": 0.1})


@pytest.mark.parametrize("clean_accuracy,passes", [(True, 3), (False, 2)])
def test_fast_at_iteration_costs_two_passes_without_clean_monitoring(loader, clean_accuracy, passes):
    """fast-AT: one pass at the random start for the FGSM gradient, one training pass, and the clean pass only
    when the clean accuracy is monitored."""
    from tests.models import CallCounter

    torch.manual_seed(0)
    net = CallCounter(TinyClassifier(2, 1, 2))
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 1e-2),
        defense="fast_at",
        defense_kwargs={"eps": 4 / 255},
        clean_accuracy=clean_accuracy,
    )
    trainer.run()
    assert net.calls == passes * len(loader)
    out = trainer.state.output[0]
    assert (out["clean_accuracy"] is not None) == clean_accuracy
    assert 0.0 <= out["adversarial_accuracy"] <= 1.0


def _seeded_trainer(loader, net, max_epochs, defense):
    return RobustTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.05, momentum=0.9),
        defense=defense,
        defense_kwargs={"eps": 4 / 255} if defense == "fast_at" else {"eps": 4 / 255, "steps": 2},
        seed=3,
    )


@pytest.mark.parametrize("defense", ["pgd_at", "fast_at", "trades"])
def test_seeded_training_resumed_from_a_checkpoint_reaches_the_same_weights(loader, defense, tmp_path):
    from monai.handlers import CheckpointLoader, CheckpointSaver

    torch.manual_seed(0)
    initial = TinyClassifier(2, 1, 2).state_dict()

    def fresh():
        net = TinyClassifier(2, 1, 2)
        net.load_state_dict(initial)
        return net

    whole = fresh()
    _seeded_trainer(loader, whole, 2, defense).run()

    first = fresh()
    trainer = _seeded_trainer(loader, first, 1, defense)
    CheckpointSaver(
        str(tmp_path), {"net": first, "opt": trainer.optimizer, "trainer": trainer}, save_final=True
    ).attach(trainer)
    trainer.run()
    (checkpoint,) = tmp_path.glob("*.pt")
    torch.manual_seed(123)  # the global generator is elsewhere after a restart: the run must not depend on it
    second = fresh()
    resumed = _seeded_trainer(loader, second, 2, defense)
    objects = {"net": second, "opt": resumed.optimizer, "trainer": resumed}
    CheckpointLoader(str(checkpoint), objects).attach(resumed)
    resumed.run()
    assert resumed.state.epoch == 2
    for (name, a), b in zip(whole.state_dict().items(), second.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_bad_seed_is_rejected(loader):
    with pytest.raises(TypeError, match="`seed` must be an int"):
        RobustTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=loader,
            network=TinyClassifier(2, 1, 2),
            optimizer=None,
            seed="0",
        )


def test_a_seed_in_defense_kwargs_points_to_the_trainers_seed(loader):
    net = TinyClassifier(2, 1, 2)
    with pytest.raises(TypeError, match=r"RobustTrainer\(seed=\.\.\.\)"):
        RobustTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=loader,
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), 0.1),
            defense="pgd_at",
            defense_kwargs={"eps": 4 / 255, "seed": 0},
        )


@pytest.mark.parametrize("defense", ["pgd_at", "trades"])
def test_a_float64_batch_trains_a_float32_network_with_clean_monitoring(defense):
    torch.manual_seed(0)
    batches = [{"image": torch.rand(1, 8, 8, dtype=torch.float64), "label": i % 2} for i in range(8)]
    net = TinyClassifier(2, 1, 2)
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(batches, batch_size=4),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.1),
        defense=defense,
        defense_kwargs={"eps": 2 / 255, "steps": 1},
        clean_accuracy=True,
    )
    trainer.run()
    out = trainer.state.output[0]
    assert 0.0 <= out["clean_accuracy"] <= 1.0 and 0.0 <= out["adversarial_accuracy"] <= 1.0
    assert all(p.dtype == torch.float32 for p in net.parameters())


class _ShiftScale(nn.Module):
    """A network that needs an extra positional and keyword argument: ``net(x, shift, scale=...)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x, shift, scale):
        self.seen.append((tuple(x.shape[2:]), float(shift), float(scale)))
        return self.net(x + shift) * scale


def _prepare_with_extra_arguments(batchdata, device=None, non_blocking=False, **kwargs):
    image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return image, label, (0.0,), {"scale": 2.0}


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_extra_arguments_of_prepare_batch_reach_the_network(task):
    """As in SupervisedTrainer._iteration, batch[2] and batch[3] are passed on to the network (through the
    inferer), in the training attack, the loss and the clean monitoring pass."""
    torch.manual_seed(0)
    data = BrainLesionDataset("train", task, 2, num_samples=4, image_size=32)
    segmentation = task == "segmentation"
    net = _ShiftScale(TinySegmenter(2, 1, 2) if segmentation else TinyClassifier(2, 1, 2))
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=4),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 1e-2),
        defense="pgd_at" if segmentation else "trades",
        defense_kwargs={"eps": 2 / 255, "steps": 1},
        prepare_batch=_prepare_with_extra_arguments,
        inferer=SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=4) if segmentation else None,
        clean_accuracy=True,
    )
    trainer.run()
    assert trainer.state.iteration == 1
    assert net.seen and {(shift, scale) for _, shift, scale in net.seen} == {(0.0, 2.0)}
    if segmentation:  # every call went through the inferer's windows
        assert {shape for shape, *_ in net.seen} == {(16, 16)}
    else:
        out = trainer.state.output[0]
        assert 0.0 <= out["clean_accuracy"] <= 1.0 and 0.0 <= out["adversarial_accuracy"] <= 1.0


def test_batch_accuracy_uses_the_shared_prediction_rule():
    # a single logit is class 1 when > 0 (a zero logit is class 0)
    assert _batch_accuracy(torch.tensor([[0.5], [-0.2], [0.0]]), torch.tensor([1, 0, 1])) == pytest.approx(2 / 3)
    # class logits: argmax; labels given as (N, 1) are class indices
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0]])
    assert _batch_accuracy(logits, torch.tensor([[1], [1]])) == pytest.approx(0.5)
    # multi-label: every label right (logit > 0)
    multi = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert _batch_accuracy(multi, torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)
    assert _batch_accuracy(torch.zeros(2, 2, 4, 4), torch.zeros(2, 1, 4, 4)) is None
