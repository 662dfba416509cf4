# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Our AutoAttack against the original AutoAttack implementation (the ``pyautoattack`` package), sample by sample,
over several seeds and several 10-class models, whole chain and component by component, in one run.

Usage (from the repository root; ``pip install --no-deps pyautoattack`` first, a measurement-only dependency)::

    python -m benchmarks.autoattack_parity              # 4 models, 200 images, 3 seeds each
    python -m benchmarks.autoattack_parity --tiny       # a smoke run

The models are trained here, naturally and with PGD-AT, on synthetic 10-class orientation images (a bar at one of
10 angles, 20x20, in noise; generated here, no downloads). For each model and seed both implementations run the
standard version (APGD-CE, APGD-T over 9 targets, FAB-T over 9 targets, Square with 5000 queries) at L-inf 8/255 on
the same images. Per sample, ``k_ours`` and ``k_original`` count the seeds whose chain broke it. The criterion:
no sample the original breaks with every seed may survive ours with every seed ("missed"), and the samples the
original breaks more often than ours must be no more than the original's own seed-to-seed variation (samples it
breaks with some seeds but not all). Then, on seed 0, each component alone on the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from benchmarks.doc_sections import replace_section
from monai_adv.attacks import APGD, APGDT, FAB, PGD, AutoAttack, Square
from monai_adv.benchmark.io import save_state_dict_atomic, write_json_atomic
from monai_adv.benchmark.networks import small_classifier
from tests.models import TinyClassifier

DOC = Path("docs/performance.md")
HEADING = "## AutoAttack: ours against the original, sample by sample"
CACHE = Path("benchmarks/results/cache")


def orientation_dataset(n: int, size: int = 20, classes: int = 10, seed: int = 0):
    """Images (n, 1, size, size) in [0, 1]: a faint anti-aliased bar through a random point, at the angle
    ``pi * label / classes``, in uniform noise; labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = 0.25 + 0.3 * torch.rand(n, 1, size, size, generator=g)
    angle = math.pi * labels.float() / classes
    offset = (torch.rand(n, generator=g) - 0.5) * size / 3
    contrast = 0.12 + 0.15 * torch.rand(n, generator=g)
    distance = (xx[None] * torch.sin(angle)[:, None, None] - yy[None] * torch.cos(angle)[:, None, None]) - offset[
        :, None, None
    ]
    bar = (1.2 - distance.abs()).clamp(0, 1) * contrast[:, None, None]
    return (images + bar[:, None]).clamp(0, 1), labels


def train(model: nn.Module, x, y, epochs: int, eps: float = 0.0, seed: int = 0) -> nn.Module:
    """Adam, mini-batches of 64; with ``eps`` > 0 PGD-AT (7 steps of eps/4, random start)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    attack = PGD(model, eps=eps, steps=7, alpha=eps / 4, random_start=True, seed=None) if eps > 0 else None
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], 64):
            batch = perm[start : start + 64]
            inputs = x[batch] if attack is None else attack(x[batch], y[batch])
            model.train()
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs), y[batch]).backward()
            opt.step()
    return model.eval()


def build_models(tiny: bool, cache: Optional[Path] = CACHE) -> Dict[str, Tuple[nn.Module, float]]:
    """The four models, each with the L-inf budget it is evaluated at: 1/255 for the natural ones, 4/255 for the
    ones trained with PGD-AT at 8/255 (budgets at which their robust accuracy is neither 0 nor near the clean one,
    where the two implementations can differ). Trained weights are kept in ``cache`` (a full run only) and reused
    by the next run of this benchmark or of ``benchmarks.autoattack_fast``."""
    x, y = orientation_dataset(512 if tiny else 3000, seed=0)
    epochs = 1 if tiny else 8
    stored = cache / "orientation_models.pt" if cache is not None and not tiny else None
    weights = torch.load(stored) if stored is not None and stored.exists() else {}
    models = {}
    for name, factory, train_eps, eval_eps in (
        ("cnn, natural", lambda: TinyClassifier(2, 1, 10, width=16), 0.0, 1 / 255),
        ("cnn, PGD-AT", lambda: TinyClassifier(2, 1, 10, width=16), 8 / 255, 4 / 255),
        ("resnet, natural", lambda: small_classifier(1, 10), 0.0, 1 / 255),
        ("resnet, PGD-AT", lambda: small_classifier(1, 10), 8 / 255, 4 / 255),
    ):
        torch.manual_seed(0)
        model = factory()
        if name in weights:
            model.load_state_dict(weights[name])
            model.eval()
        else:
            model = train(model, x, y, epochs, train_eps)
            weights[name] = model.state_dict()
            if stored is not None:
                save_state_dict_atomic(stored, weights)
        models[name] = (model, eval_eps)
    return models


def _correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) == y


def ours_chain(model, x, y, eps, seed, steps, queries) -> torch.Tensor:
    return AutoAttack(model, eps=eps, steps=steps, queries=queries, seed=seed, check=False)(x, y)


