# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Every registered attack on the full-size networks on one GPU, in float32 and under float16 and bfloat16
autocast: time per image, peak CUDA memory and robust accuracy, float32 against autocast. Under 10 minutes.

For each network of ``benchmarks.full_size_networks`` (DenseNet-121, ResNet-18, EfficientNet-B0 at 224x224 with 1
and 3 channels; 3D UNet and SegResNet on 96^3 volumes through SlidingWindowInferer) and each registered attack
(budgets capped by ``--steps`` and ``--queries``; the attacks for class logits skipped on the segmenters), the
attack and its scoring run in float32, then inside ``torch.autocast("cuda", dtype=torch.float16)`` and
``torch.autocast("cuda", dtype=torch.bfloat16)``. Reported per cell: seconds per image, peak memory
(``torch.cuda.max_memory_allocated`` above what was allocated before the attack), the robust accuracy scored in the
cell's precision, the robust accuracy of its examples scored by the float32 network, and any error (e.g. logits
that overflow in float16). For the segmenters a sample is robust while its Dice stays above half the clean Dice
(the attacks' ``seg_success_ratio``). The networks are untrained (seed 0) with their BatchNorm statistics fitted
to the batch (``fit_batch_norm``: untrained, MONAI's EfficientNet-B0 gives logits near 1e-14, which float16
flushes to zero), and the labels are their float32 clean predictions, so the clean accuracy is 1 in float32;
what matters is whether autocast changes the outcome.
A small budget (``--eps``, default 1/255) is where reduced precision matters most: bfloat16 keeps 8 bits of
mantissa, about 1/256 near 1.0.

Usage::

    python -m benchmarks.gpu_check                      # needs CUDA; writes benchmarks/results/gpu_check.json
    python -m benchmarks.gpu_check --device cpu --dry-run --networks resnet18-1ch unet3d   # the logic, on CPU

Without CUDA (and without ``--device cpu``) it exits with a message and code 2. It exits with code 1 when an
attack failed on some network and precision (the JSON says which and why).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.full_size_cost import PeakMemory, machine
from benchmarks.full_size_networks import (
    Setup,
    build_2d,
    build_3d,
    build_setup,
    network_names,
    parse_name,
    sliding_window,
)
from monai_adv.attacks import (
    InfererModel,
    attack_arguments,
    attack_class,
    available_attacks,
    eval_view,
    make_attack,
    score_examples,
)
from monai_adv.benchmark.io import write_json_atomic

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
# attacks on class logits only (targeted ones, FMN), and DLR, which needs classes; attacks on label maps only
NOT_FOR_SEGMENTATION = tuple(n for n in available_attacks() if "segmentation" not in attack_class(n).tasks) + (
    "apgd_dlr",
)
NOT_FOR_CLASSIFICATION = tuple(n for n in available_attacks() if "classification" not in attack_class(n).tasks)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_context(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on the device for a reduced precision; nothing for float32."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def surrogate_for(setup: Setup, shape: Dict[str, Any], device: torch.device) -> Callable:
    """The transfer attack's source: a ResNet-18 of the same input channels (2D), a UNet through the same
    inferer (3D), with other weights."""
    torch.manual_seed(1234)
    arch, channels = parse_name(setup.name)
    if channels is None:
        network = build_3d("unet3d", int(shape.get("seg_classes", 3))).to(device).eval()
        return InfererModel(network, sliding_window(shape.get("roi", 48), shape.get("overlap", 0.0)))
    return build_2d("resnet18", channels, int(shape.get("num_classes", 10))).to(device).eval()


def attack_settings(name: str, setup: Setup, surrogate: Callable, args: argparse.Namespace) -> Dict[str, Any]:
    """The attack's defaults with the budget ``--eps`` (``--eps-l2`` for L2), steps and queries capped."""
    accepted = attack_arguments(name)
    kwargs: Dict[str, Any] = {"eps": args.eps, "seed": 0}
    if name == "pgd_l2":
        kwargs["eps"] = args.eps_l2
    for key, cap in (("steps", args.steps), ("queries", args.queries)):
        if key in accepted:
            kwargs[key] = cap
    if "target_classes" in accepted:
        kwargs["target_classes"] = args.target_classes
    if name == "autoattack":
        kwargs["check"] = False  # its sanity checks warn about untrained networks; not what is measured here
    if name == "transfer":
        kwargs.update(surrogate=surrogate, source="pgd", source_kwargs={"steps": args.steps})
    return kwargs


def warm_up(setup: Setup, device: torch.device, precisions: Sequence[str]) -> None:
    """One input-gradient pass in each precision, so that no cell pays for the first kernels' setup."""
    for precision in precisions:
        x = setup.x.clone().requires_grad_(True)
        with precision_context(device, PRECISIONS[precision]):
            out = eval_view(setup.model)(x)
        torch.autograd.grad(out.float().sum(), x)
    _sync(device)


def run_cell(setup: Setup, name: str, kwargs: Dict[str, Any], precision: str, device: torch.device) -> Dict[str, Any]:
    """One attack in one precision: time, peak memory, robust accuracy (in that precision and in float32)."""
    dtype = PRECISIONS[precision]
    memory = PeakMemory(device)
    row: Dict[str, Any] = {"network": setup.name, "attack": name, "precision": precision}
    try:
        attack = make_attack(name, setup.model, **kwargs)
        memory.start()
        _sync(device)
        start = time.perf_counter()
        with precision_context(device, dtype):
            result = attack.perturb(setup.x, setup.y)
            scored = (
                result
                if result.success is not None
                else score_examples(attack, setup.model, setup.x, result.x_adv, setup.y)
            )
            success, clean_success = scored.success, scored.clean_success
        _sync(device)
        seconds = time.perf_counter() - start
        peak = memory.peak_mb()
        in_float32 = score_examples(attack, setup.model, setup.x, result.x_adv, setup.y)
    except (RuntimeError, ValueError, TypeError) as error:  # a finding, not a crash of the check
        row["error"] = f"{type(error).__name__}: {error}"
        return row
    images = setup.x.shape[0]
    row.update(
        seconds_per_image=seconds / images,
        peak_mb=peak,
        clean_accuracy=1.0 - clean_success.float().mean().item(),
        robust_accuracy=1.0 - success.float().mean().item(),
        robust_accuracy_scored_float32=1.0 - in_float32.success.float().mean().item(),
        max_abs_perturbation=(result.x_adv.float() - setup.x.float()).abs().max().item(),
    )
    return row


def _table(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| network | attack | precision | s/image | peak MB | clean acc. | robust acc. | robust acc. (scored fp32) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['network']} | {r['attack']} | {r['precision']} | {r.get('error', r.get('skipped'))} |")
            continue
        lines.append(
            f"| {r['network']} | {r['attack']} | {r['precision']} | {r['seconds_per_image']:.3g} | "
            f"{r['peak_mb']:.0f} | {r['clean_accuracy']:.2f} | {r['robust_accuracy']:.2f} | "
            f"{r['robust_accuracy_scored_float32']:.2f} |"
        )
    return "\n".join(lines)


def summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per precision: cells run, cells failed, and the largest robust-accuracy gap to float32 (same network and
    attack), with where it happened."""
    base = {(r["network"], r["attack"]): r for r in rows if r["precision"] == "float32" and "robust_accuracy" in r}
    out: Dict[str, Any] = {}
    for precision in PRECISIONS:
        mine = [r for r in rows if r["precision"] == precision]
        gaps = [
            (
                abs(r["robust_accuracy"] - base[(r["network"], r["attack"])]["robust_accuracy"]),
                r["network"],
                r["attack"],
            )
            for r in mine
            if "robust_accuracy" in r and (r["network"], r["attack"]) in base
        ]
        worst = max(gaps, default=(0.0, None, None))
        out[precision] = {
            "cells": len(mine),
            "failed": sum("error" in r for r in mine),
            "skipped": sum("skipped" in r for r in mine),
            "max_robust_accuracy_gap_to_float32": worst[0],
            "where": None if worst[0] == 0 else f"{worst[1]} / {worst[2]}",
        }
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for --dry-run")
    parser.add_argument("--dry-run", action="store_true", help="small inputs, one image, shortest budgets")
    parser.add_argument("--networks", nargs="+", choices=network_names(), help="default: all")
    parser.add_argument("--attacks", nargs="+", choices=list(available_attacks()), help="default: all registered")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--images", type=int, default=4, help="2D images per network")
    parser.add_argument("--volumes", type=int, default=1, help="3D volumes per network")
    parser.add_argument("--eps", type=float, default=1 / 255)
    parser.add_argument("--eps-l2", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10, help="cap on the steps of the iterative attacks")
    parser.add_argument("--queries", type=int, default=200, help="cap on the queries of the query attacks")
    parser.add_argument("--target-classes", type=int, default=9)
    parser.add_argument("--max-minutes", type=float, default=9.0, help="skip the cells left after this long")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu_check: CUDA is not available on this machine; it needs one GPU "
                       "(or run its logic on CPU with --device cpu --dry-run).\n")  # fmt: skip
    if device.type != "cuda" and not args.dry_run:
        parser.exit(2, "gpu_check: without CUDA only --dry-run runs (--device cpu --dry-run).\n")
    shape: Dict[str, Any] = {"images": args.images, "volumes": args.volumes}
    if args.dry_run:
        shape.update(size=64, volume=32, roi=16, overlap=0.0, images=1, volumes=1)
        args.steps, args.queries, args.target_classes = 1, 2, 1
    networks = args.networks or network_names()
    attacks = args.attacks or list(available_attacks())
    payload: Dict[str, Any] = {
        "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(str(device)),
        "device": str(device),
        "torch": torch.__version__,
        "settings": {
            "eps": args.eps,
            "eps_l2": args.eps_l2,
            "steps": args.steps,
            "queries": args.queries,
            "target_classes": args.target_classes,
            "shape": shape,
            "dry_run": args.dry_run,
        },
        "results": [],
    }
    start = time.perf_counter()
    for network in networks:
        setup = build_setup(network, device=str(device), fit_norm_stats=True, **shape)
        surrogate = surrogate_for(setup, shape, device)
        warm_up(setup, device, args.precisions)
        for name in attacks:
            for precision in args.precisions:
                row: Dict[str, Any]
                if name in (NOT_FOR_SEGMENTATION if setup.segmentation else NOT_FOR_CLASSIFICATION):
                    continue
                if time.perf_counter() - start > args.max_minutes * 60:
                    row = {"network": network, "attack": name, "precision": precision, "skipped": "time limit"}
                else:
                    row = run_cell(setup, name, attack_settings(name, setup, surrogate, args), precision, device)
                payload["results"].append(row)
                print(_table([row]).splitlines()[-1], flush=True)
        write_json_atomic(args.out, payload)
        del setup, surrogate
        if device.type == "cuda":
            torch.cuda.empty_cache()
    payload["wall_seconds"] = time.perf_counter() - start
    payload["summary"] = summary(payload["results"])
    payload["failures"] = [r for r in payload["results"] if "error" in r]
    write_json_atomic(args.out, payload)
    print(_table(payload["results"]))
    print(json.dumps(payload["summary"], indent=1))
    print(f"{payload['wall_seconds']:.0f} s; JSON: {args.out}")
    return payload


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
