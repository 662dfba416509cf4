# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Adversarial training on the demo data: NAT, PGD-AT, fast-AT, free-AT, N-FGSM, AWP, TRADES, MART and HAT.

Usage (from the repository root)::

    python -m benchmarks.defense_evidence                    # binary lesion task, 32x32 slices, train at eps 8/255
    python -m benchmarks.defense_evidence --overfitting      # catastrophic overfitting of fast-AT and N-FGSM
    python -m benchmarks.defense_evidence --tiny             # a smoke run (add --overfitting for that mode)

Every method trains the same small MONAI ResNet for the same number of epochs with RobustTrainer (free-AT:
``round(epochs / replays)`` epochs, which replay each batch ``replays`` times, for a comparable cost) and is
scored on the test split: clean accuracy, PGD-20 robust accuracy at eps 2/255 and 8/255 and AutoAttack ("fast";
on this 2-class task APGD on the CW margin, then Square) robust accuracy at 8/255 on the first
``--autoattack-images`` test images. Each row also holds the training time and its ratio to NAT's. HAT's helper
is the NAT model. Results are written (atomically) to ``--out`` after each method, and a rerun skips the methods
already there with every score of the current version, so an interrupted run resumes where it stopped.

``--overfitting`` trains fast-AT (FGSM step 1.25 eps from a random start, projected) and N-FGSM (noise 2 eps, step
eps, no projection) at each of the ``--overfitting-eps`` budgets for the same epochs and records after every
epoch, on ``--overfitting-images`` held-out test images, the clean, FGSM and PGD-20 accuracy at the training
eps, with the training batches' accuracy on their own adversarial examples. Catastrophic overfitting shows as
PGD-20 accuracy collapsing towards 0 while the FGSM (and training) accuracy stays high. These runs train with Adam
at 2e-3 or, with ``--optimizer sgd``, with SGD on a one-cycle schedule peaking at ``--lr`` (default 0.2), the
recipe of the fast-AT paper; a rerun into the same ``--out`` with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.networks.nets import ResNet

from monai_adv.attacks import FGSM, PGD, AutoAttack
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.data import BrainLesionDataset
from monai_adv.defenses import make_defense
from monai_adv.engines import RobustTrainer

METHODS = ("nat", "pgd_at", "fast_at", "free_at", "n_fgsm", "awp", "trades", "mart", "hat")
# the rows of these methods need the AutoAttack score and the cost ratio; older rows of the others are kept as they are
FULL_SCORES = ("nat", "pgd_at", "fast_at", "free_at", "n_fgsm", "awp")
SCORE_KEYS = ("clean_accuracy", "pgd20_2", "pgd20_8", "train_seconds", "autoattack_8", "cost_vs_nat", "epochs")
OVERFITTING_METHODS = ("fast_at", "n_fgsm")
NAMES = {
    "nat": "NAT",
    "pgd_at": "PGD-AT",
    "fast_at": "fast-AT",
    "free_at": "free-AT (m 4)",
    "n_fgsm": "N-FGSM",
    "awp": "AWP (PGD-AT)",
    "trades": "TRADES (beta 6)",
    "mart": "MART (beta 6)",
    "hat": "HAT",
}


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


def _accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def _subset_pgd(net, x, y, n: int) -> float:
    """PGD-20 robust accuracy at 8/255 on the first ``n`` images, the ones AutoAttack scores."""
    net.eval()
    x, y = x[:n], y[:n]
    return _accuracy(net, PGD(net, eps=8 / 255, steps=20, alpha=2 / 255, seed=0)(x, y), y)


def _scores(net, x, y, autoattack_images: int) -> dict:
    net.eval()
    out = {"clean_accuracy": _accuracy(net, x, y)}
    for eps in (2, 8):
        out[f"pgd20_{eps}"] = _accuracy(net, PGD(net, eps=eps / 255, steps=20, alpha=eps / 255 / 4, seed=0)(x, y), y)
    n = min(autoattack_images, len(x))
    out["pgd20_8_autoattack_images"] = _subset_pgd(net, x, y, n)
    result = AutoAttack(net, eps=8 / 255, version="fast", seed=0).perturb(x[:n], y[:n])
    out["autoattack_8"] = 1 - float(result.success.float().mean())
    out["autoattack_images"] = n
    return out


def _defense(method: str, eps: float, helper=None):
    if method == "nat":
        return make_defense("nat")
    if method in ("fast_at", "n_fgsm", "free_at"):  # single step (fast-AT alpha 1.25 eps, N-FGSM k 2, free-AT m 4)
        return make_defense(method, eps=eps)
    kwargs = {"helper": helper.eval()} if method == "hat" else {}
    return make_defense(method, eps=eps, steps=10, **kwargs)


