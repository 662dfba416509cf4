# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``monai-adv evaluate``: a bundle or a checkpoint + network, a data set, a suite -> the robustness report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from monai.data import DataLoader, DistributedSampler
from monai.utils import optional_import

from monai_adv.apps.arguments import check_count, check_out_folder
from monai_adv.apps.defended import (
    detection_section,
    detector_fit_note,
    purification_section,
    purified_network,
    worst_of_both,
)
from monai_adv.apps.sources import (
    CommandError,
    bundle_image_size,
    check_channels,
    check_spatial_dims,
    load_bundle,
    load_data,
    load_network,
)
from monai_adv.apps.threat_figures import write_threat_figures
from monai_adv.benchmark.html_report import write_html_report
from monai_adv.benchmark.progress import attach_progress
from monai_adv.benchmark.report import curve_table, defense_tables, markdown_table, threat_tables, write_reports
from monai_adv.devices import resolve_device
from monai_adv.distributed import RunContext, distributed_run
from monai_adv.engines import RobustnessEvaluator, RobustnessEvents
from monai_adv.visualize import plot_adversarial_examples, plot_min_norm_curve, plot_robustness_curves

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["run_evaluate", "PROGRESS_FOLDER"]

#: the folder of ``out`` holding the per-sample outcomes as the run goes (what a rerun resumes from)
PROGRESS_FOLDER = "progress"
#: with a purifier: the folder of the non-adaptive run's outcomes
NON_ADAPTIVE_FOLDER = "progress_non_adaptive"


