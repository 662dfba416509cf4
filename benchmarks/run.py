# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Cost of our attacks and training next to their bare cost and next to torchattacks, in one run.

Usage (from the repository root)::

    python -m benchmarks.run            # prints a table, writes JSON and docs/performance.md
    python -m benchmarks.run --tiny     # a smoke run (writes JSON only)
    python -m benchmarks.run --from-json benchmarks/results/run.json   # the tables of an earlier run, again

Measured, each comparison interleaved in the same process with medians over ``--repeats``:

- overhead: our PGD-20 / a bare loop of 20 input-gradient forward+backward passes with sign steps, for a 2D
  classifier (64x64) and a 3D UNet (64^3);
- torchattacks: PGD-20, APGD-CE-100 and Square-1000 on a small CNN trained here (synthetic bar images):
  time ratio and robust accuracy (mean over one random-start seed per repeat); APGD-CE also from torchattacks'
  own random start, sample by sample;
- AutoAttack standard against torchattacks.AutoAttack standard (same model, images, budgets): time and robust
  accuracy (``benchmarks.autoattack_reference``);
- adversarial training: an epoch of PGD-AT-10 and of fast-AT over an epoch of natural training (RobustTrainer);
- 3D memory: peak memory of a PGD step through SlidingWindowInferer on a 128^3 volume, without and with
  gradient checkpointing, over one plain forward+backward pass of a batch of patches (``benchmarks.memory3d``,
  each in its own process);
- each optimization with and without it (``benchmarks.optimizations``): input-only gradients, per-sample early
  exit, inference mode, forward passes per attack, checkpointing's time cost, autocast.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Dict, List
from unittest import mock

import torch
from monai.data import DataLoader
from monai.networks.nets import ResNet, UNet

