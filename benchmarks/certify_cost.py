# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Images per second of randomized-smoothing certification on the demo bundles' networks, for n = 1,000, 10,000
and 100,000 noise draws per image.

Each cell is ``RandomizedSmoothing(network, sigma=0.25).certify(x, n0=100, n=n, alpha=0.001)`` on test images of
the embedded demo data (for segmentation followed by ``label_map(0.0)``, the per-voxel tests and Holm's
correction): the classification bundle's 2D ResNet on 64x64 images, the segmentation bundle's 3D UNet on 48^3
volumes through its ``SlidingWindowInferer`` (32^3 windows, overlap 0.25: 8 windows per volume), with 32 windows
per network call (``--sw-batch-size``) instead of the bundle's 4, since the noisy copies give many windows. Time:
``time.perf_counter`` around the call (with ``torch.cuda.synchronize`` on CUDA), after one warm-up network call of
``batch_size`` noisy copies.

Sampling dominates and its cost is linear in n0 + n, so cells that would take longer than ``--cell-seconds`` run on
fewer images (the table gives how many), and a cell that does not fit even one image is extrapolated from the time
per noisy copy of the largest n measured (marked ``*``; ``--no-extrapolation`` runs it anyway).

Usage (from the repository root)::

    python -m benchmarks.certify_cost                            # CPU (or CUDA when present), prints the table
    python -m benchmarks.certify_cost --device cuda --no-extrapolation
    python -m benchmarks.certify_cost --doc docs/certification.md     # also (re)writes the doc's "Cost" section
    python -m benchmarks.certify_cost --from-json benchmarks/results/certify_cost.json --doc docs/certification.md
    python -m benchmarks.certify_cost --tiny                     # smoke run: small n, one image
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.doc_sections import replace_section
from benchmarks.machine import load_average, machine_with_device
from monai_adv.apps.sources import load_bundle
from monai_adv.attacks import InfererModel
from monai_adv.benchmark.io import write_json_atomic
from monai_adv.certify import RandomizedSmoothing
from monai_adv.data import BrainLesionDataset

SECTION = "## Cost"
NETWORKS = ("classification", "segmentation")
BUNDLES = {
    "classification": Path("bundles/brain_lesion_robust_classification"),
    "segmentation": Path("bundles/brain_lesion_robust_segmentation"),
}
DRAWS = (1_000, 10_000, 100_000)
N0, ALPHA, SIGMA = 100, 0.001, 0.25
#: images per cell at most (fewer when the cell would take longer than --cell-seconds)
IMAGES = {"classification": 16, "segmentation": 1}


def build(
    name: str, device: torch.device, images: int, sw_batch_size: Optional[int] = None
) -> Tuple[torch.nn.Module, torch.Tensor, str]:
    """The bundle's network (through its sliding-window inferer for segmentation, with ``sw_batch_size`` windows per
    network call instead of the bundle's when given), demo test images, and their description."""
    network, parser = load_bundle(BUNDLES[name])
    network = network.to(device).eval()
    if name == "segmentation":
        inferer = parser.get_parsed_content("inferer")
        if sw_batch_size is not None:
            inferer.sw_batch_size = sw_batch_size
        model = InfererModel(network, inferer)
        data = BrainLesionDataset("test", "segmentation", 3, num_samples=images)
    else:
        model = network
        data = BrainLesionDataset("test", "classification", 2, num_samples=images)
    x = torch.stack([data[i]["image"].as_subclass(torch.Tensor) for i in range(images)]).float().to(device)
    size = "x".join(str(s) for s in x.shape[2:])
    if name == "segmentation":
        roi = "x".join(str(s) for s in inferer.roi_size)
        return model, x, f"3D UNet, {size}, {roi} windows, {inferer.sw_batch_size} per call"
    return model, x, f"2D ResNet, {size}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_certify(rs: RandomizedSmoothing, x: torch.Tensor, n0: int, n: int, segmentation: bool) -> float:
    """Seconds of one certification of the batch ``x`` (and its label map at radius 0 for segmentation)."""
    _sync(x.device)
    start = time.perf_counter()
    cert = rs.certify(x, n0=n0, n=n, alpha=ALPHA)
    if segmentation:
        cert.label_map(0.0)
    _sync(x.device)
    return time.perf_counter() - start


