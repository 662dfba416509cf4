# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Seconds per image and peak memory of FGSM, PGD-20, APGD-CE, AutoAttack (standard) and Square-5000 on the
survey's architectures at full size: DenseNet-121, ResNet-18 and EfficientNet-B0 at 224x224 with 1 and 3 channels,
a 3D UNet and SegResNet on 96^3 volumes through SlidingWindowInferer (``benchmarks.full_size_networks``).

A cost table, not a robustness result: the networks are untrained (fixed seed) and every attack runs its whole
budget on every image (``early_stop=False``), as on a network that no attack breaks. AutoAttack standard is
measured the same way, as the sum of its attacks each on every image for its full budget (APGD-CE, APGD-T and
FAB-T over 9 target classes, Square-5000; for segmentation APGD-CE, APGD-Dice and Square-5000): the cost of a run
in which no sample is broken early. The 2D networks have 10 classes so that APGD-T and FAB-T run all 9 targets.

Each cell (network x attack) runs in a fresh process. Time: ``time.perf_counter`` around the attack (with
``torch.cuda.synchronize`` on CUDA), after one warm-up forward+backward pass. Memory, CPU: the rise of the peak
resident set size (VmHWM, reset through ``/proc/self/clear_refs`` once the network, the batch and the warm-up pass
are in place) over the resident size at that point, with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the resident memory; CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, over the memory allocated at that point.

Long attacks are measured in part and extrapolated: each attack runs once with its smallest budget (1 step, 2
queries) and once with as many steps or queries as fit ``--cell-seconds`` (at least 3 more); when that is less than
the full budget, the full cost is the straight line through the two runs (a fixed cost plus a cost per step or
query), and the table marks it. APGD-T and FAB-T are then measured on one of their 9 target classes and the cost
multiplied by 9 (each target class is a separate run of the same length on every image; the peak memory is that
of one). ``--no-extrapolation`` runs every budget in full (for GPUs).

Usage (from the repository root)::

    python -m benchmarks.full_size_cost                       # CPU (or CUDA when present), prints the table
    python -m benchmarks.full_size_cost --device cuda --no-extrapolation
    python -m benchmarks.full_size_cost --quick               # a faster subset
    python -m benchmarks.full_size_cost --doc docs/performance.md   # also (re)writes the doc's section
    python -m benchmarks.full_size_cost --from-json benchmarks/results/full_size_cost.json --doc docs/performance.md
    python -m benchmarks.full_size_cost --resume ...          # keeps the cells already in --out, measures the rest
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.doc_sections import replace_section
from benchmarks.full_size_networks import build_setup, network_names
from benchmarks.machine import processor
from monai_adv.attacks import eval_view, make_attack
from monai_adv.benchmark.io import write_json_atomic

ATTACKS = ("FGSM", "PGD-20", "APGD-CE", "AutoAttack standard", "Square-5000")
QUICK_NETWORKS = ("resnet18-1ch", "efficientnet_b0-3ch", "unet3d")
EPS = 4 / 255
MIN_STEPS_APART = 3
SECTION = "## Full-size networks"


@dataclass
class Part:
    """One attack run: ``name`` registered, with ``kwargs``; ``budget`` is the argument that sets its length
    ("steps" or "queries", None for FGSM) and ``full`` the length the table reports."""

    label: str
    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    budget: Optional[str] = None
    full: int = 1
    # when extrapolating: run with these overrides and multiply the cost by ``scale`` (APGD-T and FAB-T: one
    # target class of the 9, each target class being a separate run of the same length on every image)
    measured: Dict[str, Any] = field(default_factory=dict)
    scale: int = 1

    @property
    def smallest(self) -> int:
        return 2 if self.budget == "queries" else 1


def parts(attack: str, segmentation: bool) -> List[Part]:
    """The runs that make up ``attack``, every one on every image for its whole budget."""
    common: Dict[str, Any] = {"eps": EPS, "seed": 0}
    full = {**common, "early_stop": False}
    square = Part("square", "square", full, "queries", 5000)
    if attack == "FGSM":
        return [Part("fgsm", "fgsm", common)]
    if attack == "PGD-20":
        return [Part("pgd", "pgd", {**full, "alpha": 1 / 255}, "steps", 20)]
    if attack == "APGD-CE":
        return [Part("apgd-ce", "apgd_ce", full, "steps", 100)]
    if attack == "Square-5000":
        return [square]
    if attack == "AutoAttack standard":  # monai_adv.attacks.AutoAttack's standard chain, nothing broken early
        if segmentation:
            return [
                Part("apgd-ce", "apgd_ce", full, "steps", 100),
                Part("apgd-dice", "apgd", {**full, "loss": "dice"}, "steps", 100),
                square,
            ]
        return [
            Part("apgd-ce", "apgd_ce", full, "steps", 100),
            Part("apgd-t", "apgd_t", {**full, "target_classes": 9}, "steps", 100, {"target_classes": 1}, 9),
            Part("fab-t", "fab_t", {**full, "target_classes": 9}, "steps", 100, {"target_classes": 1}, 9),
            square,
        ]
    raise ValueError(f"unknown attack {attack!r}; one of {ATTACKS}")