import monai_adv.attacks.apgd as apgd_module
import monai_adv.attacks.pgd as pgd_module
from benchmarks import autoattack_reference, memory3d, optimizations
from benchmarks.machine import processor
from benchmarks.optimizations import median_times
from monai_adv.attacks import APGD, PGD, Square
from monai_adv.benchmark.io import write_json_atomic, write_text_atomic
from monai_adv.data import BrainLesionDataset
from monai_adv.engines import RobustTrainer
from tests.models import accuracy
from tests.reference import torchattacks_apgd_start, torchattacks_pgd_start


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
    """The bare cost of a K-step attack: K forward+backward passes for the input gradient, sign steps."""
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x_adv), y), x_adv)
        x_adv = (x + (x_adv.detach() + eps / 4 * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def overhead(tiny: bool, repeats: int) -> Dict[str, dict]:
    rows = {}
    torch.manual_seed(0)
    net2d = ResNet("basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=1, num_classes=2).eval()
    unet = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    cases = {
        "2D classifier 64x64 (batch 16)": (net2d, torch.rand(16, 1, 64, 64), torch.randint(0, 2, (16,))),
        "3D UNet 64^3 (batch 1)": (unet, torch.rand(1, 1, 64, 64, 64), torch.randint(0, 2, (1, 1, 64, 64, 64))),
    }
    steps = 2 if tiny else 20
    textbook = {"best_iterate": False, "early_stop": False}  # the bare loop's algorithm: last iterate
    for name, (model, x, y) in cases.items():
        if tiny:
            x = x[..., :32, :32] if x.ndim == 4 else x[..., :16, :16, :16]
            y = y if y.ndim == 1 else y[..., :16, :16, :16]
        for p in model.parameters():
            p.requires_grad_(False)  # the bare loop computes input gradients only, as our attacks do
        target = y if y.ndim == 1 else y[:, 0]
        eps = 4 / 255
        times = median_times(
            {
                "bare": lambda m=model, a=x, b=target, e=eps: bare_loop(m, a, b, steps, e),
                "ours": lambda m=model, a=x, b=y, e=eps: PGD(m, eps=e, steps=steps, **textbook)(a, b),
                "best": lambda m=model, a=x, b=y, e=eps: PGD(m, eps=e, steps=steps, early_stop=False)(a, b),
            },
            repeats,
        )
        rows[name] = {
            "bare_seconds": times["bare"],
            "ours_seconds": times["ours"],
            "ratio": times["ours"] / times["bare"],
            "best_iterate_seconds": times["best"],
            "best_iterate_ratio": times["best"] / times["bare"],
        }
    return rows


def against_torchattacks(tiny: bool, repeats: int) -> Dict[str, dict]:
    import torchattacks

    model, x, y = optimizations.trained_bars(tiny)
    eps = 12 / 255
    budget = {"pgd": 2 if tiny else 20, "apgd": 5 if tiny else 100, "square": 20 if tiny else 1000}
    pairs = {
        f"PGD-{budget['pgd']}": (
            lambda seed: PGD(model, eps=eps, steps=budget["pgd"], alpha=eps / 4, seed=seed),
            lambda seed: torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=budget["pgd"], random_start=True),
        ),
        f"APGD-CE-{budget['apgd']}": (
            lambda seed: APGD(model, eps=eps, steps=budget["apgd"], seed=seed),
            lambda seed: torchattacks.APGD(model, eps=eps, steps=budget["apgd"], loss="ce", seed=seed),
        ),
        f"Square-{budget['square']}": (
            lambda seed: Square(model, eps=eps, queries=budget["square"], rescale_schedule=True, seed=seed),
            lambda seed: torchattacks.Square(model, eps=eps, n_queries=budget["square"], seed=seed),
        ),
    }
    rows = {}
    for name, (ours, theirs) in pairs.items():
        times: Dict[str, List[float]] = {"ours": [], "theirs": []}
        robust: Dict[str, List[float]] = {"ours": [], "theirs": []}
        for seed in range(repeats):  # a new random-start seed per repeat, ours and theirs interleaved
            for key, make in (("ours", ours), ("theirs", theirs)):
                torch.manual_seed(seed)  # torchattacks' PGD draws its start from the global generator
                start = time.perf_counter()
                x_adv = make(seed)(x, y)
                times[key].append(time.perf_counter() - start)
                robust[key].append(accuracy(model, x_adv, y))
        ours_t, theirs_t = statistics.median(times["ours"]), statistics.median(times["theirs"])
        rows[name] = {
            "ours_seconds": ours_t,
            "torchattacks_seconds": theirs_t,
            "time_ratio": ours_t / theirs_t,
            "ours_robust_accuracy": statistics.mean(robust["ours"]),
            "torchattacks_robust_accuracy": statistics.mean(robust["theirs"]),
        }
    same_start = reference_start_outcomes(model, x, y, eps, budget, repeats)
    for name, counts in same_start.items():
        rows[name].update(counts)
    return rows


def reference_start_outcomes(model, x, y, eps: float, budget: Dict[str, int], repeats: int) -> Dict[str, dict]:
    """Ours started from torchattacks' own random start (one seed per repeat), sample by sample: how many
    samples end robust for ours but fooled for theirs, and the other way round (summed over the seeds).

    Every sample is attacked on both sides (no early exit), so that both draw the start for the same batch.
    """
    import torchattacks

    cases = {
        f"PGD-{budget['pgd']}": (
            (pgd_module, "random_start", torchattacks_pgd_start),
            lambda: PGD(model, eps=eps, steps=budget["pgd"], alpha=eps / 4, early_stop=False),
            lambda: torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=budget["pgd"], random_start=True),
        ),
        f"APGD-CE-{budget['apgd']}": (
            (apgd_module, "boundary_start", torchattacks_apgd_start),
            lambda: APGD(model, eps=eps, steps=budget["apgd"], early_stop=False),
            None,
        ),
    }
    rows = {}
    for name, ((module, function, start), ours, theirs) in cases.items():
        only_ours_robust = only_theirs_robust = 0
        for seed in range(repeats):
            with mock.patch.object(module, function, start(seed)):
                x_ours = ours()(x, y)
            torch.manual_seed(seed)
            if theirs is None:
                x_theirs = torchattacks.APGD(model, eps=eps, steps=budget["apgd"], loss="ce", seed=seed)(x, y)
            else:
                x_theirs = theirs()(x, y)
            with torch.no_grad():
                robust_ours, robust_theirs = model(x_ours).argmax(1) == y, model(x_theirs).argmax(1) == y
            only_ours_robust += int((robust_ours & ~robust_theirs).sum())
            only_theirs_robust += int((robust_theirs & ~robust_ours).sum())
        rows[name] = {
            "same_start_only_ours_robust": only_ours_robust,
            "same_start_only_theirs_robust": only_theirs_robust,
        }
    return rows


def training(tiny: bool, repeats: int) -> Dict[str, dict]:
    """Epochs of RobustTrainer with each defense over an epoch of natural training, as configured by default
    (``clean_accuracy=False``); the last rows add the clean-accuracy monitoring (one forward pass per iteration)."""
    data = BrainLesionDataset("train", "classification", 2, num_samples=32 if tiny else 256, image_size=32)
    loader = DataLoader(data, batch_size=32)

    def epoch(defense: str, kwargs: dict, clean_accuracy: bool = False) -> None:
        torch.manual_seed(0)
        net = ResNet("basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=1, num_classes=2)
        RobustTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=loader,
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), 0.01),
            defense=defense,
            defense_kwargs=kwargs,
            clean_accuracy=clean_accuracy,
        ).run()

    steps = 2 if tiny else 10
    pgd = {"eps": 8 / 255, "steps": steps}
    times = median_times(
        {
            "nat": lambda: epoch("nat", {}),
            "pgd_at": lambda: epoch("pgd_at", pgd),
            "fast_at": lambda: epoch("fast_at", {"eps": 8 / 255}),
            "pgd_at_monitored": lambda: epoch("pgd_at", pgd, clean_accuracy=True),
            "fast_at_monitored": lambda: epoch("fast_at", {"eps": 8 / 255}, clean_accuracy=True),
        },
        repeats,
    )
    names = {
        "pgd_at": f"PGD-AT-{steps} / natural",
        "fast_at": "fast-AT / natural",
        "nat": "natural",
        "pgd_at_monitored": f"PGD-AT-{steps}, clean accuracy monitored / natural",
        "fast_at_monitored": "fast-AT, clean accuracy monitored / natural",
    }
    return {label: {"ratio": times[key] / times["nat"], "epoch_seconds": times[key]} for key, label in names.items()}