def original_chain(model, x, y, eps, seed, steps, queries) -> torch.Tensor:
    import pyautoattack

    reference = pyautoattack.AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=x.device)
    reference.verbose = False
    for attack in (reference.apgd, reference.apgd_targeted, reference.fab):
        attack.n_iter = steps
    reference.square.n_queries = queries
    return reference.run_standard_evaluation(x, y, batch_size=len(x))[0]


def components(steps: int, queries: int) -> Dict[str, Dict[str, Callable]]:
    """Each component of the standard chain, ours and the original, as ``f(model, x, y, eps, seed) -> x_adv``."""
    import pyautoattack.autopgd_base as apgd_original
    import pyautoattack.fab_pt as fab_original
    import pyautoattack.square as square_original

    def original_apgd(model, x, y, eps, seed):
        attack = apgd_original.APGDAttack(
            model, n_restarts=1, n_iter=steps, eps=eps, norm="Linf", rho=0.75, seed=seed, device=x.device, loss="ce"
        )
        return attack.perturb(x, y)

    def original_apgdt(model, x, y, eps, seed):
        attack = apgd_original.APGDAttack_targeted(
            model, n_restarts=1, n_iter=steps, eps=eps, norm="Linf", rho=0.75, seed=seed, device=x.device
        )
        attack.n_target_classes = 9
        return attack.perturb(x, y)

    def original_fabt(model, x, y, eps, seed):
        attack = fab_original.FABAttack_PT(
            model, n_restarts=1, n_iter=steps, eps=eps, norm="Linf", seed=seed, targeted=True, device=x.device
        )
        attack.n_target_classes = 9
        return attack.perturb(x, y)

    def original_square(model, x, y, eps, seed):
        attack = square_original.SquareAttack(
            model, p_init=0.8, n_queries=queries, eps=eps, norm="Linf", n_restarts=1, seed=seed, device=x.device,
            resc_schedule=False,
        )  # fmt: skip
        return attack.perturb(x, y)

    common = {"norm": "Linf"}
    return {
        "apgd-ce": {
            "ours": lambda m, x, y, eps, seed: APGD(m, eps=eps, steps=steps, seed=seed, **common)(x, y),
            "original": original_apgd,
        },
        "apgd-t": {
            "ours": lambda m, x, y, eps, seed: APGDT(m, eps=eps, steps=steps, seed=seed, **common)(x, y),
            "original": original_apgdt,
        },
        "fab-t": {
            "ours": lambda m, x, y, eps, seed: FAB(m, eps=eps, steps=steps, seed=seed, **common)(x, y),
            "original": original_fabt,
        },
        "square": {
            "ours": lambda m, x, y, eps, seed: Square(m, eps=eps, queries=queries, seed=seed, **common)(x, y),
            "original": original_square,
        },
    }


def per_sample_summary(broken_ours: List[torch.Tensor], broken_original: List[torch.Tensor]) -> Dict[str, int]:
    """Counts over samples of how often (over seeds) each implementation broke them."""
    k_ours = torch.stack(broken_ours).sum(dim=0)
    k_orig = torch.stack(broken_original).sum(dim=0)
    seeds = len(broken_ours)
    return {
        "missed": int(((k_orig == seeds) & (k_ours == 0)).sum()),
        "original_more_often": int((k_orig > k_ours).sum()),
        "ours_more_often": int((k_ours > k_orig).sum()),
        "original_seed_variation": int(((k_orig > 0) & (k_orig < seeds)).sum()),
        "ours_seed_variation": int(((k_ours > 0) & (k_ours < seeds)).sum()),
    }


def compare(n: int, seeds: int, steps: int, queries: int, tiny: bool, done: Optional[Callable] = None) -> Dict:
    x, y = orientation_dataset(n, seed=1)
    rows = {}
    for name, (model, eps) in build_models(tiny).items():
        clean = _correct(model, x, y)
        row = {
            "eps": f"{eps * 255:g}/255",
            "clean_accuracy": float(clean.float().mean()),
            "chain": {},
            "components": {},
        }
        broken = {"ours": [], "original": []}
        for implementation, run in (("ours", ours_chain), ("original", original_chain)):
            accs, times = [], []
            for seed in range(seeds):
                start = time.perf_counter()
                x_adv = run(model, x, y, eps, seed, steps, queries)
                times.append(time.perf_counter() - start)
                robust = _correct(model, x_adv, y)
                broken[implementation].append(clean & ~robust)
                accs.append(float(robust.float().mean()))
            row["chain"][implementation] = {"robust_accuracy": accs, "seconds": times}
        row["per_sample"] = per_sample_summary(broken["ours"], broken["original"])
        row["time_ratio_ours_over_original"] = sum(row["chain"]["ours"]["seconds"]) / sum(
            row["chain"]["original"]["seconds"]
        )
        idx = clean.nonzero()[:, 0]
        for component, runs in components(steps, queries).items():
            entry = {}
            for implementation, run in runs.items():
                start = time.perf_counter()
                x_adv = run(model, x[idx], y[idx], eps, 0)
                entry[implementation] = {
                    "robust_accuracy": float(_correct(model, x_adv, y[idx]).float().sum()) / n,
                    "seconds": time.perf_counter() - start,
                }
            row["components"][component] = entry
        rows[name] = row
        print(_model_line(name, row), flush=True)
        if done is not None:  # e.g. write what is measured so far
            done(rows)
    return rows


