# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Peak memory of one PGD step on a whole 3D volume through SlidingWindowInferer, with and without gradient
checkpointing of the window batches (``InfererModel(..., checkpoint=True)``), next to one plain forward+backward
pass of a batch of patches.

Each measurement runs in a fresh process (CPU: the rise of the peak resident memory, VmHWM, over the resident
memory once the model and the data are in place, with glibc's mmap threshold fixed so that freed tensors leave
the resident memory; CUDA: ``torch.cuda.max_memory_allocated``), so that they do not share allocator caches.
Usage::

    python -m benchmarks.memory3d                   # a 128^3 volume, 64^3 windows, 4 windows per batch
    python -m benchmarks.memory3d --size 48 --roi 32 # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, Sequence

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from monai_adv.attacks import PGD, InfererModel

SLIDING_WINDOW_MODES = ("sliding_window_pgd_step", "sliding_window_pgd_step_checkpointed")
MODES = SLIDING_WINDOW_MODES + ("patch_batch_forward_backward",)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(mode: str, size: int, roi: int, sw_batch: int) -> Dict[str, float]:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = UNet(3, 1, 2, channels=(16, 32, 64), strides=(2, 2), num_res_units=1).to(device).eval()
    if mode in SLIDING_WINDOW_MODES:
        x = torch.rand(1, 1, size, size, size, device=device)
        y = torch.randint(0, 2, (1, 1, size, size, size), device=device)
        inferer = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=sw_batch, overlap=0.25)
        model = InfererModel(net, inferer, checkpoint=mode == "sliding_window_pgd_step_checkpointed")
        attack = PGD(model, eps=4 / 255, steps=1, random_start=False, early_stop=False, seed=0)
        run = lambda: attack(x, y)  # noqa: E731
    else:
        x = torch.rand(sw_batch, 1, roi, roi, roi, device=device)
        y = torch.randint(0, 2, (sw_batch, roi, roi, roi), device=device)

        def run():
            x_in = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(net(x_in), y)
            torch.autograd.grad(loss, x_in)

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20 - base, "device": "cuda"}
    base = _status_mb("VmRSS")
    run()
    return {"peak_mb": _status_mb("VmHWM") - base, "device": "cpu"}


def window_count(size: int, roi: int, overlap: float = 0.25) -> int:
    """Windows SlidingWindowInferer places on a cubic volume, counted by running it with a network that
    only counts what it is given."""
    seen = []

    def count(windows: torch.Tensor) -> torch.Tensor:
        seen.append(windows.shape[0])
        return torch.zeros_like(windows)

    with torch.inference_mode():
        SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=64, overlap=overlap)(
            torch.zeros(1, 1, size, size, size), count
        )
    return sum(seen)


def _run_child(mode: str, size: int, roi: int, sw_batch: int) -> Dict[str, float]:
    # glibc raises its mmap threshold after frees, then keeps freed tensors in the heap, so that the resident
    # memory would also count memory free for reuse: a fixed threshold makes it follow the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    command = [sys.executable, "-m", "benchmarks.memory3d", "--child", mode, "--size", str(size)]
    command += ["--roi", str(roi), "--sw-batch", str(sw_batch)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(size: int = 128, roi: int = 64, sw_batch: int = 4, other_sizes: Sequence[int] = ()) -> Dict[str, dict]:
    """The three measurements, each in its own process, and the ratios to the patch batch; with ``other_sizes``,
    the sliding-window step with and without checkpointing on volumes of those sizes too."""
    rows = {mode: _run_child(mode, size, roi, sw_batch) for mode in MODES}
    patch = max(rows["patch_batch_forward_backward"]["peak_mb"], 1e-9)
    ratios = {f"ratio_{mode}": rows[mode]["peak_mb"] / patch for mode in SLIDING_WINDOW_MODES}
    by_size = {}
    for other in sorted({size, *other_sizes}):
        by_size[str(other)] = {
            mode: (rows[mode] if other == size else _run_child(mode, other, roi, sw_batch))["peak_mb"]
            for mode in SLIDING_WINDOW_MODES
        }
    return {"volume": size, "roi": roi, "sw_batch_size": sw_batch, **rows, **ratios, "peak_mb_by_volume": by_size}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--sw-batch", type=int, default=4)
    parser.add_argument("--other-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--child", choices=MODES)
    args = parser.parse_args(argv)
    if args.child:
        result = _child(args.child, args.size, args.roi, args.sw_batch)
        print(json.dumps(result))
        return result
    result = measure(args.size, args.roi, args.sw_batch, args.other_sizes)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