def autoattack(tiny: bool) -> dict:
    """Our AutoAttack against torchattacks.AutoAttack, standard version, eps 10/255, same budgets."""
    n, steps, queries = (16, 5, 50) if tiny else (256, 100, 5000)
    compared = autoattack_reference.compare(n, 10.0, steps, queries, tiny)
    return {"images": n, "eps": "10/255", "steps": steps, "queries": queries, **compared}


def markdown(payload: dict) -> str:
    lines = [
        "# Performance",
        "",
        f"Measured by `python -m benchmarks.run` on {payload['machine']} (torch {payload['torch']}), medians over "
        f"{payload['repeats']} interleaved repeats.",
        "",
        "PGD-20 (eps 4/255, step eps/4, random start) against a bare loop of 20 forward+backward passes for the",
        "input gradient with sign steps. `ours` runs the same algorithm (`best_iterate=False, early_stop=False`:",
        "20 passes, the first at the random start, no clean pass); `best iterate` is the default, which also scores",
        "the clean input and the last iterate (22 passes) to return each sample's best point. Goal: ours / bare",
        "<= 1.05.",
        "",
        "| overhead | bare (s) | ours (s) | ours / bare | best iterate (s) | best iterate / bare |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in payload["overhead"].items():
        lines.append(
            f"| {name} | {row['bare_seconds']:.3f} | {row['ours_seconds']:.3f} | {row['ratio']:.2f} | "
            f"{row['best_iterate_seconds']:.3f} | {row['best_iterate_ratio']:.2f} |"
        )
    lines += [
        "",
        "Robust accuracies are means over the repeats, each with its own random-start seed (single runs differ by",
        "a few samples); times are medians. Goals: time ratio <= 1.0, robust accuracy ours <= theirs.",
        "",
        "| against torchattacks | ours (s) | torchattacks (s) | time ratio | robust acc. ours | robust acc. theirs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in payload["torchattacks"].items():
        lines.append(
            f"| {name} | {row['ours_seconds']:.2f} | {row['torchattacks_seconds']:.2f} | {row['time_ratio']:.2f} | "
            f"{row['ours_robust_accuracy']:.4f} | {row['torchattacks_robust_accuracy']:.4f} |"
        )
    lines += [
        "",
        "The same attacks started from torchattacks' own random start (one seed per repeat, every sample attacked, "
        "ours returning its best iterate), sample by sample over all seeds:",
        "",
        "| same start | robust for ours only | robust for torchattacks only |",
        "| --- | --- | --- |",
    ]
    for name, row in payload["torchattacks"].items():
        if "same_start_only_ours_robust" in row:
            lines.append(f"| {name} | {row['same_start_only_ours_robust']} | {row['same_start_only_theirs_robust']} |")
    lines += [
        "",
        "No sample that torchattacks fools from a start survives ours from the same start: a gap between the mean",
        "robust accuracies above comes from the different random starts.",
    ]
    aa = payload["autoattack"]
    lines += [
        "",
        f"AutoAttack standard, {aa['images']} images, eps {aa['eps']}, {aa['steps']} steps, {aa['queries']} queries "
        f"(clean accuracy {aa['clean_accuracy']:.4f}):",
        "",
        "| AutoAttack | seconds | robust accuracy |",
        "| --- | --- | --- |",
    ]
    for name, row in aa["results"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['robust_accuracy']:.4f} |")
    lines.append(f"| time ratio ours / torchattacks | {aa['time_ratio_ours_over_reference']:.2f} | |")
    if "fast_misses" in aa:
        lines.append(f"| time ratio ours fast / ours standard | {aa['fast_time_ratio']:.2f} | |")
        lines += [
            "",
            f"`monai_adv.AutoAttack fast` (APGD-CE, APGD-T on 3 targets ranked by linearized distance, Square with a "
            f"fifth of the queries): {aa['fast_misses']} sample(s) that standard breaks survive it.",
        ]
    mem = payload["memory_3d"]
    patch = mem["patch_batch_forward_backward"]["peak_mb"]
    lines += [
        "",
        f"3D memory ({mem['sliding_window_pgd_step']['device']}): a PGD step on a {mem['volume']}^3 volume through "
        f"SlidingWindowInferer ({mem['roi']}^3 windows, {mem['sw_batch_size']} per batch), without and with "
        "gradient checkpointing of the window batches, against one forward+backward pass of "
        f"{mem['sw_batch_size']} patches of {mem['roi']}^3 (UNet 16-64 channels), each in its own process:",
        "",
        "| 3D memory | peak (MB) | ratio to the patch batch |",
        "| --- | --- | --- |",
        f"| PGD step, sliding window | {mem['sliding_window_pgd_step']['peak_mb']:.0f} | "
        f"{mem['ratio_sliding_window_pgd_step']:.2f} |",
        f"| PGD step, sliding window, `InfererModel(..., checkpoint=True)` | "
        f"{mem['sliding_window_pgd_step_checkpointed']['peak_mb']:.0f} | "
        f"{mem['ratio_sliding_window_pgd_step_checkpointed']:.2f} |",
        f"| forward+backward, patch batch | {patch:.0f} | 1.00 |",
    ]
    if mem.get("peak_mb_by_volume"):
        lines += [
            "",
            "The same step on volumes of other sizes: without checkpointing the peak follows the number of windows",
            "(all their activations wait for the backward pass); with it, one window batch's activations plus",
            "buffers the size of the volume (logits, their gradient, the input's gradient and copies).",
            "",
            "| volume | windows | peak (MB), sliding window | peak (MB), checkpointed |",
            "| --- | --- | --- | --- |",
        ]
        for size, row in mem["peak_mb_by_volume"].items():
            windows = memory3d.window_count(int(size), mem["roi"])
            lines.append(
                f"| {size}^3 | {windows} | {row['sliding_window_pgd_step']:.0f} | "
                f"{row['sliding_window_pgd_step_checkpointed']:.0f} |"
            )
    lines += [
        "",
        "An epoch of RobustTrainer (256 demo images 32x32, batch 32, MONAI ResNet) with each defense; goals: PGD-AT-10",
        "<= 11.5 and fast-AT <= 2.3 natural epochs. The defense epochs run as configured by default; monitoring",
        "the clean accuracy of each batch (`clean_accuracy=True`) costs one more forward pass per iteration, shown",
        "last.",
        "",
        "| adversarial training (one epoch) | seconds | ratio to natural |",
        "| --- | --- | --- |",
    ]
    for name, row in payload["training"].items():
        lines.append(f"| {name} | {row['epoch_seconds']:.2f} | {row['ratio']:.2f} |")
    lines += [""] + optimizations.markdown(payload["optimizations"])
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The processor (model name where the system tells it), threads used, and the GPU when there is one."""
    name = processor()
    text = f"{name}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()} (3D memory and autocast rows)"
    return text


def _sections(text: str) -> dict:
    """``{heading: section text}`` of the level-2 sections of a Markdown text (the part before the first is left)."""
    parts = re.split(r"(?m)^(?=## )", text)
    return {part.splitlines()[0]: part for part in parts if part.startswith("## ")}


def with_kept_sections(doc: Path, text: str) -> str:
    """``text`` followed by the sections of the existing ``doc`` that this run does not write (tables other scripts
    measured, e.g. the full-size networks' costs), so that regenerating the page keeps them."""
    if not doc.is_file():
        return text
    ours = _sections(text)
    kept = [body for heading, body in _sections(doc.read_text(encoding="utf-8")).items() if heading not in ours]
    return text.rstrip("\n") + "\n\n" + "".join(kept).rstrip("\n") + "\n" if kept else text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/run.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--from-json", type=Path, help="only write the tables of an earlier run's JSON to --doc")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        write_text_atomic(args.doc, with_kept_sections(args.doc, markdown(payload)))
        return payload
    repeats = 1 if args.tiny else args.repeats
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    payload = {
        "machine": machine(),
        "torch": torch.__version__,
        "repeats": repeats,
        "overhead": overhead(args.tiny, repeats),
        "torchattacks": against_torchattacks(args.tiny, repeats),
        "training": training(args.tiny, repeats),
        "autoattack": autoattack(args.tiny),
        "memory_3d": memory3d.measure(48, 32, 4, (40,)) if args.tiny else memory3d.measure(128, 64, 4, (96, 160)),
        "optimizations": optimizations.measure(args.tiny, repeats),
    }
    text = markdown(payload)
    print(text)
    write_json_atomic(args.out, payload)
    if not args.tiny:
        write_text_atomic(args.doc, with_kept_sections(args.doc, text))
    return payload


if __name__ == "__main__":
    main()