def run_evaluate(
    data: str,
    attacks: Sequence[Any],
    eps: Sequence[float],
    out: Path,
    bundle: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    network: Optional[str] = None,
    surrogate_checkpoint: Optional[Path] = None,
    surrogate_network: Optional[str] = None,
    norm: str = "Linf",
    value_range: Optional[Sequence[float]] = (0.0, 1.0),
    task: str = "auto",
    samples: Optional[int] = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    log=print,
    device: Optional[str] = None,
    min_norm: Optional[str] = None,
    corruptions: Optional[str] = None,
    patch_sizes: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
    fit_data: Optional[str] = None,
    fit_samples: Optional[int] = None,
    purifier: Optional[Tuple[str, Dict[str, Any]]] = None,
    detector: Optional[Tuple[str, Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """Score a model under ``attacks`` x ``eps`` on ``data`` and write the report folder ``out``.

    The models and the batches go to ``device`` (None: ``cuda`` when available, else ``cpu``). Under ``torchrun``
    with several processes, each rank evaluates its shard of the data on its device (``cuda`` becomes
    ``cuda:<LOCAL_RANK>``; NCCL on GPUs, gloo on CPU) and rank 0 writes the report, equal to the single-process one.
    The per-sample outcomes are written to ``out/progress`` batch by batch: rerunning the same command resumes a
    killed run (a different command into the same ``out`` is refused); delete ``out/progress`` to start anew.
    With ``min_norm`` (a minimum-norm attack such as "fmn"; classification) the report gains the robust-accuracy
    curve against eps from one run of it (``robustness_curve_min_norm.png``).

    Fitted attacks in ``attacks`` ("uap", "patch") are fitted on ``fit_data`` (a ``--data`` specification; default
    the validation split of demo and MedMNIST data, else the evaluation data, which the report's notes then say)
    before the evaluation; patch attacks run at ``patch_sizes``; ``corruptions`` ("all" or comma-separated names)
    adds the natural corruptions at severities 1-5. Their sections and figures (``universal_perturbations.png``,
    ``patches.png``, ``corruptions.png``, ``threat_models.png``) join the report (docs/threat_models.md).

    ``purifier`` (``(name, kwargs)``, e.g. ``("median", {"kernel_size": 3})``) evaluates the network behind that
    input purifier twice: with the non-adaptive attack such defenses are usually reported with, and with the
    adaptive one (BPDA / EoT), whose numbers are the report's rows and the ones to quote; the table shows both.
    ``detector`` (``("mahalanobis", {})`` or ``("feature_squeezing", {})``) fits that detector on the fit data (clean)
    and adds the report's ``detection`` section: detection AUROC, TPR at 5 % FPR and the "classify or reject"
    robust accuracy at each budget, against PGD on the classifier and the detector-aware APGD (docs/defenses.md)."""
    arguments = dict(locals())
    check_count(samples, "--samples")  # before any loading: 0 is not "all the samples"
    check_count(batch_size, "--batch-size")
    check_out_folder(Path(out))
    device = resolve_device(device, "--device")
    with distributed_run(device) as run:
        return _evaluate_run(run, **{k: v for k, v in arguments.items() if k != "device"})


def _evaluate_run(
    run: RunContext,
    data: str,
    attacks: Sequence[Any],
    eps: Sequence[float],
    out: Path,
    bundle: Optional[Path],
    checkpoint: Optional[Path],
    network: Optional[str],
    surrogate_checkpoint: Optional[Path],
    surrogate_network: Optional[str],
    norm: str,
    value_range: Optional[Sequence[float]],
    task: str,
    samples: Optional[int],
    batch_size: int,
    seed: int,
    progress: bool,
    log,
    min_norm: Optional[str],
    corruptions: Optional[str],
    patch_sizes: Sequence[float],
    fit_data: Optional[str],
    fit_samples: Optional[int],
    purifier: Optional[Tuple[str, Dict[str, Any]]],
    detector: Optional[Tuple[str, Dict[str, Any]]],
) -> Dict[str, Any]:
    """The evaluation of this process (of this rank under torchrun); rank 0 writes the report folder."""
    device = run.device
    preprocessing = None
    if bundle is not None:
        model, parser = load_bundle(bundle)
        if "preprocessing" in parser:
            try:
                preprocessing = parser.get_parsed_content("preprocessing")
            except Exception:
                preprocessing = None
        name = Path(bundle).resolve().name  # "--bundle ." names the folder
    elif checkpoint is not None and network is not None:
        model, name = load_network(network, checkpoint), Path(checkpoint).stem
    else:
        raise CommandError("give --bundle DIR, or --checkpoint FILE with --network SPEC")
    model = model.to(device)
    surrogate = None
    if surrogate_checkpoint is not None or surrogate_network is not None:
        if surrogate_checkpoint is None or surrogate_network is None:
            raise CommandError("the transfer setting needs both --surrogate-checkpoint and --surrogate-network")
        surrogate = load_network(surrogate_network, surrogate_checkpoint).to(device)
    size = bundle_image_size(bundle)  # demo data in the shape the bundle's network was trained on
    dataset = load_data(data, samples, preprocessing, image_size=size)
    if len(dataset) == 0:
        raise CommandError(f"--data {data}: no samples")
    first = dataset[0]
    if not isinstance(first, dict) or "image" not in first or "label" not in first:
        raise CommandError(f"--data {data}: samples must be dicts with 'image' and 'label'")
    check_channels(model, torch.as_tensor(first["image"]))
    check_spatial_dims(model, torch.as_tensor(first["image"]), f"--data {data}")
    # each rank attacks its shard (no padding: a sample is evaluated once); the evaluator gathers the outcomes
    sampler = DistributedSampler(dataset, shuffle=False, even_divisible=False) if run.world_size > 1 else None
    if (purifier or detector) and surrogate is not None:
        raise CommandError("--purifier/--detector evaluate a defended model white-box: drop the --surrogate-* flags")
    if detector and norm != "Linf":
        raise CommandError("--detector: the detection attacks are L-inf; give --norm Linf")
    if purifier and detector:
        raise CommandError("give --purifier or --detector, not both: each defense is evaluated by its own attack")
    needs_fit = _has_fitted_attacks(attacks) or detector is not None
    fit_loader, fit_name = _fit_loader(needs_fit, data, fit_data, fit_samples, preprocessing, batch_size, size)
    settings = {"data": data, "samples": len(dataset), "fit_data": fit_name, "purifier": purifier, "detector": detector}

    def evaluate(network, crafting, folder: str, label: str, extras: bool = True) -> RobustnessEvaluator:
        try:
            evaluator = RobustnessEvaluator(
                device=device,
                val_data_loader=DataLoader(dataset, batch_size=batch_size, sampler=sampler),
                network=network,
                attacks=attacks,
                eps=eps,
                norm=norm,
                value_range=value_range,
                task=task,
                surrogate=crafting,
                seed=seed,
                keep_examples=8,
                progress_dir=Path(out) / folder,
                run_settings={**settings, "crafting": label},
                min_norm_attack=min_norm if extras else None,
                fit_data_loader=fit_loader,
                patch_sizes=patch_sizes,
                corruptions=corruptions if extras else None,
            )
        except (ValueError, TypeError) as e:
            raise CommandError(str(e)) from e
        reset = getattr(getattr(network, "purifier", None), "reset", None)
        if callable(reset):  # a randomized purifier's draws depend on each batch's own history only (resumable)
            evaluator.add_event_handler(Events.ITERATION_STARTED, lambda _: reset())
        steps = evaluator.total_attack_runs * len(evaluator.data_loader)
        title = f"attack {name}" + ("" if label == "white-box" else f" ({label})")
        attach_progress(evaluator, RobustnessEvents.ATTACK_COMPLETED, steps, title, progress and run.is_main)
        evaluator.run()
        return evaluator

    described = {"model": {"name": name}, "data": {"name": data, "samples": len(dataset)}}
    reports: Dict[str, Any] = {}
    if purifier is not None:
        purified, models = purified_network(model, purifier[0], purifier[1], value_range, seed)
        crafting = None if models["non_adaptive"] is purified else models["non_adaptive"]
        baseline = evaluate(purified, crafting, NON_ADAPTIVE_FOLDER, "non-adaptive", extras=False)
        reports[f"{name} (non-adaptive)"] = baseline.report(**described)
        evaluator = evaluate(purified, models["adaptive"], PROGRESS_FOLDER, "adaptive")
        report = evaluator.report(**described)
        worst = worst_of_both(baseline.results, evaluator.results, value_range)
        report["defense"] = purification_section(*purifier, models, reports[f"{name} (non-adaptive)"], worst)
    else:
        evaluator = evaluate(model, surrogate, PROGRESS_FOLDER, "white-box" if surrogate is None else "transfer")
        report = evaluator.report(**described)
    if not run.is_main:
        return {"report": report, "paths": {}, "table": ""}
    if detector is not None:
        evaluation = DataLoader(dataset, batch_size=batch_size)
        fit_batches = fit_loader if fit_loader is not None else evaluation
        report["detection"] = detection_section(
            model, *detector, fit_batches, fit_name, evaluation, eps, value_range, seed, max_batch=batch_size
        )
        report["notes"] = list(report.get("notes", [])) + detector_fit_note(fit_name)
    reports = {name: report, **reports}
    paths = write_reports(reports, out)
    paths["curves"] = plot_robustness_curves(reports, Path(out) / "robustness_curves.png")
    if "curve" in report:
        paths["min_norm_curve"] = plot_min_norm_curve(report, Path(out) / "robustness_curve_min_norm.png")
    ex = evaluator.state.examples
    if report["task"] == "segmentation":
        labels = ex["label"] if ex["label"].ndim == ex["image"].ndim else ex["label"][:, None]
        seg = {"label": labels, "clean": ex["clean_pred"][:, None], "adversarial": ex["adversarial_pred"][:, None]}
        paths["examples"] = plot_adversarial_examples(
            ex["image"], ex["adversarial_image"], Path(out) / "adversarial_examples.png", segmentation=seg
        )
    else:
        paths["examples"] = plot_adversarial_examples(
            ex["image"],
            ex["adversarial_image"],
            Path(out) / "adversarial_examples.png",
            labels=ex["label"],
            clean_predictions=ex["clean_pred"],
            adversarial_predictions=ex["adversarial_pred"],
        )
    paths.update(write_threat_figures(evaluator, report, Path(out)))
    paths["html"] = write_html_report(list(reports.values()), out)
    table = markdown_table(reports) + (f"\n{curve_table(report)}" if "curve" in report else "")
    table += threat_tables(report) + defense_tables(report)
    log(table)
    log(f"report in {out}/ (open {paths['html']} in a browser)")
    return {"report": report, "paths": paths, "table": table}


def _has_fitted_attacks(attacks: Sequence[Any]) -> bool:
    from monai_adv.attacks import FittedAttack, attack_class
    from monai_adv.engines.attack_suite import parse_attack_specs

    try:
        specs = parse_attack_specs(list(attacks))
    except (ValueError, TypeError) as e:
        raise CommandError(str(e)) from e
    return any(issubclass(attack_class(spec.attack), FittedAttack) for spec in specs)


def _fit_loader(
    needed: bool,
    data: str,
    fit_data: Optional[str],
    fit_samples: Optional[int],
    preprocessing: Any,
    batch_size: int,
    image_size: Optional[int],
):
    """The loader the fitted attacks of the suite (and a detector) are fitted on, and its name for the run's
    settings: ``fit_data``, else the validation split of demo or MedMNIST data, else None (the evaluation data)."""
    if not needed:
        if fit_data is not None or fit_samples is not None:
            raise CommandError("--fit-data/--fit-samples: nothing to fit (no uap or patch attack, no --detector)")
        return None, None
    kind = data.partition(":")[0]
    if fit_data is None and kind not in ("demo", "demo3d", "medmnist"):
        return None, None
    spec = data if fit_data is None else fit_data
    dataset = load_data(
        spec, fit_samples, preprocessing, split="val", image_size=image_size
    )  # demo, MedMNIST: their validation split
    if len(dataset) == 0:
        raise CommandError(f"--fit-data {spec}: no samples")
    name = f"{spec} (val split)" if spec.partition(":")[0] in ("demo", "demo3d", "medmnist") else spec
    return DataLoader(dataset, batch_size=batch_size, shuffle=False), f"{name}, {len(dataset)} samples"
