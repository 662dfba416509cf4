# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""AdversarialBatchHandler in existing MONAI pipelines: trainer, evaluator, ValidationHandler, CheckpointSaver."""

import logging

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, StatsHandler, ValidationHandler
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.losses import DiceCELoss

from monai_adv.attacks import PGD
from monai_adv.data import BrainLesionDataset
from monai_adv.handlers import AdversarialBatchHandler
from tests.models import TinyClassifier, TinySegmenter

PGD_KWARGS = {"eps": 4 / 255, "steps": 3, "random_start": False}


def _batched(out):
    return out["pred"], out["label"]


@pytest.fixture(scope="module")
def loaders():
    train = BrainLesionDataset("train", "classification", 2, num_samples=48, image_size=32)
    val = BrainLesionDataset("val", "classification", 2, num_samples=32, image_size=32)
    return DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=16)


def test_composes_with_stats_validation_and_checkpoint_handlers(loaders, tmp_path, caplog):
    train_loader, val_loader = loaders
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 2)
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=val_loader,
        network=net,
        decollate=False,
        key_val_metric={"robust_acc": Accuracy(output_transform=_batched)},
        val_handlers=[
            AdversarialBatchHandler("pgd", PGD_KWARGS),  # the evaluator's metric becomes robust accuracy
            CheckpointSaver(str(tmp_path), {"net": net}, save_key_metric=True, key_metric_name="robust_acc"),
        ],
    )
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=train_loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=[
            AdversarialBatchHandler("fgsm", {"eps": 4 / 255, "random_start": True, "alpha": 5 / 255}, ratio=0.5),
            ValidationHandler(validator=evaluator, interval=1),
            StatsHandler(name="robust_training", output_transform=lambda out: out[0]["loss"]),
        ],
    )
    with caplog.at_level(logging.INFO, logger="robust_training"):
        trainer.run()
    assert trainer.state.epoch == 2
    assert any(p.name.startswith("net_key_metric=") for p in tmp_path.iterdir()), "the best robust model is saved"
    # the evaluator's key metric is exactly the accuracy under the same (deterministic) attack
    net.eval()
    x = torch.cat([b["image"].as_tensor() for b in val_loader])
    y = torch.cat([b["label"] for b in val_loader])
    x_adv = PGD(net, early_stop=False, **PGD_KWARGS)(x, y)
    with torch.no_grad():
        expected = float((net(x_adv).argmax(1) == y).float().mean())
    assert evaluator.state.metrics["robust_acc"] == pytest.approx(expected)


def _frozen_trainer(loader, net, epoch_length=1):
    """A classification trainer whose optimizer does not move the weights (learning rate 0)."""
    return SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=epoch_length,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.0),
        loss_function=torch.nn.CrossEntropyLoss(),
    )


def test_ratio_replaces_part_of_the_batch(loaders):
    train_loader, _ = loaders
    net = TinyClassifier(2, 1, 2)
    seen = []
    trainer = _frozen_trainer(train_loader, net)
    handler = AdversarialBatchHandler("pgd", PGD_KWARGS, ratio=0.25)
    originals = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: originals.append(e.state.batch["image"].clone()))
    handler.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.batch["image"].clone()))
    trainer.run()
    changed = (seen[0] != originals[0]).flatten(1).any(dim=1)
    assert int(changed.sum()) == 4 and (seen[0] - originals[0]).abs().max() <= 4 / 255 + 1e-7


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"`ratio` must be in \(0, 1\]"):
        AdversarialBatchHandler(ratio=0.0)
    with pytest.raises(ValueError, match="`name` must be one of"):
        AdversarialBatchHandler("deepfool")
    with pytest.raises(TypeError, match="`attack` must be an attack name"):
        AdversarialBatchHandler(3)
    with pytest.raises(TypeError, match="`attack_kwargs` must be a dict"):
        AdversarialBatchHandler("pgd", attack_kwargs=[("eps", 0.1)])
    with pytest.raises(ValueError, match="`attack_kwargs` only applies when `attack` is a name"):
        AdversarialBatchHandler(PGD(TinyClassifier(2, 1, 2)), attack_kwargs={"eps": 0.1})
    # a conflicting or unknown attack argument is an error at construction, not at the first iteration
    with pytest.raises(ValueError, match="`attack_kwargs` must not hold `model`"):
        AdversarialBatchHandler("pgd", attack_kwargs={"eps": 0.1, "model": TinyClassifier(2, 1, 2)})
    with pytest.raises(TypeError, match=r"takes no argument\(s\) \['bogus'\]"):
        AdversarialBatchHandler("pgd", attack_kwargs={"eps": 0.1, "bogus": 1})
    with pytest.raises(TypeError, match="`seed` must be an int"):
        AdversarialBatchHandler("pgd", attack_kwargs={"eps": 0.1, "seed": "0"})


def _one_iteration_batch(loaders, handler):
    train_loader, _ = loaders
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 2)
    torch.manual_seed(torch.seed() % 1000)  # a different global state each run: only the handler's seed counts
    trainer = _frozen_trainer(DataLoader(train_loader.dataset, batch_size=16), net, epoch_length=2)
    handler.attach(trainer)
    seen = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.batch["image"].clone()))
    trainer.run()
    return seen


def test_a_seed_in_attack_kwargs_is_the_users_and_varies_by_iteration(loaders):
    kwargs = {**PGD_KWARGS, "random_start": True, "seed": 5}
    first = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", kwargs))
    torch.manual_seed(99)  # the global generator does not matter with a seed
    again = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", kwargs))
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, again))
    other = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", {**kwargs, "seed": 6}))
    assert not torch.equal(first[0], other[0])


