# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""AutoAttack "fast" against AutoAttack "standard", sample by sample, on the same models and images, in one run.

Usage (from the repository root)::

    python -m benchmarks.autoattack_fast            # 6 models, 200 images each
    python -m benchmarks.autoattack_fast --tiny     # a smoke run

Models: the four 10-class models of ``benchmarks.autoattack_parity`` (a small CNN and a small ResNet, natural and
PGD-AT, on synthetic orientation images) and the demo task's binary lesion classifier (32x32 slices), natural and
PGD-AT, trained here through RobustTrainer. Per model: robust accuracy under each version, the samples standard
breaks and fast does not ("misses", the goal is at most 1 in 500), the samples fast breaks and standard does not,
and the wall-time ratio fast / standard (the goal is at most 0.25).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from benchmarks.autoattack_parity import CACHE, build_models, orientation_dataset
from benchmarks.doc_sections import replace_section
from monai_adv.attacks import AutoAttack
from monai_adv.benchmark.io import save_state_dict_atomic, write_json_atomic
from monai_adv.benchmark.networks import small_classifier
from monai_adv.benchmark.training import train_with_defense
from monai_adv.data import BrainLesionDataset

DOC = Path("docs/performance.md")
HEADING = "## AutoAttack fast against standard"


def demo_models(
    tiny: bool, cache: Optional[Path] = CACHE
) -> Tuple[Dict[str, Tuple[nn.Module, float]], torch.Tensor, torch.Tensor]:
    """The demo task's natural and PGD-AT classifiers (binary lesion, 32x32), with their budgets, and test images.
    Trained weights are kept in ``cache`` (a full run only) for the next run and for ``benchmarks.min_norm_curve``."""
    train = BrainLesionDataset("train", task="classification", num_samples=64 if tiny else 600, image_size=32)
    test = BrainLesionDataset("test", task="classification", num_samples=16 if tiny else 200, image_size=32)
    x = torch.stack([item["image"].as_tensor() for item in test])
    y = torch.as_tensor([int(item["label"]) for item in test])
    epochs = 1 if tiny else 8
    stored = cache / "demo_models.pt" if cache is not None and not tiny else None
    weights = torch.load(stored) if stored is not None and stored.exists() else {}
    models = {}
    for name, method, eps in (("demo lesion, natural", "nat", 2 / 255), ("demo lesion, PGD-AT", "pgd_at", 8 / 255)):
        torch.manual_seed(0)
        network = small_classifier(1, 2)
        if name in weights:
            network.load_state_dict(weights[name])
            network.eval()
        else:
            network = train_with_defense(network, method, train, eps=8 / 255, epochs=epochs, device=x.device)
            weights[name] = network.state_dict()
            if stored is not None:
                save_state_dict_atomic(stored, weights)
        models[name] = (network, eps)
    return models, x, y


def _correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) == y


def compare_versions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, queries: int):
    """Standard and fast on the same images; per-sample agreement and time."""
    clean = _correct(model, x, y)
    row = {"eps": f"{eps * 255:g}/255", "clean_accuracy": float(clean.float().mean())}
    robust = {}
    for version in ("standard", "fast"):
        budget = {"queries": queries} if version == "standard" else {"queries": max(queries // 5, 2)}
        attack = AutoAttack(model, version=version, eps=eps, steps=steps, seed=0, check=False, **budget)
        start = time.perf_counter()
        result = attack.perturb(x, y)
        seconds = time.perf_counter() - start
        robust[version] = _correct(model, result.x_adv, y)
        row[version] = {
            "robust_accuracy": float(robust[version].float().mean()),
            "seconds": seconds,
            "broken_counts": result.details["broken_counts"],
        }
    row["misses"] = int((~robust["standard"] & robust["fast"]).sum())
    row["fast_only"] = int((robust["standard"] & ~robust["fast"]).sum())
    row["time_ratio"] = row["fast"]["seconds"] / row["standard"]["seconds"]
    return row


def compare(n: int, steps: int, queries: int, tiny: bool) -> Dict:
    rows = {}
    x, y = orientation_dataset(n, seed=1)
    for name, (model, eps) in build_models(tiny).items():
        rows[name] = compare_versions(model, x, y, eps, steps, queries)
        print(_line(name, rows[name]), flush=True)
    models, x, y = demo_models(tiny)
    for name, (model, eps) in models.items():
        rows[name] = compare_versions(model, x[:n], y[:n], eps, steps, queries)
        print(_line(name, rows[name]), flush=True)
    return rows


def _line(name: str, row: Dict) -> str:
    return (
        f"{name:<22} eps {row['eps']:<6} clean {row['clean_accuracy']:.3f}  standard "
        f"{row['standard']['robust_accuracy']:.3f}  fast {row['fast']['robust_accuracy']:.3f}  misses "
        f"{row['misses']}  fast only {row['fast_only']}  time ratio {row['time_ratio']:.2f}"
    )


def markdown(payload: Dict) -> str:
    lines = [
        HEADING,
        "",
        f'`python -m benchmarks.autoattack_fast`: `AutoAttack(version="fast")` (APGD-CE, APGD-T on the 3 targets '
        f"closest by linearized distance, Square with {payload['queries'] // 5} queries; with 2 classes one APGD run "
        "on the CW margin and Square) against "
        f'`version="standard"` (APGD-CE, APGD-T on 9 targets, FAB-T on 9 targets, Square with {payload["queries"]} '
        f"queries), {payload['images']} test images per model, {payload['steps']} APGD/FAB iterations, seed 0, on "
        f"{payload['machine']}. *Misses*: samples standard breaks and fast does not (the goal: at most 1 in 500); "
        "*fast only*: the reverse.",
        "",
        "| model | L-inf eps | clean | standard | fast | misses | fast only | time fast / standard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in payload["models"].items():
        lines.append(
            f"| {name} | {row['eps']} | {row['clean_accuracy']:.3f} | {row['standard']['robust_accuracy']:.3f} | "
            f"{row['fast']['robust_accuracy']:.3f} | {row['misses']} | {row['fast_only']} | {row['time_ratio']:.2f} |"
        )
    total = sum(row["misses"] for row in payload["models"].values())
    images = payload["images"] * len(payload["models"])
    late = sum(
        row["standard"]["broken_counts"].get(a, 0) for row in payload["models"].values() for a in ("fab-t", "square")
    )
    lines += [
        "",
        f"In all: {total} miss(es) in {images} images. In standard's chain, FAB-T and Square broke {late} sample(s) "
        "that APGD-CE and APGD-T had left: most of standard's time goes to attacks that find nothing more on these "
        "models, which is what fast saves. Wall times on a shared machine: the ratio moves by a few hundredths "
        "between runs with the load of other processes.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test images per model")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000, help="standard's Square queries (fast uses a fifth)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run (16 images, 5 steps, 50 queries)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/autoattack_fast.json"))
    parser.add_argument("--doc", type=Path, default=DOC, help="Markdown document to write the section into")
    parser.add_argument("--from-json", type=Path, help="only write the section of an earlier run's JSON to --doc")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        replace_section(args.doc, HEADING, markdown(payload))
        return payload
    if args.tiny:
        args.n, args.steps, args.queries = 16, 5, 50
    payload = {
        "images": args.n,
        "steps": args.steps,
        "queries": args.queries,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "models": compare(args.n, args.steps, args.queries, args.tiny),
    }
    write_json_atomic(args.out, payload)
    if not args.tiny:
        replace_section(args.doc, HEADING, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
