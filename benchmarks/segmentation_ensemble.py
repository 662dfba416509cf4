# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Mean per-image Dice under the segmentation attack ensemble (SEA) against AutoAttack's segmentation chain and each
of the ensemble's losses alone, with the forward+backward passes and the wall time of each.

Two segmentation models, both adversarially trained on the Dice loss at L-inf 4/255 on the embedded demo data:

- "3D bundle": the network and weights of ``bundles/brain_lesion_robust_segmentation`` (a 3D MONAI UNet) through
  the bundle's ``SlidingWindowInferer`` (an :class:`~monai_adv.attacks.InfererModel`), on the first test volumes of
  the bundle's demo data (``BrainLesionDataset("test", "segmentation", 3, image_size=32)``);
- "2D UNet": a small 2D MONAI UNet trained here (seeded) on 64x64 demo slices: natural training, then PGD-AT (3 steps
  on the Dice loss, eps 4/255), as the bundle was; evaluated on the first test slices.

Attacks, at L-inf eps 4/255 (the bundles' training budget) and 8/255, value range [0, 1], seed 0, all at the same
fraction ``--scale`` of their default budgets (default a tenth, so that the run takes about ten minutes on two CPU
cores): ``AutoAttack(version="standard")`` on the segmentation task (APGD-CE and APGD-Dice with ``100 * scale``
steps, then Square with ``5000 * scale`` queries, each on the images not yet broken), ``SegmentationEnsemble`` with
``200 * scale`` steps per loss, the same without the radius reduction (every step at eps), and the ensemble
restricted to each of its losses. Passes are counted per image on the
model: forward+backward (a gradient step) and forward only (Square's queries, the clean pass and final checks).
Dice is measured on the returned examples by one more forward pass (not counted).

Usage (from the repository root)::

    python -m benchmarks.segmentation_ensemble                       # CPU (or CUDA when present), prints the table
    python -m benchmarks.segmentation_ensemble --doc docs/evaluation.md   # also (re)writes the doc's section
    python -m benchmarks.segmentation_ensemble --from-json benchmarks/results/segmentation_ensemble.json \\
        --doc docs/evaluation.md
    python -m benchmarks.segmentation_ensemble --tiny                # smoke run: tiny budgets, two images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from benchmarks.doc_sections import replace_section
from benchmarks.machine import load_average, machine_with_device
from monai_adv.apps.sources import load_bundle
from monai_adv.attacks import AutoAttack, InfererModel, SegmentationEnsemble
from monai_adv.attacks.sea import DEFAULT_LOSSES, DEFAULT_SCHEDULE
from monai_adv.attacks.tasks import hard_dice
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.data import BrainLesionDataset

SECTION = "## Segmentation attack ensemble"
BUNDLE = Path("bundles/brain_lesion_robust_segmentation")
SETUPS = ("3d_bundle", "2d_unet")
EPS = (4, 8)  # in 1/255
#: how the table names the attacks (the others by their key)
NAMES = {"autoattack": "AutoAttack chain", "sea": "**SEA**", "sea_no_prr": "SEA without radius reduction"}
#: images per setup (the first of the test split)
IMAGES = {"3d_bundle": 10, "2d_unet": 32}


class PassCounter(nn.Module):
    """Counts the images the wrapped model runs: with an input that requires grad (an attack's gradient step: a
    forward and a backward pass), and without (a forward pass only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.gradient, self.forward_only = 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            self.gradient += x.shape[0]
        else:
            self.forward_only += x.shape[0]
        return self.model(x)


def _stack(data: BrainLesionDataset, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([s["image"].as_subclass(torch.Tensor) for s in data]).float().to(device)
    labels = torch.stack([s["label"].as_subclass(torch.Tensor) for s in data]).round().long().to(device)
    return images, labels


def bundle_model(images: int, device: torch.device) -> Tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """The 3D bundle's network through its sliding-window inferer, and its first demo test volumes."""
    network, parser = load_bundle(BUNDLE)
    inferer = parser.get_parsed_content("inferer")
    model = InfererModel(network.to(device).eval(), inferer)
    x, y = _stack(BrainLesionDataset("test", "segmentation", 3, num_samples=images, image_size=32), device)
    roi = "x".join(str(s) for s in inferer.roi_size)
    return model, x, y, f"3D UNet of the bundle, {'x'.join(map(str, x.shape[2:]))} volumes, {roi} sliding windows"


def trained_unet_2d(images: int, device: torch.device, tiny: bool) -> Tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """A small 2D MONAI UNet trained here on demo slices (natural epochs, then PGD-AT epochs), and test slices."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from monai_adv.defenses import PGDAT

    natural, adversarial, train_images = (1, 1, 64) if tiny else (8, 3, 512)
    x, y = _stack(BrainLesionDataset("train", "segmentation", 2, num_samples=train_images), device)
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(16, 32, 64), strides=(2, 2), num_res_units=1).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    pgd_at = PGDAT(eps=4 / 255, steps=3, loss="dice", task="segmentation")
    net.train()
    for epoch in range(natural + adversarial):
        order = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], 32):
            batch = order[start : start + 32].to(device)
            optimizer.zero_grad()
            if epoch < natural:
                loss = criterion(net(x[batch]), y[batch])
            else:
                loss, _ = pgd_at(net, x[batch], y[batch], seed=epoch * 1000 + start)
            loss.backward()
            optimizer.step()
    x_test, y_test = _stack(BrainLesionDataset("test", "segmentation", 2, num_samples=images), device)
    description = (
        f"2D UNet (16, 32, 64) trained here: {natural} natural + {adversarial} PGD-AT epochs on {train_images} "
        f"slices, {'x'.join(map(str, x_test.shape[2:]))}"
    )
    return net.eval(), x_test, y_test, description


def dice_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hard_dice(model(x).argmax(dim=1), y[:, 0], 2).cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_attack(
    name: str, cls: type, kwargs: Dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Dict[str, Any]:
    """One attack ``cls(model, **kwargs)`` on the batch: per-image Dice of its examples, passes per image, seconds."""
    counter = PassCounter(model)
    attack = cls(counter, **kwargs)
    _sync(x.device)
    start = time.perf_counter()
    result = attack.perturb(x, y)
    _sync(x.device)
    seconds = time.perf_counter() - start
    dice = dice_of(model, result.x_adv, y)
    n = x.shape[0]
    row = {
        "attack": name,
        "mean_dice": float(dice.mean()),
        "dice": [round(float(d), 6) for d in dice],
        "forward_backward_per_image": counter.gradient / n,
        "forward_per_image": counter.forward_only / n,
        "seconds": seconds,
        "success_rate": float(result.success.float().mean()),
    }
    if "lowest_by" in result.details:
        row["lowest_by"] = result.details["lowest_by"]
    print(json.dumps({k: v for k, v in row.items() if k not in ("dice", "lowest_by")}), flush=True)
    return row


def measure_setup(setup: str, options: Dict[str, Any]) -> Dict[str, Any]:
    device = torch.device(options["device"])
    images = 2 if options["tiny"] else options["images"][setup]
    start = time.perf_counter()
    if setup == "3d_bundle":
        model, x, y, description = bundle_model(images, device)
    else:
        model, x, y, description = trained_unet_2d(images, device, options["tiny"])
    prepare_seconds = time.perf_counter() - start
    clean = dice_of(model, x, y)
    scale = options["scale"]
    chain_steps, queries, steps = max(round(100 * scale), 1), max(round(5000 * scale), 2), max(round(200 * scale), 1)
    out: Dict[str, Any] = {
        "model": description,
        "images": images,
        "images_with_lesion": int((y.flatten(1).sum(dim=1) > 0).sum()),
        "prepare_seconds": prepare_seconds,
        "clean_mean_dice": float(clean.mean()),
        "clean_dice": [round(float(d), 6) for d in clean],
        "budgets": {"chain_steps": chain_steps, "square_queries": queries, "sea_steps_per_loss": steps},
        "by_eps": {},
    }
    for eps_255 in options["eps"]:
        eps = eps_255 / 255
        common = {"eps": eps, "norm": "Linf", "value_range": (0.0, 1.0), "seed": 0}
        chain_kwargs = {"version": "standard", "steps": chain_steps, "queries": queries, "task": "segmentation"}
        attacks: List[Tuple[str, type, Dict[str, Any]]] = [
            ("autoattack", AutoAttack, {**chain_kwargs, "check": False, **common}),
            ("sea", SegmentationEnsemble, {"steps": steps, **common}),
            ("sea_no_prr", SegmentationEnsemble, {"steps": steps, "schedule": ((1.0, 1.0),), **common}),
        ]
        attacks += [
            (f"sea[{loss}]", SegmentationEnsemble, {"steps": steps, "losses": [loss], **common})
            for loss in DEFAULT_LOSSES
        ]
        rows = [run_attack(name, cls, kwargs, model, x, y) for name, cls, kwargs in attacks]
        chain, sea = rows[0]["dice"], rows[1]["dice"]
        out["by_eps"][str(eps_255)] = {
            "rows": rows,
            "sea_higher_than_chain": sum(1 for s, c in zip(sea, chain) if s > c + 1e-12),
            "sea_lower_than_chain": sum(1 for s, c in zip(sea, chain) if s < c - 1e-12),
        }
    return out


def _passes(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")


def markdown(payload: Dict[str, Any]) -> str:
    """The doc's section: what the ensemble does, the table and how it was measured."""
    schedule = ", ".join(f"{factor:g} eps for {share:.0%}" for factor, share in DEFAULT_SCHEDULE)
    lines = [
        SECTION,
        "",
        '`SegmentationEnsemble` (`make_attack("sea", ...)`) is the segmentation attack ensemble of Croce, Singh & '
        "Hein (ECCV 2024) with Dice as the metric: APGD on each of five losses - masked cross-entropy (only the "
        "voxels still classified correctly count), class-balanced masked cross-entropy (each voxel weighted by the "
        "inverse frequency of its class in the label map, so a small lesion weighs as much as the background), the "
        "Jensen-Shannon divergence between the prediction and the one-hot label map (bounded: flipped voxels stop "
        "pulling), the masked spherical loss (minus the label's coordinate of the normalised logit vector, on the "
        "correct voxels) and the soft Dice loss - and per image the example of lowest Dice over the losses, also "
        "for the images no loss breaks. Each loss runs with progressive radius reduction: its steps are split over "
        f"the radii {schedule} of the steps, each stage restarting APGD from the previous stage's lowest-Dice point "
        "projected onto the smaller ball; only the last stage (eps itself) is returned. Defaults: 200 steps per "
        "loss, 5 x (200 + 3) = 1015 forward+backward passes per image at most, against AutoAttack's segmentation "
        "chain's 2 x 101 forward+backward and 5000 forward passes (Square). Under AutoAttack a later attack only "
        "runs on the images earlier ones did not break, and an unbroken image keeps APGD-CE's point; the ensemble "
        "keeps, per image, the lowest Dice any loss found: what an evaluation that reports Dice under attack needs.",
        "",
        f"Measured by `{payload['command']}` on {payload['machine']} ({payload['device']}, torch {payload['torch']}, "
        f"torch threads: {payload['threads']}; 1-minute load average {payload['load_average'][0]} at the start and "
        f"{payload['load_average'][1]} at the end, other processes included), in {payload['wall_seconds'] / 60:.0f} "
        f"minutes. Every attack at a fraction {payload['scale']:g} of its default budget (seed 0, L-inf, range "
        "[0, 1]); mean per-image Dice (foreground) of the returned examples; passes per image counted on the model "
        "(forward+backward: gradient steps; forward: Square's queries, clean passes and final checks).",
        "",
    ]
    for setup, result in payload["results"].items():
        budgets = result["budgets"]
        lines += [
            f"**{setup}**: {result['model']}; {result['images']} test images ({result['images_with_lesion']} with a "
            f"lesion), clean mean Dice {result['clean_mean_dice']:.3f}. Chain: APGD-CE and APGD-Dice "
            f"{budgets['chain_steps']} steps, Square {budgets['square_queries']} queries; ensemble: "
            f"{budgets['sea_steps_per_loss']} steps per loss.",
            "",
            "| eps | attack | mean Dice | forward+backward per image | forward per image | seconds |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for eps_255, block in result["by_eps"].items():
            for row in block["rows"]:
                name = NAMES.get(row["attack"], row["attack"])
                lines.append(
                    f"| {eps_255}/255 | {name} | {row['mean_dice']:.3f} | {_passes(row['forward_backward_per_image'])} "
                    f"| {_passes(row['forward_per_image'])} | {row['seconds']:.1f} |"
                )
        lines.append("")
        lines.append(
            "Images where the ensemble's Dice is higher than the chain's: "
            + "; ".join(
                f"{block['sea_higher_than_chain']} of {result['images']} at {eps_255}/255 "
                f"(lower: {block['sea_lower_than_chain']})"
                for eps_255, block in result["by_eps"].items()
            )
            + ".",
        )
        lines.append("")
    gaps = [
        abs(rows["sea"]["mean_dice"] - rows["sea_no_prr"]["mean_dice"])
        for result in payload["results"].values()
        for rows in ({row["attack"]: row for row in block["rows"]} for block in result["by_eps"].values())
        if "sea_no_prr" in rows
    ]
    if gaps:
        lines += [
            f"On these models and budgets the radius reduction changes the ensemble's mean Dice by at most "
            f"{max(gaps):.3f} (the two SEA rows): both find nearly the same worst cases here; the schedule follows "
            "the paper, which introduced it for large robust models attacked with 300 iterations per loss.",
            "",
        ]
    lines += [
        "`sea[loss]` is the ensemble restricted to one loss (the same schedule and steps): the ensemble's Dice is, "
        'per image, the lowest of these. "SEA without radius reduction" runs every loss\'s steps at eps itself '
        "(`schedule=((1.0, 1.0),)`). The chain's passes include Square's queries on the images APGD did not break; "
        "the ensemble stops an image only at Dice 0.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument("--eps", nargs="+", type=float, default=list(EPS), help="L-inf budgets in 1/255")
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the attacks' default budgets")
    parser.add_argument("--images-3d", type=int, default=IMAGES["3d_bundle"])
    parser.add_argument("--images-2d", type=int, default=IMAGES["2d_unet"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: two images, tiny budgets and training")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/segmentation_ensemble.json")
    parser.add_argument("--doc", type=Path, default=None, help="write the section into this Markdown file")
    parser.add_argument("--from-json", type=Path, default=None, help="only write the doc from earlier results")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = str(torch.device(args.device))
        options = {
            "device": device,
            "eps": [int(e) if float(e).is_integer() else e for e in args.eps],
            "scale": 0.01 if args.tiny else args.scale,
            "images": {"3d_bundle": args.images_3d, "2d_unet": args.images_2d},
            "tiny": args.tiny,
        }
        load_start, start = load_average(), time.perf_counter()
        results = {setup: measure_setup(setup, options) for setup in args.setups}
        payload = {
            "command": "python -m benchmarks.segmentation_ensemble "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_with_device(device),
            "device": device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "scale": options["scale"],
            "load_average": [load_start, load_average()],
            "wall_seconds": time.perf_counter() - start,
            "results": results,
        }
        out = args.out or Path("benchmarks/results/segmentation_ensemble.json")
        if not args.tiny or args.out is not None:
            write_json_atomic(out, payload)
    section = markdown(payload)
    print(section)
    if args.doc is not None:
        replace_section(args.doc, SECTION, section)
    return payload


if __name__ == "__main__":
    main()