def measure_network(name: str, options: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The cells of one network, smallest n first (see the module's docstring)."""
    device = torch.device(options["device"])
    segmentation = name == "segmentation"
    most = 1 if options["tiny"] else IMAGES[name]
    model, x, description = build(name, device, most, options.get("sw_batch_size"))
    batch_size = options["batch_size"][name]
    rs = RandomizedSmoothing(model, SIGMA, batch_size=batch_size, seed=0)
    rs.predict(x[:1], n=min(batch_size, 2 if options["tiny"] else batch_size))  # warm-up: one network call
    rows: List[Dict[str, Any]] = []
    per_copy: Optional[float] = None  # seconds per noisy copy of one image, at the largest n measured so far
    measured_n: Optional[int] = None
    n0 = options["n0"]
    for n in options["draws"]:
        row: Dict[str, Any] = {"network": name, "input": description, "n0": n0, "n": n, "batch_size": batch_size}
        estimate = None if per_copy is None else per_copy * (n0 + n)  # seconds per image
        images = most
        if estimate is not None:
            images = min(most, int(options["cell_seconds"] // estimate))
        if images < 1 and not options["no_extrapolation"]:
            row.update(images=0, seconds_per_image=estimate, extrapolated=True, per_copy_from=measured_n)
        else:
            images = max(images, 1)
            seconds = time_certify(rs, x[:images], n0, n, segmentation)
            per_copy, measured_n = seconds / (images * (n0 + n)), n
            row.update(images=images, seconds=seconds, seconds_per_image=seconds / images, extrapolated=False)
        row["images_per_second"] = 1.0 / row["seconds_per_image"]
        row["network_passes_per_second"] = (n0 + n) / row["seconds_per_image"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _rate(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _seconds(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(payload: Dict[str, Any]) -> str:
    """The doc's section: the table and how it was measured."""
    rows = payload["results"]
    lines = [
        SECTION,
        "",
        f"Measured by `{payload['command']}` on {payload['machine']} ({payload['device']}, torch {payload['torch']}, "
        f"torch threads: {payload['threads']}; 1-minute load average {payload['load_average'][0]} at the start and "
        f"{payload['load_average'][1]} at the end, other processes included). Each cell certifies demo test images "
        f"with `certify(x, n0={payload['n0']}, n=n, alpha={payload['alpha']})` at sigma {payload['sigma']} "
        "(segmentation: and the label map at radius 0); the network runs on `n0 + n` noisy copies of each image, "
        "in calls of `batch_size` copies.",
        "",
        "| network | input | batch_size | n | images timed | seconds per image | images per second | "
        "network passes per second |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        star = "*" if r["extrapolated"] else ""
        timed = str(r["images"]) if not r["extrapolated"] else "none"
        lines.append(
            f"| {r['network']} | {r['input']} | {r['batch_size']} | {r['n']:,} | {timed} | "
            f"{_seconds(r['seconds_per_image'])}{star} | {_rate(r['images_per_second'])}{star} | "
            f"{_rate(r['network_passes_per_second'])}{star} |"
        )
    lines += [
        "",
        f"Cells that would take longer than {payload['cell_seconds']:g} s ran on fewer images (the "
        '"images timed" column); `*`: not run, extrapolated from the seconds per noisy copy of the largest n '
        "measured for that network (sampling is linear in n0 + n; the statistics take milliseconds). "
        f"The run took {payload.get('wall_seconds', 0) / 60:.0f} minutes.",
        "",
        "On a GPU: `python -m benchmarks.certify_cost --device cuda --no-extrapolation` (every cell run; raise "
        "`--batch-size-segmentation` as far as the GPU's memory allows).",
    ]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str) -> None:
    """Replace this script's section of ``doc`` (from its heading to the next ``## `` heading), or append it."""
    replace_section(doc, SECTION, section)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--draws", nargs="+", type=int, default=list(DRAWS), help="values of n, increasing")
    parser.add_argument("--batch-size-classification", type=int, default=1000)
    parser.add_argument("--batch-size-segmentation", type=int, default=None, help="default 32 (CPU), 128 (CUDA)")
    parser.add_argument(
        "--sw-batch-size", type=int, default=32, help="sliding windows per network call (the bundle has 4)"
    )
    parser.add_argument("--cell-seconds", type=float, default=600.0, help="time one cell may take")
    parser.add_argument("--no-extrapolation", action="store_true", help="run every cell")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="smoke run: one image, n = 2 and 4, small batches")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/certify_cost[_cuda].json")
    parser.add_argument("--doc", type=Path, default=None, help="write the section into this Markdown file")
    parser.add_argument("--from-json", type=Path, default=None, help="only write the doc from earlier results")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = str(torch.device(args.device))
        seg_batch = args.batch_size_segmentation or (128 if device.startswith("cuda") else 32)
        options = {
            "device": device,
            "draws": sorted(args.draws) if not args.tiny else [2, 4],
            "batch_size": {"classification": args.batch_size_classification, "segmentation": seg_batch},
            "cell_seconds": args.cell_seconds,
            "no_extrapolation": args.no_extrapolation,
            "tiny": args.tiny,
            "n0": 2 if args.tiny else N0,
            "sw_batch_size": args.sw_batch_size,
        }
        if args.tiny:
            options["batch_size"] = {"classification": 8, "segmentation": 2}
        load_start, start = load_average(), time.perf_counter()
        results = [row for name in args.networks for row in measure_network(name, options)]
        payload = {
            "command": "python -m benchmarks.certify_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_with_device(device),
            "device": device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cell_seconds": args.cell_seconds,
            "n0": options["n0"],
            "alpha": ALPHA,
            "sigma": SIGMA,
            "load_average": [load_start, load_average()],
            "wall_seconds": time.perf_counter() - start,
            "results": results,
        }
        out = args.out or Path(
            "benchmarks/results/certify_cost" + ("_cuda" if device.startswith("cuda") else "") + ".json"
        )
        if not args.tiny or args.out is not None:
            write_json_atomic(out, payload)
    section = markdown(payload)
    print(section)
    if args.doc is not None:
        write_section(args.doc, section)
    return payload


if __name__ == "__main__":
    main()
