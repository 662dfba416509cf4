# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Each optimization of the attacks measured on its own, with and without it, in one process.

- input-only gradients: ``torch.autograd.grad`` with respect to the input, parameters frozen, against
  ``loss.backward()`` with the parameters requiring gradients (what a training-style loop does);
- per-sample early exit: PGD-20 and APGD-CE-100 with ``early_stop`` on and off (same robust accuracy);
- forward passes without gradients under ``torch.inference_mode`` against ``torch.no_grad``;
- no redundant forward passes: model calls per attack, counted, next to the minimum;
- gradient checkpointing of the window batches of a 3D sliding-window attack: time cost (memory in
  ``benchmarks.memory3d``);
- autocast: PGD-20 and APGD-CE-100 with the network in bfloat16 (CPU) or float16 (CUDA) against float32, robust
  accuracy scored in float32 and per-sample agreement.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import ResNet, UNet

from monai_adv.attacks import APGD, FGSM, PGD, InfererModel, Square
from tests.models import CallCounter, TinyClassifier, accuracy, bars_dataset, train_classifier


def median_times(functions: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Run the functions interleaved ``repeats`` times; median wall time of each."""
    times: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def compare_variants(make: Callable, variants: Dict[str, object], x, y, repeats: int):
    """Run ``make(variant)(x, y)`` for each variant, interleaved; return median times and the last outputs."""
    outputs: Dict[str, torch.Tensor] = {}

    def runner(key: str, variant: object) -> Callable[[], None]:
        def run() -> None:
            outputs[key] = make(variant)(x, y)

        return run

    times = median_times({key: runner(key, variant) for key, variant in variants.items()}, repeats)
    return times, outputs


def trained_bars(tiny: bool):
    """The small CNN of the torchattacks comparison, trained on the synthetic bar images, with test data."""
    x_train, y_train = bars_dataset(256 if tiny else 1024, seed=0)
    x, y = bars_dataset(32 if tiny else 256, seed=1)
    torch.manual_seed(0)
    model = train_classifier(TinyClassifier(2, 1, 3, width=8), x_train, y_train, epochs=2 if tiny else 15)
    return model.eval(), x, y


def _input_gradient_loop(model, x, y, steps: int, eps: float, with_parameters: bool) -> None:
    """20 sign steps; the input gradient either alone (autograd.grad) or with every parameter's (backward)."""
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    for p in model.parameters():
        p.requires_grad_(with_parameters)
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), y)
        if with_parameters:
            model.zero_grad(set_to_none=True)
            loss.backward()
            grad = x_adv.grad
        else:
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = (x + (x_adv.detach() + eps / 4 * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


def input_only_gradients(tiny: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    net = ResNet("basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=1, num_classes=2).eval()
    size, steps = (32, 2) if tiny else (64, 20)
    x, y = torch.rand(16, 1, size, size), torch.randint(0, 2, (16,))
    times = median_times(
        {
            "input only": lambda: _input_gradient_loop(net, x, y, steps, 4 / 255, False),
            "with parameters": lambda: _input_gradient_loop(net, x, y, steps, 4 / 255, True),
        },
        repeats,
    )
    return {
        "case": f"{steps} steps, 2D ResNet {size}x{size}, batch 16",
        "seconds_input_only": times["input only"],
        "seconds_with_parameters": times["with parameters"],
        "ratio": times["input only"] / times["with parameters"],
    }


def early_exit(model, x, y, tiny: bool, repeats: int) -> Dict[str, dict]:
    eps = 12 / 255
    steps = {"PGD": 2 if tiny else 20, "APGD-CE": 5 if tiny else 100}
    makers = {
        f"PGD-{steps['PGD']}": lambda stop: PGD(model, eps=eps, steps=steps["PGD"], early_stop=stop, seed=0),
        f"APGD-CE-{steps['APGD-CE']}": lambda stop: APGD(model, eps=eps, steps=steps["APGD-CE"], early_stop=stop),
    }
    rows = {}
    for name, make in makers.items():
        times, outputs = compare_variants(make, {"on": True, "off": False}, x, y, repeats)
        rows[name] = {
            "seconds_on": times["on"],
            "seconds_off": times["off"],
            "ratio": times["on"] / times["off"],
            "robust_accuracy_on": accuracy(model, outputs["on"], y),
            "robust_accuracy_off": accuracy(model, outputs["off"], y),
        }
    return rows


def inference_mode(tiny: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    net = ResNet("basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, n_input_channels=1, num_classes=2).eval()
    passes = 5 if tiny else 100
    x = torch.rand(16, 1, 64, 64)

    def forward(context) -> None:
        for _ in range(passes):
            with context():
                net(x)

    times = median_times(
        {"inference_mode": lambda: forward(torch.inference_mode), "no_grad": lambda: forward(torch.no_grad)}, repeats
    )
    return {
        "case": f"{passes} forward passes, 2D ResNet 64x64, batch 16",
        "seconds_inference_mode": times["inference_mode"],
        "seconds_no_grad": times["no_grad"],
        "ratio": times["inference_mode"] / times["no_grad"],
    }


def forward_counts(model, x, y, tiny: bool) -> Dict[str, dict]:
    """Model calls of ``attack(x, y)`` (early exit off, so that every sample runs every step)."""
    counting = CallCounter(model)
    steps, apgd_steps, queries = (2, 5, 20) if tiny else (20, 100, 1000)
    eps = 12 / 255
    attacks = {
        "FGSM": (FGSM(counting, eps=eps, early_stop=False), 1, "the clean pass gives the gradient"),
        "FGSM from a random start (fast-AT)": (
            FGSM(counting, eps=eps, alpha=1.25 * eps, random_start=True),
            1,
            "the pass at the random start (the clean prediction is never read)",
        ),
        f"PGD-{steps}, adversarial training (random start, last iterate, x_adv only)": (
            PGD(counting, eps=eps, steps=steps, best_iterate=False, early_stop=False),
            steps,
            "one per step, the first at the random start (the clean prediction is never read)",
        ),
        f"PGD-{steps}, random start": (
            PGD(counting, eps=eps, steps=steps, early_stop=False),
            steps + 2,
            "clean pass + one per step + the last iterate's score (to return the best iterate)",
        ),
        f"PGD-{steps}, no random start": (
            PGD(counting, eps=eps, steps=steps, random_start=False, early_stop=False),
            steps + 1,
            "the same, the clean pass doubling as the first step's",
        ),
        f"APGD-CE-{apgd_steps}": (
            APGD(counting, eps=eps, steps=apgd_steps, early_stop=False),
            apgd_steps + 2,
            "clean pass + start + one per step (each step's pass scores its iterate)",
        ),
        f"Square-{queries}": (
            Square(counting, eps=eps, queries=queries, early_stop=False),
            queries,
            "the query budget, clean pass included",
        ),
    }
    rows = {}
    for name, (attack, minimum, why) in attacks.items():
        counting.calls = 0
        attack(x, y)
        rows[name] = {"forward_passes": counting.calls, "minimum": minimum, "minimum_is": why}
    return rows


def checkpointing_time(tiny: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(16, 32, 64), strides=(2, 2), num_res_units=1).eval()
    size, roi = (32, 16) if tiny else (96, 64)
    x = torch.rand(1, 1, size, size, size)
    y = torch.randint(0, 2, (1, 1, size, size, size))
    inferer = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=4, overlap=0.25)
    plain, checkpointed = InfererModel(net, inferer), InfererModel(net, inferer, checkpoint=True)
    outputs = {}

    def step(model, key) -> None:
        outputs[key] = PGD(model, eps=4 / 255, steps=2, early_stop=False)(x, y)

    times = median_times(
        {"plain": lambda: step(plain, "plain"), "checkpointed": lambda: step(checkpointed, "ckpt")}, repeats
    )
    return {
        "case": f"PGD-2 through SlidingWindowInferer, {size}^3 volume, {roi}^3 windows, 4 per batch",
        "seconds_plain": times["plain"],
        "seconds_checkpointed": times["checkpointed"],
        "ratio": times["checkpointed"] / times["plain"],
        "max_abs_difference": float((outputs["plain"] - outputs["ckpt"]).abs().max()),
    }


def autocast(model, x, y, tiny: bool, repeats: int) -> Dict[str, dict]:
    """Attacks crafted with the network under autocast, scored in float32, against float32 attacks."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    full, low = InfererModel(model), InfererModel(model, amp_dtype=dtype)
    eps = 12 / 255
    steps = {"PGD": 2 if tiny else 20, "APGD-CE": 5 if tiny else 100}
    makers = {
        f"PGD-{steps['PGD']}": lambda m: PGD(m, eps=eps, steps=steps["PGD"], seed=0),
        f"APGD-CE-{steps['APGD-CE']}": lambda m: APGD(m, eps=eps, steps=steps["APGD-CE"], seed=0),
    }
    rows = {}
    for name, make in makers.items():
        times, outputs = compare_variants(make, {"full": full, "low": low}, x, y, repeats)
        with torch.no_grad():
            robust = {key: model(adv).argmax(1) == y for key, adv in outputs.items()}
        rows[name] = {
            "device": device.type,
            "dtype": str(dtype).replace("torch.", ""),
            "seconds_float32": times["full"],
            "seconds_autocast": times["low"],
            "ratio": times["low"] / times["full"],
            "robust_accuracy_float32": robust["full"].float().mean().item(),
            "robust_accuracy_autocast": robust["low"].float().mean().item(),
            "samples_that_differ": int((robust["full"] != robust["low"]).sum()),
        }
    model.to("cpu")
    return rows


def measure(tiny: bool, repeats: int) -> dict:
    model, x, y = trained_bars(tiny)
    return {
        "images": len(x),
        "input_only_gradients": input_only_gradients(tiny, repeats),
        "early_exit": early_exit(model, x, y, tiny, repeats),
        "inference_mode": inference_mode(tiny, repeats),
        "forward_passes": forward_counts(model, x, y, tiny),
        "checkpointing": checkpointing_time(tiny, repeats),
        "autocast": autocast(model, x, y, tiny, repeats),
    }


def markdown(rows: dict) -> List[str]:
    """The optimizations section of docs/performance.md."""
    grad, inf, ckpt = rows["input_only_gradients"], rows["inference_mode"], rows["checkpointing"]
    lines = [
        "## Each optimization, with and without it",
        "",
        "| optimization | case | with (s) | without (s) | with / without |",
        "| --- | --- | --- | --- | --- |",
        f"| input-only gradients (autograd.grad, frozen parameters) vs backward() with parameter gradients | "
        f"{grad['case']} | {grad['seconds_input_only']:.3f} | {grad['seconds_with_parameters']:.3f} | "
        f"{grad['ratio']:.2f} |",
        f"| torch.inference_mode vs torch.no_grad for gradient-free passes | {inf['case']} | "
        f"{inf['seconds_inference_mode']:.3f} | {inf['seconds_no_grad']:.3f} | {inf['ratio']:.2f} |",
    ]
    for name, row in rows["early_exit"].items():
        lines.append(
            f"| per-sample early exit ({name}; robust accuracy {row['robust_accuracy_on']:.4f} with, "
            f"{row['robust_accuracy_off']:.4f} without) | {rows['images']} bar images, eps 12/255 | "
            f"{row['seconds_on']:.3f} | "
            f"{row['seconds_off']:.3f} | {row['ratio']:.2f} |"
        )
    lines += [
        "",
        f"Gradient checkpointing of the window batches (`InfererModel(..., checkpoint=True)`), {ckpt['case']}: "
        f"{ckpt['seconds_checkpointed']:.2f} s against {ckpt['seconds_plain']:.2f} s without "
        f"({ckpt['ratio']:.2f}x; one more forward pass of each window batch per step), adversarial volumes equal "
        f"to {ckpt['max_abs_difference']:.1e}; the memory it saves is in the 3D memory table.",
        "",
        f"Model calls of `attack(x, y)` on {rows['images']} images, early exit off (every sample runs every "
        "step); `attack.perturb(x, y)`, which also reports the clean outcome, adds the clean pass where it is "
        "not counted here:",
        "",
        "| attack | forward passes | minimum | the minimum is |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in rows["forward_passes"].items():
        lines.append(f"| {name} | {row['forward_passes']} | {row['minimum']} | {row['minimum_is']} |")
    first = next(iter(rows["autocast"].values()))
    lines += [
        "",
        f"Autocast ({first['dtype']} on {first['device']}): attacks crafted with `InfererModel(network, "
        f"amp_dtype=torch.{first['dtype']})`, robust accuracy scored in float32 on the same {rows['images']} images:",
        "",
        "| attack | float32 (s) | autocast (s) | ratio | robust acc. float32 | robust acc. autocast | "
        "samples that differ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in rows["autocast"].items():
        lines.append(
            f"| {name} | {row['seconds_float32']:.2f} | {row['seconds_autocast']:.2f} | {row['ratio']:.2f} | "
            f"{row['robust_accuracy_float32']:.4f} | {row['robust_accuracy_autocast']:.4f} | "
            f"{row['samples_that_differ']} |"
        )
    gap = max(row["robust_accuracy_autocast"] - row["robust_accuracy_float32"] for row in rows["autocast"].values())
    if gap > 0.005:
        lines += [
            "",
            f"Autocast weakened the attacks here (robust accuracy up to {100 * gap:.1f} points higher): a robustness "
            "number must come from attacks crafted in float32. Autocast suits adversarial training, where the "
            "inner attack only has to be strong enough to train on.",
        ]
    else:
        lines += ["", "Autocast kept the attacks as strong as in float32 on this model (within half a point)."]
    return lines


if __name__ == "__main__":
    import json

    print(json.dumps(measure(tiny=False, repeats=3), indent=1))