def _trainer(net, defense, train, epochs: int, optimizer: str = "adam", lr: float = 2e-3, **kwargs) -> RobustTrainer:
    """Adam at a fixed ``lr``, or SGD (momentum 0.9, weight decay 5e-4) with a one-cycle schedule peaking at ``lr``
    (Wong et al.'s fast-AT recipe: linear up for 40 % of the steps, then down to 0)."""
    loader = DataLoader(train, batch_size=32, shuffle=True)
    if optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr)
    else:
        opt = torch.optim.SGD(net.parameters(), lr, momentum=0.9, weight_decay=5e-4)
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        defense=defense,
        **kwargs,
    )
    if optimizer == "sgd":
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.4, anneal_strategy="linear"
        )
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: schedule.step())
    return trainer


def _complete(method: str, row: dict) -> bool:
    return method not in FULL_SCORES or all(key in row for key in SCORE_KEYS)


def _test_tensors(dataset):
    return torch.stack([s["image"].as_tensor() for s in dataset]), torch.stack([s["label"] for s in dataset])


def _save(args, results: dict) -> None:
    write_json_atomic(
        args.out,
        {
            "train_eps": f"{args.train_eps:g}/255",
            "epochs": args.epochs,
            "samples": args.samples,
            "image_size": args.image_size,
            "threads": torch.get_num_threads(),
            "results": results,
        },
    )


def run_methods(args, train, x, y) -> dict:
    results = json.loads(args.out.read_text())["results"] if args.out.exists() else {}
    eps = args.train_eps / 255
    helper = None
    for method in args.methods:
        path = args.out.parent / f"defense_evidence_{method}.pt"
        if method in results and _complete(method, results[method]) and (method != "nat" or path.exists()):
            row = results[method]
            if "autoattack_8" in row and "pgd20_8_autoattack_images" not in row and path.exists():
                net = _network()  # a row of an earlier version: PGD-20 on AutoAttack's images from the saved model
                net.load_state_dict(torch.load(path, weights_only=True))
                row["pgd20_8_autoattack_images"] = _subset_pgd(net, x, y, row["autoattack_images"])
                _save(args, results)
            continue
        if method == "hat" and helper is None:  # HAT's helper: the NAT model of this run
            nat_path = args.out.parent / "defense_evidence_nat.pt"
            if not nat_path.exists():
                raise ValueError("HAT's helper is the NAT model: run 'nat' first (--methods nat hat).")
            helper = _network()
            helper.load_state_dict(torch.load(nat_path, weights_only=True))
        torch.manual_seed(0)
        net = _network()
        defense = _defense(method, eps, helper)
        epochs = max(1, round(args.epochs / defense.replays)) if method == "free_at" else args.epochs
        trainer = _trainer(net, defense, train, epochs)
        start = time.perf_counter()
        trainer.run()
        row = {"train_seconds": time.perf_counter() - start, "epochs": epochs}
        row.update(_scores(net, x, y, args.autoattack_images))
        results[method] = row
        if method == "nat":
            helper = net
        for other in results.values():  # the cost ratio of every row, against the NAT run of this file
            if "nat" in results:
                other["cost_vs_nat"] = other["train_seconds"] / results["nat"]["train_seconds"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
        _save(args, results)
        print(
            f"{method:<8} clean {row['clean_accuracy']:.3f}  PGD-20@2/255 {row['pgd20_2']:.3f}  "
            f"PGD-20@8/255 {row['pgd20_8']:.3f}  AA@8/255 {row['autoattack_8']:.3f}  "
            f"({row['train_seconds']:.0f} s, {epochs} epochs)",
            flush=True,
        )
    return results


def _track_epochs(trainer, net, key: str, x, y, eps: float) -> list:
    """After every epoch of ``trainer``: the clean, FGSM and PGD-20 accuracy at ``eps`` on ``(x, y)`` and the mean
    accuracy of the epoch's training batches on their adversarial examples (appended to the returned list)."""
    epochs, batches = [], []

    def _batch(engine):
        batches.append(float(engine.state.output["adversarial_accuracy"]))

    def _epoch(engine):
        net.eval()
        fgsm = FGSM(net, eps=eps)(x, y)
        pgd = PGD(net, eps=eps, steps=20, alpha=eps / 4, seed=0)(x, y)
        row = {
            "epoch": engine.state.epoch,
            "train_adversarial_accuracy": sum(batches) / max(1, len(batches)),
            "clean_accuracy": _accuracy(net, x, y),
            "fgsm_accuracy": _accuracy(net, fgsm, y),
            "pgd20_accuracy": _accuracy(net, pgd, y),
        }
        epochs.append(row)
        batches.clear()
        net.train()
        print(
            f"{key:<12} epoch {row['epoch']}  train adv {row['train_adversarial_accuracy']:.3f}  "
            f"clean {row['clean_accuracy']:.3f}  FGSM {row['fgsm_accuracy']:.3f}  PGD-20 {row['pgd20_accuracy']:.3f}",
            flush=True,
        )

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _batch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _epoch)
    return epochs


