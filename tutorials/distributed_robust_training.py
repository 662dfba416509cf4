# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""PGD adversarial training with DDP under torchrun (gloo on CPU, NCCL on GPU).

Run from the repository root::

    torchrun --nproc_per_node=2 -m tutorials.distributed_robust_training --out /tmp/robust_ddp

Each rank trains on its shard of the demo data (``DistributedSampler``); the attack runs on the module inside
DDP, and the update goes through DDP, so gradients are averaged and every rank ends with the same weights.
Each rank writes its final weights to ``--out/rank{r}.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import DataLoader
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from monai_adv.benchmark.io import save_state_dict_atomic
from monai_adv.data import BrainLesionDataset
from monai_adv.distributed import RunContext, distributed_run
from monai_adv.engines import RobustTrainer
from tests.models import TinyClassifier


def train(args: argparse.Namespace, run: RunContext) -> None:
    """Train on this rank's shard and write this rank's final weights."""
    device = run.device
    torch.manual_seed(0)  # the same initial weights on every rank
    data = BrainLesionDataset("train", "classification", 2, num_samples=args.samples, image_size=32)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    cuda = device.type == "cuda"
    net = DistributedDataParallel(TinyClassifier(2, 1, 2).to(device), device_ids=[device.index] if cuda else None)
    trainer = RobustTrainer(
        device=device,
        max_epochs=args.epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.05),
        defense="pgd_at",
        defense_kwargs={"eps": 2 / 255, "steps": 3},
    )
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: sampler.set_epoch(engine.state.epoch))
    trainer.run()
    # DDP keeps the parameters equal and copies rank 0's buffers (BatchNorm statistics) to every rank at each
    # forward pass, so after the last training step the model is rank 0's: copy its buffers once more
    for buffer in net.module.buffers():
        dist.broadcast(buffer, src=0)
    save_state_dict_atomic(args.out / f"rank{run.rank}.pt", net.module.state_dict())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    # the group ends only after every rank finished and the trainer and DDP wrapper of train() are freed
    with distributed_run("cuda" if torch.cuda.is_available() else "cpu") as run:
        train(args, run)


if __name__ == "__main__":
    main()