# ---- memory ----


def _status_kb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False where the system does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak memory above what is in use at :meth:`start`: CUDA allocations, or the resident set on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0.0
        self.method = ""

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated - memory_allocated at start"
            return
        reset = _reset_peak_rss()
        self.base = _status_kb("VmRSS") / 1024
        self.method = "VmHWM (reset) - VmRSS at start" if reset else "VmHWM (not resettable here) - VmRSS at start"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        return _status_kb("VmHWM") / 1024 - self.base


# ---- one cell ----


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fit(first: Tuple[int, float], second: Tuple[int, float], full: int) -> Tuple[float, float]:
    """The full cost on the straight line through two runs (length, seconds), and the cost per step or query."""
    (n1, t1), (n2, t2) = first, second
    per = (t2 - t1) / (n2 - n1)
    if per <= 0:  # noise larger than the difference: charge the whole second run per step
        per = t2 / n2
    fixed = max(t2 - per * n2, 0.0)
    return fixed + per * full, per


def measure_cell(network: str, attack: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Time and peak memory of ``attack`` on ``network`` in this process (see the module's docstring)."""
    device = torch.device(options["device"])
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    setup = build_setup(network, device=str(device), **options["shape"])
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    handle = setup.network.register_forward_hook(count)  # per network call (per window batch in 3D)
    x = setup.x.clone().requires_grad_(True)  # warm-up: one forward+backward pass for the input gradient
    torch.autograd.grad(eval_view(setup.model)(x).float().sum(), x)
    del x
    _sync(device)
    memory = PeakMemory(device)
    memory.start()

    def run(part: Part, length: Optional[int], overrides: Optional[Dict[str, Any]] = None) -> Tuple[float, int]:
        kwargs = {**part.kwargs, **(overrides or {})}
        if part.budget is not None:
            kwargs[part.budget] = length
        attack_ = make_attack(part.name, setup.model, **kwargs)
        calls[0] = 0
        _sync(device)
        start = time.perf_counter()
        attack_.perturb(setup.x, setup.y)
        _sync(device)
        return time.perf_counter() - start, calls[0]

    rows = []
    for part in parts(attack, setup.segmentation):
        row: Dict[str, Any] = {"part": part.label, "budget": part.budget, "full": part.full, "runs": []}
        if part.budget is None or options["no_extrapolation"]:
            seconds, passes = run(part, part.full)
            row["runs"].append({"length": part.full, "seconds": seconds, "network_calls": passes})
            row.update(seconds=seconds, extrapolated=False, seconds_per_step=None)
            rows.append(row)
            continue
        n1 = part.smallest
        t1, p1 = run(part, n1, part.measured)
        row["runs"].append({"length": n1, "seconds": t1, "network_calls": p1, **part.measured})
        # the longer run: as long as fits cell_seconds, and at least MIN_STEPS_APART more steps or queries, so
        # that the cost per step is a difference over several of them
        n2 = min(part.full, max(n1 + MIN_STEPS_APART, int(n1 * options["cell_seconds"] / max(t1, 1e-9))))
        if n2 == part.full:  # short enough to run in full, every target class included
            t2, p2 = run(part, n2)
            row["runs"].append({"length": n2, "seconds": t2, "network_calls": p2})
            per = (t2 - t1) / (n2 - n1) if not part.measured else None
            row.update(seconds=t2, extrapolated=False, seconds_per_step=per, scale=1)
        else:
            t2, p2 = run(part, n2, part.measured)
            row["runs"].append({"length": n2, "seconds": t2, "network_calls": p2, **part.measured})
            total, per = _fit((n1, t1), (n2, t2), part.full)
            row.update(seconds=part.scale * total, extrapolated=True, seconds_per_step=part.scale * per)
            row["scale"] = part.scale
        rows.append(row)
    peak = memory.peak_mb()
    handle.remove()
    images = setup.x.shape[0]
    seconds = sum(r["seconds"] for r in rows)
    return {
        "network": network,
        "attack": attack,
        "input": setup.description,
        "images": images,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "seconds_per_image": seconds / images,
        "extrapolated": any(r["extrapolated"] for r in rows),
        "peak_mb": peak,
        "memory_method": memory.method,
        "parts": rows,
    }


def _child_command(network: str, attack: str, options: Dict[str, Any]) -> List[str]:
    return [sys.executable, "-m", "benchmarks.full_size_cost", "--child", json.dumps([network, attack, options])]


def run_cell(network: str, attack: str, options: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
    """One cell in a fresh process (or in this one with ``in_process``), so that cells share no allocator cache."""
    if options.get("in_process"):
        return measure_cell(network, attack, options)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    try:
        out = subprocess.run(
            _child_command(network, attack, options), capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"network": network, "attack": attack, "skipped": "ran past the time limit"}
    if out.returncode != 0:
        return {"network": network, "attack": attack, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report ----


def machine(device: str) -> str:
    name = processor()
    text = f"{name}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def _cell_text(row: Optional[dict], key: str) -> str:
    if row is None:
        return ""
    if "seconds" not in row:
        return "skipped" if "skipped" in row else "failed"
    value = row[key]
    if key != "seconds_per_image":
        return f"{value:.0f}"
    text = f"{value:.2f}" if value < 10 else (f"{value:.1f}" if value < 100 else f"{value:,.0f}")
    return text + ("*" if row["extrapolated"] else "")


def markdown(payload: Dict[str, Any]) -> str:
    """The doc's section: the two tables and how they were measured."""
    cells = {(r["network"], r["attack"]): r for r in payload["results"]}
    networks = list(dict.fromkeys(r["network"] for r in payload["results"]))
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in payload["results"])]
    inputs = {r["network"]: r.get("input", "") for r in payload["results"] if "input" in r}
    lines = [
        SECTION,
        "",
        f"Measured by `{payload['command']}` on {payload['machine']} ({payload['device']}, torch {payload['torch']}, "
        f"torch threads: {payload['threads']}; 1-minute load average {payload['load_average'][0]} at the start and "
        f"{payload['load_average'][1]} at the end, other processes included).",
        "A cost table, not a robustness result: untrained networks (seed 0), eps 4/255, every attack on every image "
        "for its whole budget (`early_stop=False`), as on a network that no attack breaks; AutoAttack standard is "
        "the sum of its attacks run so (APGD-CE, APGD-T and FAB-T over 9 target classes of 10, Square-5000; "
        "segmentation: APGD-CE, APGD-Dice, Square-5000). 3D: whole volumes through `SlidingWindowInferer` and "
        f"`InfererModel`. The run took {payload.get('wall_seconds', 0) / 60:.0f} minutes.",
        "",
        "Seconds per image, per volume for the 3D networks (`*`: extrapolated from two shorter runs, 1 step or 2 "
        "queries and as many as fit "
        f"{payload['cell_seconds']:g} s (at least 3 more), to the full budget along the straight line through them; "
        "APGD-T and FAB-T from one of their 9 target classes, times 9; the JSON keeps both runs and the cost per "
        "step or query):",
        "",
        "| network | input | " + " | ".join(attacks) + " |",
        "| --- | --- | " + " | ".join("---" for _ in attacks) + " |",
    ]
    for net in networks:
        values = [_cell_text(cells.get((net, a)), "seconds_per_image") for a in attacks]
        lines.append(f"| {net} | {inputs.get(net, '')} | " + " | ".join(values) + " |")
    lines += [
        "",
        "The 1- and 3-channel networks of an architecture differ in their first convolution only, so they should "
        "cost the same: the spread between their rows is the measurement noise (other processes share the "
        "machine; an extrapolated cell multiplies the noise of a few steps by the budget).",
        "",
        "Peak memory (MB) above the network, the batch and a warm-up pass, "
        + ("each cell in this one process" if payload.get("in_process") else "each cell in a fresh process")
        + f" ({payload['memory_method']}):",
        "",
        "| network | " + " | ".join(attacks) + " |",
        "| --- | " + " | ".join("---" for _ in attacks) + " |",
    ]
    for net in networks:
        values = [_cell_text(cells.get((net, a)), "peak_mb") for a in attacks]
        lines.append(f"| {net} | " + " | ".join(values) + " |")
    lines += [
        "",
        "On a GPU: `python -m benchmarks.full_size_cost --device cuda --no-extrapolation` (the same table, every "
        "budget run in full, memory from `torch.cuda.max_memory_allocated`), and `python -m benchmarks.gpu_check` "
        "(every registered attack on these networks in float32 and under float16/bfloat16 autocast: time per "
        "image, peak memory, robust accuracy float32 against autocast; under 10 minutes on one GPU).",
    ]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str) -> None:
    """Replace this script's section of ``doc`` (from its heading to the next ``## `` heading), or append it."""
    replace_section(doc, SECTION, section)


def _load() -> Optional[float]:
    """The 1-minute load average (other processes slow a CPU measurement down), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--networks", nargs="+", choices=network_names(), help="default: all")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, help="default: all")
    parser.add_argument("--size", type=int, default=224, help="2D image side")
    parser.add_argument("--volume", type=int, default=96, help="3D volume side")
    parser.add_argument("--roi", type=int, default=48, help="3D sliding window side")
    parser.add_argument("--overlap", type=float, default=0.0, help="sliding window overlap")
    parser.add_argument("--images", type=int, default=2, help="2D images per batch")
    parser.add_argument("--volumes", type=int, default=1, help="3D volumes per batch")
    parser.add_argument("--cell-seconds", type=float, default=12.0, help="time for the longer run of each attack")
    parser.add_argument("--no-extrapolation", action="store_true", help="run every budget in full")
    parser.add_argument("--max-minutes", type=float, default=None, help="skip the cells left after this long")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_NETWORKS)}; 2 s per attack")
    parser.add_argument("--tiny", action="store_true", help="smoke run: small inputs, one image, shortest runs")
    parser.add_argument("--in-process", action="store_true", help="no fresh process per cell (memory less exact)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/full_size_cost.json"))
    parser.add_argument("--doc", type=Path, default=None, help="write the section into this Markdown file")
    parser.add_argument("--from-json", type=Path, default=None, help="only write the tables of an earlier run")
    parser.add_argument("--resume", action="store_true", help="keep the cells --out already has, measure the rest")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        network, attack, options = json.loads(args.child)
        result = measure_cell(network, attack, options)
        print(json.dumps(result))
        return result
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        text = markdown(payload)
        print(text)
        if args.doc is not None:
            write_section(args.doc, text)
        return payload
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, "CUDA is not available here: run with --device cpu.\n")
    shape: Dict[str, Any] = {"images": args.images, "volumes": args.volumes, "size": args.size}
    shape.update(volume=args.volume, roi=args.roi, overlap=args.overlap)
    if args.tiny:
        shape.update(size=64, volume=32, roi=16, overlap=0.0, images=1)
    options = {
        "device": args.device,
        "threads": args.threads,
        "shape": shape,
        "cell_seconds": 0.0 if args.tiny else (2.0 if args.quick else args.cell_seconds),
        "no_extrapolation": args.no_extrapolation,
        "in_process": args.in_process,
    }
    networks = args.networks or (list(QUICK_NETWORKS) if args.quick else network_names())
    attacks = args.attacks or list(ATTACKS)
    plan = [(network, attack) for network in networks for attack in attacks]
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"python -m benchmarks.full_size_cost {argv_text}".strip()
    previous: Optional[Dict[str, Any]] = None
    done: Dict[Tuple[str, str], Dict[str, Any]] = {}
    if args.resume and args.out.exists():
        previous = json.loads(args.out.read_text())
        current = {"device": args.device, "cell_seconds": options["cell_seconds"], "shape": shape}
        current["threads"] = args.threads or torch.get_num_threads()
        for key, mine in current.items():
            if previous.get(key) != mine:
                parser.error(f"--resume: {args.out} was measured with {key}={previous.get(key)!r}, not {mine!r}")
        done = {(r["network"], r["attack"]): r for r in previous["results"] if "seconds" in r}
        earlier = [(r["network"], r["attack"]) for r in previous["results"]]
        plan = earlier + [cell for cell in plan if cell not in earlier]
    payload: Dict[str, Any] = {
        "command": command if previous is None else f"{previous['command']}`, then `{command}",
        "machine": machine(args.device),
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cell_seconds": options["cell_seconds"],
        "in_process": args.in_process,
        "eps": "4/255",
        "shape": shape,
        "load_average": [_load() if previous is None else previous["load_average"][0], None],
        "memory_method": "",
        "results": [],
    }
    start = time.perf_counter()
    for network, attack in plan:
        left = None if args.max_minutes is None else args.max_minutes * 60 - (time.perf_counter() - start)
        if (network, attack) in done:
            row = done[(network, attack)]
        elif left is not None and left <= 0:
            row = {"network": network, "attack": attack, "skipped": "time limit"}
        else:
            row = run_cell(network, attack, options, left)
        payload["results"].append(row)
        payload["memory_method"] = row.get("memory_method", payload["memory_method"])
        shown = f"{row['seconds_per_image']:.3g} s/image, {row['peak_mb']:.0f} MB" if "seconds" in row else row
        print(f"{network:>20} {attack:>20}: {shown}", flush=True)
        write_json_atomic(args.out, payload)  # a partial run keeps what it measured
    payload["load_average"][1] = _load()
    payload["wall_seconds"] = time.perf_counter() - start + (previous or {}).get("wall_seconds", 0.0)
    write_json_atomic(args.out, payload)
    text = markdown(payload)
    print(text)
    if args.doc is not None and not args.tiny:
        write_section(args.doc, text)
    return payload


if __name__ == "__main__":
    main()