def test_a_seed_in_attack_kwargs_also_fixes_the_samples_a_ratio_chooses(loaders):
    kwargs = {**PGD_KWARGS, "random_start": True, "seed": 5}
    first = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", kwargs, ratio=0.5))
    for _ in range(3):  # the global generator differs between these runs
        again = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", kwargs, ratio=0.5))
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_built_from_a_bundle_config():
    from monai.bundle import ConfigParser

    config = {
        "handlers": [
            {
                "_target_": "monai_adv.handlers.AdversarialBatchHandler",
                "attack": "pgd",
                "attack_kwargs": {"eps": 0.0078, "steps": 10},
                "ratio": 0.5,
            }
        ]
    }
    parser = ConfigParser(config)
    handler = parser.get_parsed_content("handlers")[0]
    assert isinstance(handler, AdversarialBatchHandler) and handler.ratio == 0.5
    assert handler.attack_kwargs["eps"] == 0.0078


def _segmentation_trainer(network, inferer):
    data = BrainLesionDataset("train", "segmentation", 2, num_samples=4, image_size=32)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=4),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), 0.0),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        inferer=inferer,
    )
    batch = next(iter(trainer.data_loader))
    trainer.state.batch, trainer.state.iteration = {"image": batch["image"], "label": batch["label"]}, 1
    return trainer, batch


def _window_shapes(network):
    shapes = []
    network.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape[2:])))
    return shapes


@pytest.mark.parametrize("given_network", [False, True])
def test_attacks_through_the_engines_inferer(given_network):
    torch.manual_seed(0)
    net, other = TinySegmenter(2, 1, 2), TinySegmenter(2, 1, 2)
    inferer = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2)
    trainer, batch = _segmentation_trainer(net, inferer)
    attacked = other if given_network else net
    shapes = _window_shapes(attacked)
    handler = AdversarialBatchHandler("pgd", {**PGD_KWARGS, "loss": "dice"}, network=other if given_network else None)
    handler(trainer)
    # the attack ran the network on the inferer's 16x16 windows of the 32x32 images, never on a whole image
    assert shapes and set(shapes) == {(16, 16)}
    delta = trainer.state.batch["image"] - batch["image"]
    assert delta.abs().max() <= 4 / 255 + 1e-7 and bool((delta != 0).any())
    # the same trainer with a plain SimpleInferer: the attack sees the whole images
    plain, _ = _segmentation_trainer(attacked, SimpleInferer())
    shapes.clear()
    AdversarialBatchHandler("pgd", {**PGD_KWARGS, "loss": "dice"})(plain)
    assert set(shapes) == {(32, 32)}


def test_set_random_state_fixes_the_chosen_samples_and_the_attack_seed(loaders):
    kwargs = {**PGD_KWARGS, "random_start": True}
    handler = AdversarialBatchHandler("pgd", kwargs, ratio=0.5)
    assert handler.set_random_state(seed=7) is handler
    first = _one_iteration_batch(loaders, handler)
    torch.manual_seed(123)  # the global generator does not matter once the handler is seeded
    again = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", kwargs, ratio=0.5).set_random_state(seed=7))
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, again))
    other = _one_iteration_batch(loaders, AdversarialBatchHandler("pgd", kwargs, ratio=0.5).set_random_state(seed=8))
    assert not torch.equal(first[0], other[0])


def test_default_random_state_follows_the_global_seed_at_construction():
    torch.manual_seed(3)
    a = AdversarialBatchHandler("pgd", PGD_KWARGS)
    torch.manual_seed(3)
    b = AdversarialBatchHandler("pgd", PGD_KWARGS)
    c = AdversarialBatchHandler("pgd", PGD_KWARGS)
    draws = [h.R.randint(2**31 - 1, size=4).tolist() for h in (a, b, c)]
    assert draws[0] == draws[1] != draws[2]


def test_an_attack_instance_is_copied_and_left_unchanged(loaders):
    net = TinyClassifier(2, 1, 2)
    attack = PGD(net, eps=4 / 255, steps=2, seed=None)
    handler = AdversarialBatchHandler(attack).set_random_state(seed=0)
    first = _one_iteration_batch(loaders, handler)
    assert attack.model is net and attack.seed is None
    again = _one_iteration_batch(loaders, AdversarialBatchHandler(attack).set_random_state(seed=0))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


class _CountingHandler(AdversarialBatchHandler):
    calls = 0

    def __call__(self, engine):
        self.calls += 1
        super().__call__(engine)


def test_attaching_twice_attacks_once(loaders):
    train_loader, _ = loaders
    net = TinyClassifier(2, 1, 2)
    trainer = _frozen_trainer(train_loader, net)
    handler = _CountingHandler("fgsm", {"eps": 4 / 255})
    handler.attach(trainer)
    handler.attach(trainer)
    assert trainer.has_event_handler(handler, Events.ITERATION_STARTED)
    trainer.run()
    assert handler.calls == 1


def test_autoattack_by_name_turns_an_evaluator_robust(loaders):
    _, val_loader = loaders
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 2).eval()
    runs = {}
    aa = AdversarialBatchHandler("autoattack", {"eps": 8 / 255, "steps": 2, "queries": 10, "check": False})
    for name, handlers in (("robust", [aa]), ("clean", [])):
        runs[name] = SupervisedEvaluator(
            device="cpu",
            val_data_loader=val_loader,
            network=net,
            epoch_length=1,
            decollate=False,
            key_val_metric={"acc": Accuracy(output_transform=_batched)},
            val_handlers=handlers,
        )
        runs[name].run()
    assert runs["robust"].state.metrics["acc"] <= runs["clean"].state.metrics["acc"]
    batch = runs["robust"].state.batch
    assert (batch["image"] - next(iter(val_loader))["image"]).abs().max() <= 8 / 255 + 1e-6