def run_overfitting(args, train, x, y) -> dict:
    out = args.out.with_name(args.out.stem + "_overfitting.json")
    stored = json.loads(out.read_text()) if out.exists() else {}
    for key in ("samples", "image_size", "epochs", "optimizer", "lr"):
        if key in stored and stored[key] != getattr(args, key):
            raise SystemExit(
                f"{out} holds runs made with {key}={stored[key]!r}, not {getattr(args, key)!r}: use another --out"
            )
    results = stored.get("results", {})
    n = min(args.overfitting_images, len(x))
    x, y = x[:n], y[:n]
    for eps_units in args.overfitting_eps:
        eps = eps_units / 255
        for method in OVERFITTING_METHODS:
            key = f"{method}@{eps_units:g}"
            if key in results:
                continue
            torch.manual_seed(0)
            net = _network()
            trainer = _trainer(  # decollate=False: the batch outputs
                net, make_defense(method, eps=eps), train, args.epochs, args.optimizer, args.lr, decollate=False
            )
            epochs = _track_epochs(trainer, net, key, x, y, eps)
            trainer.run()
            results[key] = {"method": method, "eps": f"{eps_units:g}/255", "epochs": epochs}
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                out,
                {
                    "samples": args.samples,
                    "image_size": args.image_size,
                    "held_out_images": n,
                    "epochs": args.epochs,
                    "optimizer": args.optimizer,
                    "lr": args.lr,
                    "results": results,
                },
            )
    return results


def markdown(results: dict) -> str:
    """The table of docs/defenses.md from the rows of a run."""
    lines = [
        "| defense | clean accuracy | PGD-20, eps 2/255 | PGD-20, eps 8/255 | PGD-20, eps 8/255, AutoAttack's images "
        "| AutoAttack, eps 8/255 | epochs | training time | cost vs NAT |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        if method not in results:
            continue
        row = results[method]
        aa = f"{row['autoattack_8']:.3f}" if "autoattack_8" in row else "-"
        sub = f"{row['pgd20_8_autoattack_images']:.3f}" if "pgd20_8_autoattack_images" in row else "-"
        cost = f"{row['cost_vs_nat']:.1f}x" if "cost_vs_nat" in row else "-"
        lines.append(
            f"| {NAMES[method]} | {row['clean_accuracy']:.3f} | {row['pgd20_2']:.3f} | {row['pgd20_8']:.3f} "
            f"| {sub} | {aa} | {row.get('epochs', '-')} | {row['train_seconds']:.0f} s | {cost} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-eps", type=float, default=8.0, help="training budget in units of 1/255")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="in this order")
    parser.add_argument("--autoattack-images", type=int, default=200, help="test images scored by AutoAttack")
    parser.add_argument("--overfitting", action="store_true", help="the catastrophic overfitting runs instead")
    parser.add_argument("--overfitting-eps", type=float, nargs="+", default=[16.0], help="in units of 1/255")
    parser.add_argument("--overfitting-images", type=int, default=200, help="held-out test images per epoch")
    parser.add_argument(
        "--optimizer", choices=("adam", "sgd"), default="adam", help="of --overfitting (sgd: one-cycle, momentum 0.9)"
    )
    parser.add_argument("--lr", type=float, help="learning rate (adam, default 2e-3) or sgd's peak (default 0.2)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/defense_evidence.json"))
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = 2e-3 if args.optimizer == "adam" else 0.2
    if args.tiny:
        args.epochs, args.samples, args.autoattack_images, args.overfitting_images = 1, 32, 16, 16
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    train = BrainLesionDataset("train", "classification", 2, num_samples=args.samples, image_size=args.image_size)
    test = BrainLesionDataset(
        "test", "classification", 2, num_samples=64 if args.tiny else 400, image_size=args.image_size
    )
    x, y = _test_tensors(test)
    if args.overfitting:
        return run_overfitting(args, train, x, y)
    results = run_methods(args, train, x, y)
    print(markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
