# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial training on the demo data: NAT, PGD-AT, fast-AT, TRADES, MART and HAT with the same CPU budget.

Usage (from the repository root)::

    python -m benchmarks.defense_evidence            # binary lesion task, 32x32 slices, train at eps 8/255
    python -m benchmarks.defense_evidence --tiny     # a smoke run

Every method trains the same small MONAI ResNet for the same number of epochs with RobustTrainer and is scored
on the test split: clean accuracy and PGD-20 robust accuracy at eps 2/255 and 8/255. HAT's helper is the NAT
model. Results are written (atomically) to ``--out`` after each method, and a rerun skips the methods already
there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from monai.data import DataLoader
from monai.networks.nets import ResNet

from monai_adv.attacks import PGD
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.data import BrainLesionDataset
from monai_adv.defenses import make_defense
from monai_adv.engines import RobustTrainer

METHODS = ("nat", "pgd_at", "fast_at", "trades", "mart", "hat")


def _network() -> torch.nn.Module:
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [16, 32, 64, 128],
        spatial_dims=2,
        n_input_channels=1,
        num_classes=2,
        conv1_t_stride=1,
        no_max_pool=True,
    )


def _scores(net, x, y) -> dict:
    net.eval()
    with torch.no_grad():
        clean = float((net(x).argmax(1) == y).float().mean())
    out = {"clean_accuracy": clean}
    for eps in (2, 8):
        x_adv = PGD(net, eps=eps / 255, steps=20, alpha=eps / 255 / 4, seed=0)(x, y)
        with torch.no_grad():
            out[f"pgd20_{eps}"] = float((net(x_adv).argmax(1) == y).float().mean())
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-eps", type=float, default=8.0, help="training budget in units of 1/255")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/defense_evidence.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.samples = 1, 32
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    results = json.loads(args.out.read_text())["results"] if args.out.exists() else {}
    train = BrainLesionDataset("train", "classification", 2, num_samples=args.samples, image_size=args.image_size)
    test = BrainLesionDataset(
        "test", "classification", 2, num_samples=64 if args.tiny else 400, image_size=args.image_size
    )
    x = torch.stack([s["image"].as_tensor() for s in test])
    y = torch.stack([s["label"] for s in test])
    eps = args.train_eps / 255
    helper = None
    for method in METHODS:
        path = args.out.parent / f"defense_evidence_{method}.pt"
        if method in results and (method != "nat" or path.exists()):
            if method == "nat":
                helper = _network()
                helper.load_state_dict(torch.load(path, weights_only=True))
            continue
        torch.manual_seed(0)
        net = _network()
        kwargs = {} if method == "nat" else {"eps": eps}
        if method == "hat":
            kwargs["helper"] = helper.eval()
        if method == "fast_at":
            defense = make_defense(method, **kwargs)
        else:
            defense = make_defense(method, **kwargs, **({} if method == "nat" else {"steps": 10}))
        loader = DataLoader(train, batch_size=32, shuffle=True)
        optimizer = torch.optim.Adam(net.parameters(), 2e-3)
        trainer = RobustTrainer(
            device="cpu",
            max_epochs=args.epochs,
            train_data_loader=loader,
            network=net,
            optimizer=optimizer,
            defense=defense,
        )
        start = time.perf_counter()
        trainer.run()
        row = {"train_seconds": time.perf_counter() - start, **_scores(net, x, y)}
        results[method] = row
        if method == "nat":
            helper = net
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
        write_json_atomic(
            args.out,
            {
                "train_eps": f"{args.train_eps:g}/255",
                "epochs": args.epochs,
                "samples": args.samples,
                "image_size": args.image_size,
                "results": results,
            },
        )
        print(
            f"{method:<8} clean {row['clean_accuracy']:.3f}  PGD-20@2/255 {row['pgd20_2']:.3f}  "
            f"PGD-20@8/255 {row['pgd20_8']:.3f}  ({row['train_seconds']:.0f} s)",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
