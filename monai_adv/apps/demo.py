# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``monai-adv demo``: train a natural and a robust model on the embedded demo data, attack both, report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from monai.data import DataLoader

from monai_adv.benchmark.html_report import write_html_report
from monai_adv.benchmark.io import save_state_dict_atomic
from monai_adv.benchmark.networks import small_classifier
from monai_adv.benchmark.progress import attach_progress
from monai_adv.benchmark.report import markdown_table, write_reports
from monai_adv.benchmark.training import train_with_defense
from monai_adv.data import BrainLesionDataset
from monai_adv.devices import host_state_dict, resolve_device
from monai_adv.engines import FULL_SURVEY_ATTACKS, SURVEY_ATTACKS, RobustnessEvaluator, RobustnessEvents
from monai_adv.visualize import plot_adversarial_examples, plot_gradcam, plot_robustness_curves

__all__ = ["DemoConfig", "demo_network", "run_demo"]

CLASS_NAMES = ("no lesion", "lesion")
METHODS = {"NAT": "nat", "PGD-AT": "pgd_at"}


@dataclass
class DemoConfig:
    """Settings of the demo (the defaults are the README's main job, about 5 minutes on 2 CPU cores).

    Attributes:
        out: the report folder.
        epochs: training epochs of each model.
        train_samples, test_samples, image_size: the demo data (2D slices, lesion present/absent).
        train_eps: budget of adversarial training (PGD-AT, 10 steps).
        eps: the evaluation budgets.
        attacks: the evaluation suite (names or specifications); None: FGSM, PGD-20, CW-30, AutoAttack,
            plus Square-5000 and SimBA-DCT when ``full``.
        full: add the black-box attacks.
        seed: seed of data, training and attacks.
        device: where the models train and are attacked ("cpu", "cuda", "cuda:1", ...); None: ``cuda`` when
            available, else ``cpu``.
        progress: show progress bars.
    """

    out: Path = Path("monai_adv_demo")
    epochs: int = 10
    train_samples: int = 1000
    test_samples: int = 100
    image_size: int = 32
    train_eps: float = 8 / 255
    eps: Sequence[float] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    attacks: Optional[Sequence[Any]] = None
    full: bool = False
    seed: int = 0
    device: Optional[str] = None
    progress: bool = True
    batch_size: int = 100
    timings: Dict[str, float] = field(default_factory=dict)


def demo_network() -> torch.nn.Module:
    """The demo's classifier: a small MONAI ResNet for 1-channel 2D slices, two classes."""
    return small_classifier(1, 2)


def _train(config: DemoConfig, method: str, train: BrainLesionDataset, device: torch.device, log) -> torch.nn.Module:
    path = config.out / "models" / f"{method}.pt"
    network = demo_network()
    if path.exists():  # a finished model of an earlier run of the same folder (saved from the host)
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log(f"loaded {path}")
        return network.to(device).eval()
    torch.manual_seed(config.seed)
    network = demo_network()
    start = time.perf_counter()
    train_with_defense(
        network,
        method,
        train,
        eps=config.train_eps,
        epochs=config.epochs,
        seed=config.seed,
        device=device,
        progress=config.progress,
        description=f"train {method}",
    )
    config.timings[f"train {method}"] = time.perf_counter() - start
    save_state_dict_atomic(path, host_state_dict(network))
    return network


def run_demo(config: DemoConfig, log=print) -> Dict[str, Any]:
    """Run the demo and return ``{"reports": {method: report}, "paths": {...}}``."""
    config.out = Path(config.out)
    device = resolve_device(config.device)
    size = config.image_size
    train = BrainLesionDataset("train", "classification", 2, num_samples=config.train_samples, image_size=size)
    test = BrainLesionDataset("test", "classification", 2, num_samples=config.test_samples, image_size=size)
    attacks = list(config.attacks or (FULL_SURVEY_ATTACKS if config.full else SURVEY_ATTACKS))
    log(
        f"monai-adv demo: lesion present/absent on {size}x{size} brain MRI slices (real anatomy, simulated lesions); "
        f"{config.train_samples} training / {config.test_samples} test slices"
    )
    networks = {name: _train(config, method, train, device, log) for name, method in METHODS.items()}
    reports: Dict[str, Dict[str, Any]] = {}
    examples: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, network in networks.items():
        evaluator = RobustnessEvaluator(
            device=device,
            val_data_loader=DataLoader(test, batch_size=config.batch_size),
            network=network,
            attacks=attacks,
            eps=list(config.eps),
            seed=config.seed,
            keep_examples=8,
        )
        steps = evaluator.total_attack_runs * len(evaluator.data_loader)
        attach_progress(evaluator, RobustnessEvents.ATTACK_COMPLETED, steps, f"attack {name}", config.progress)
        start = time.perf_counter()
        evaluator.run()
        config.timings[f"evaluate {name}"] = time.perf_counter() - start
        reports[name] = evaluator.report(
            model={
                "name": name,
                "network": "ResNet (MONAI), 4 basic blocks, 8-64 channels",
                "training": METHODS[name],
                "train_eps": config.train_eps if METHODS[name] != "nat" else 0.0,
                "epochs": config.epochs,
            },
            data={
                "name": "monai_adv demo: BrainLesionDataset",
                "task": "lesion present/absent",
                "split": "test",
                "samples": config.test_samples,
                "image_size": [size, size],
                "class_names": list(CLASS_NAMES),
            },
        )
        examples[name] = evaluator.state.examples
    paths = write_reports(reports, config.out)
    paths["curves"] = plot_robustness_curves(reports, config.out / "robustness_curves.png")
    for name, kept in examples.items():
        paths[f"examples:{name}"] = plot_adversarial_examples(
            kept["image"],
            kept["adversarial_image"],
            config.out / f"adversarial_examples_{name.lower()}.png",
            labels=kept["label"],
            clean_predictions=kept["clean_pred"],
            adversarial_predictions=kept["adversarial_pred"],
            class_names=CLASS_NAMES,
        )
    # layer3 (4x4 at 32x32 input) rather than the last block (2x2): a readable map on small slices
    entries: List[Dict[str, Any]] = [
        {
            "name": name,
            "model": networks[name],
            "images": examples[name]["image"],
            "adversarial": examples[name]["adversarial_image"],
            "target_layer": "layer3",
            "class_names": CLASS_NAMES,
        }
        for name in networks
    ]
    paths["gradcam"] = plot_gradcam(entries, config.out / "gradcam.png")
    paths["html"] = write_html_report(list(reports.values()), config.out, title="monai_adv demo: NAT against PGD-AT")
    table = markdown_table(reports)
    log("")
    log(table)
    log(f"reports and figures in {config.out}/ (open {paths['html']} in a browser)")
    return {"reports": reports, "paths": paths, "table": table}