def _mean(values: List[float]) -> float:
    return sum(values) / len(values)


def _model_line(name: str, row: Dict) -> str:
    ours, orig = row["chain"]["ours"]["robust_accuracy"], row["chain"]["original"]["robust_accuracy"]
    return (
        f"{name:<18} clean {row['clean_accuracy']:.3f}  ours {_mean(ours):.3f} {ours}  original {_mean(orig):.3f} "
        f"{orig}  per sample {row['per_sample']}  time ratio {row['time_ratio_ours_over_original']:.2f}"
    )


def markdown(payload: Dict) -> str:
    lines = [
        HEADING,
        "",
        f'`python -m benchmarks.autoattack_parity`: our `AutoAttack(version="standard")` against the original '
        f"implementation (the `pyautoattack` package), L-inf, {payload['images']} synthetic "
        f"10-class images, {payload['seeds']} seeds per implementation, {payload['steps']} APGD/FAB iterations and "
        f"{payload['queries']} Square queries, on {payload['machine']}.",
        "",
        "| model | L-inf eps | clean | robust acc., ours (mean over seeds) | robust acc., original | missed | original "
        "broke more often | ours broke more often | original's seed-to-seed variation | time ours / original |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in payload["models"].items():
        ours, orig, ps = (
            row["chain"]["ours"]["robust_accuracy"],
            row["chain"]["original"]["robust_accuracy"],
            row["per_sample"],
        )
        lines.append(
            f"| {name} | {row['eps']} | {row['clean_accuracy']:.3f} | "
            f"{_mean(ours):.3f} ({', '.join(f'{a:.3f}' for a in ours)}) | "
            f"{_mean(orig):.3f} ({', '.join(f'{a:.3f}' for a in orig)}) | {ps['missed']} | "
            f"{ps['original_more_often']} | {ps['ours_more_often']} | {ps['original_seed_variation']} | "
            f"{row['time_ratio_ours_over_original']:.2f} |"
        )
    lines += [
        "",
        "*missed*: samples the original broke with every seed and ours with none. *Broke more often*: samples one "
        "implementation broke with more seeds than the other. *Seed-to-seed variation*: samples the original broke "
        "with some of its seeds but not all.",
        "",
        _verdict(payload),
        "",
        "Each component alone (seed 0, robust accuracy over all images, clean errors count as broken):",
        "",
        "| model | APGD-CE ours / original | APGD-T ours / original | FAB-T ours / original | Square ours / original |",
        "|---|---|---|---|---|",
    ]
    for name, row in payload["models"].items():
        parts = [row["components"][c] for c in ("apgd-ce", "apgd-t", "fab-t", "square")]
        cells = [f"{p['ours']['robust_accuracy']:.3f} / {p['original']['robust_accuracy']:.3f}" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdict(payload: Dict) -> str:
    """The criterion, summed over the models."""
    rows = [row["per_sample"] for row in payload["models"].values()]
    missed = sum(r["missed"] for r in rows)
    more = sum(r["original_more_often"] for r in rows)
    variation = sum(r["original_seed_variation"] for r in rows)
    ours_more = sum(r["ours_more_often"] for r in rows)
    verdict = "within" if missed == 0 and more <= variation else "beyond"
    return (
        f"Over all models: {missed} sample(s) missed; the original broke {more} sample(s) more often than ours and "
        f"ours {ours_more} more often than the original, against {variation} sample(s) on which the original's own "
        f"seeds disagree: the difference is {verdict} the original's seed-to-seed variation."
    )


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of test images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per implementation")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--tiny", action="store_true", help="a smoke run (16 images, 2 seeds, 5 steps, 50 queries)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/autoattack_parity.json"))
    parser.add_argument("--doc", type=Path, default=DOC, help="Markdown document to write the section into")
    parser.add_argument("--from-json", type=Path, help="only write the section of an earlier run's JSON to --doc")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        replace_section(args.doc, HEADING, markdown(payload))
        return payload
    if args.tiny:
        args.n, args.seeds, args.steps, args.queries = 16, 2, 5, 50
    payload = {
        "images": args.n,
        "seeds": args.seeds,
        "steps": args.steps,
        "queries": args.queries,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "models": {},
    }

    def save(rows: Dict) -> None:  # after each model, so that a long run leaves its finished models
        payload["models"] = rows
        write_json_atomic(args.out, payload)

    compare(args.n, args.seeds, args.steps, args.queries, args.tiny, done=save)
    if not args.tiny:
        replace_section(args.doc, HEADING, markdown(payload))
    return payload


if __name__ == "__main__":
    main()
