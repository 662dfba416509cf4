# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""How hard the embedded demo data is: a small MONAI network trained a few epochs on CPU, per task.

Usage (from the repository root)::

    python -m benchmarks.demo_data_difficulty            # 2D, all tasks, 10 epochs
    python -m benchmarks.demo_data_difficulty --tiny     # a smoke run

Classification tasks train a small MONAI ``ResNet`` (one basic block per stage, widths 16-128) and report test
accuracy (exact-match accuracy for multi-label); segmentation trains a small MONAI ``UNet`` and reports the
test Dice of the lesion. Prints a table and writes JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from monai.data import DataLoader
from monai.losses import DiceCELoss
from monai.networks.nets import ResNet, UNet

from monai_adv.attacks.tasks import hard_dice
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.data import BrainLesionDataset

CLASSES = {"classification": 2, "multiclass": 3, "multilabel": 2, "segmentation": 2}


def _network(task: str, dims: int) -> torch.nn.Module:
    if task == "segmentation":
        return UNet(dims, 1, 2, channels=(16, 32, 64), strides=(2, 2), num_res_units=1)
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [16, 32, 64, 128],
        spatial_dims=dims,
        n_input_channels=1,
        num_classes=CLASSES[task],
        conv1_t_stride=1,
        no_max_pool=True,
    )


def _loss(task: str, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    if task == "multilabel":
        return torch.nn.functional.binary_cross_entropy_with_logits(out, label)
    if task == "segmentation":
        return DiceCELoss(to_onehot_y=True, softmax=True)(out, label)
    return torch.nn.functional.cross_entropy(out, label)


def _score(task: str, net: torch.nn.Module, data: BrainLesionDataset) -> float:
    net.eval()
    x = torch.stack([s["image"] for s in data])
    y = torch.stack([s["label"] for s in data])
    with torch.no_grad():
        out = torch.cat([net(x[i : i + 64]) for i in range(0, x.shape[0], 64)])
    if task == "multilabel":
        return float(((out > 0).float() == y).all(dim=1).float().mean())
    if task == "segmentation":
        has_lesion = y.flatten(1).amax(dim=1) > 0
        dice = hard_dice(out.argmax(1), y[:, 0].long(), 2)
        return float(dice[has_lesion].mean())
    return float((out.argmax(1) == y).float().mean())


def train_and_score(task: str, dims: int, epochs: int, samples: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    train = BrainLesionDataset("train", task, dims, num_samples=samples)
    test = BrainLesionDataset("test", task, dims)
    net = _network(task, dims)
    steps = epochs * ((len(train) + 31) // 32)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    loader = DataLoader(train, batch_size=32, shuffle=True, num_workers=0)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for batch in loader:
            opt.zero_grad()
            _loss(task, net(batch["image"]), batch["label"]).backward()
            opt.step()
            schedule.step()
    metric = "test Dice (lesion)" if task == "segmentation" else "test accuracy"
    return {"metric": metric, "value": _score(task, net, test), "train_seconds": time.perf_counter() - start}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tasks", nargs="+", default=list(CLASSES))
    parser.add_argument("--tiny", action="store_true", help="a quick smoke run (64 samples, 1 epoch)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_data_difficulty.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    samples = 64 if args.tiny else None
    epochs = 1 if args.tiny else args.epochs
    results = {task: train_and_score(task, args.dims, epochs, samples) for task in args.tasks}
    print(f"demo data, {args.dims}D, {epochs} epochs on CPU")
    for task, row in results.items():
        print(f"{task:<16}{row['metric']:<20}{row['value']:.4f}   ({row['train_seconds']:.0f} s)")
    write_json_atomic(args.out, {"dims": args.dims, "epochs": epochs, "results": results})
    return results


if __name__ == "__main__":
    main()
