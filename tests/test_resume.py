# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""A RobustTrainer run stopped mid-way resumes from MONAI's CheckpointLoader at the saved epoch and optimizer state."""

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_adv.data import BrainLesionDataset
from monai_adv.engines import RobustTrainer
from tests.models import TinyClassifier


def _trainer(loader, max_epochs):
    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 2)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        defense="pgd_at",
        defense_kwargs={"eps": 2 / 255, "steps": 2},
    )
    return trainer, net, opt


def test_resume_from_checkpoint(tmp_path):
    loader = DataLoader(BrainLesionDataset("train", "classification", 2, num_samples=32, image_size=32), batch_size=16)
    first, net, opt = _trainer(loader, max_epochs=3)
    CheckpointSaver(str(tmp_path), {"net": net, "opt": opt, "trainer": first}, save_interval=1).attach(first)
    first.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())  # "stopped mid-way"
    first.run()
    assert first.state.epoch == 2
    checkpoint = tmp_path / "checkpoint_epoch=2.pt"
    assert checkpoint.exists()
    saved = torch.load(checkpoint, weights_only=False)

    second, net2, opt2 = _trainer(loader, max_epochs=3)
    CheckpointLoader(str(checkpoint), {"net": net2, "opt": opt2, "trainer": second}).attach(second)
    epochs = []
    second.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    loaded = {}

    def capture(engine):
        loaded["net"] = {k: v.clone() for k, v in net2.state_dict().items()}
        loaded["opt_state"] = {
            k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)} for k, v in opt2.state_dict()["state"].items()
        }

    second.add_event_handler(Events.EPOCH_STARTED(once=3), capture)
    second.run()
    assert epochs == [3] and second.state.epoch == 3, "resumed at the saved epoch and ran the remaining one"
    for key, value in saved["net"].items():
        torch.testing.assert_close(loaded["net"][key], value, rtol=0, atol=0)
    for index, state in saved["opt"]["state"].items():
        for name, tensor in state.items():
            if torch.is_tensor(tensor):
                torch.testing.assert_close(loaded["opt_state"][index][name], tensor, rtol=0, atol=0)
