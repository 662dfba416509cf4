# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Our AutoAttack (standard) against torchattacks.AutoAttack (standard), same model, data and budget, in one run.

Usage (from the repository root)::

    python -m benchmarks.autoattack_reference                 # full: 256 images, 100 steps, 5000 queries
    python -m benchmarks.autoattack_reference --tiny          # a smoke run

It trains a small CNN on synthetic four-class bar images (the synthetic set the tests use, generated here,
no downloads), prints a table and writes JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from monai_adv.attacks import AutoAttack
from monai_adv.benchmark.io import write_json_atomic
from tests.models import TinyClassifier, accuracy, bars_dataset, train_classifier


def compare(n: int, eps_255: float, steps: int, queries: int, tiny: bool = False) -> dict:
    """Run our AutoAttack and torchattacks.AutoAttack (standard, same budgets) on the same model and images."""
    import torchattacks  # a measurement-only dependency, like in the tests

    torch.manual_seed(0)
    x_train, y_train = bars_dataset(1024, seed=0, classes=4)
    x, y = bars_dataset(n, seed=1, classes=4)
    model = train_classifier(TinyClassifier(2, 1, 4, width=8), x_train, y_train, epochs=3 if tiny else 15)
    eps = eps_255 / 255
    start = time.perf_counter()
    ours = AutoAttack(model, eps=eps, steps=steps, queries=queries, check=False)
    ours_result = ours.perturb(x, y)
    ours_adv = ours_result.x_adv
    ours_seconds = time.perf_counter() - start

    start = time.perf_counter()  # the fast version, same model and images, a fifth of the Square queries
    fast = AutoAttack(model, version="fast", eps=eps, steps=steps, queries=max(queries // 5, 2), check=False)
    fast_adv = fast(x, y)
    fast_seconds = time.perf_counter() - start
    with torch.no_grad():
        standard_robust, fast_robust = model(ours_adv).argmax(1) == y, model(fast_adv).argmax(1) == y

    start = time.perf_counter()
    reference = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=4, seed=0)
    for attack in reference._autoattack.attacks:  # the same budgets as ours
        if hasattr(attack, "steps"):
            attack.steps = steps
        if hasattr(attack, "n_queries"):
            attack.n_queries = queries
            attack.resc_schedule = False  # the standard version's fixed p schedule
    theirs_adv = reference(x, y)
    theirs_seconds = time.perf_counter() - start

    return {
        "clean_accuracy": accuracy(model, x, y),
        "results": {
            "monai_adv.AutoAttack": {"robust_accuracy": accuracy(model, ours_adv, y), "seconds": ours_seconds},
            "torchattacks.AutoAttack": {"robust_accuracy": accuracy(model, theirs_adv, y), "seconds": theirs_seconds},
            "monai_adv.AutoAttack fast": {"robust_accuracy": accuracy(model, fast_adv, y), "seconds": fast_seconds},
        },
        "fast_misses": int((~standard_robust & fast_robust).sum()),
        "fast_time_ratio": fast_seconds / ours_seconds,
        "ours_report": {
            "broken_counts": ours_result.details["broken_counts"],
            "seconds": ours_result.details["seconds"],
            "notes": ours_result.details["notes"],
        },
        "time_ratio_ours_over_reference": ours_seconds / theirs_seconds,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=10.0, help="L-inf budget in units of 1/255")
    parser.add_argument("--n", type=int, default=256, help="number of test images")
    parser.add_argument("--steps", type=int, default=100, help="APGD/FAB iterations")
    parser.add_argument("--queries", type=int, default=5000, help="Square queries")
    parser.add_argument("--tiny", action="store_true", help="a quick smoke run (16 images, 5 steps, 50 queries)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/autoattack_reference.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.steps, args.queries = 16, 5, 50
    compared = compare(args.n, args.eps, args.steps, args.queries, args.tiny)
    rows = compared["results"]
    payload = {
        "eps": f"{args.eps:g}/255",
        "images": args.n,
        "steps": args.steps,
        "queries": args.queries,
        **compared,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
    }
    print(f"AutoAttack standard, eps {args.eps:g}/255, {args.n} images, clean accuracy {payload['clean_accuracy']:.4f}")
    print(f"{'implementation':<26}{'robust accuracy':>16}{'seconds':>10}")
    for name, row in rows.items():
        print(f"{name:<26}{row['robust_accuracy']:>16.4f}{row['seconds']:>10.1f}")
    print(f"time ratio ours / reference: {payload['time_ratio_ours_over_reference']:.2f}")
    write_json_atomic(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
