# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``monai-adv certify``: a bundle or a checkpoint + network, a data set -> the certification report by randomized
smoothing (JSON, CSV, Markdown and the certified curve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from monai.data import DataLoader, DistributedSampler
from monai.utils import optional_import

from monai_adv.apps.arguments import check_count, check_out_folder
from monai_adv.apps.certify_arguments import check_smoothing, parse_radii
from monai_adv.apps.sources import (
    CommandError,
    check_channels,
    check_spatial_dims,
    load_bundle,
    load_data,
    load_network,
)
from monai_adv.benchmark.certification_report import certification_markdown, write_certification_reports
from monai_adv.benchmark.html_report import write_html_report
from monai_adv.benchmark.progress import attach_progress
from monai_adv.data import BrainLesionDataset
from monai_adv.devices import resolve_device
from monai_adv.distributed import RunContext, distributed_run
from monai_adv.engines import CertificationEvaluator
from monai_adv.visualize import plot_certified_curves

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["run_certify", "bundle_demo_data", "default_noise_batch"]

#: images per data-loader batch (the noisy copies of several images share network calls up to ``batch_size``)
IMAGES_PER_BATCH = 8
#: the default noise batch holds at most this many input voxels (and at most 1000 copies)
NOISE_BATCH_VOXELS = 2**22


def default_noise_batch(image: torch.Tensor) -> int:
    """Noisy copies per network call when ``--batch-size`` is not given: 1000, or fewer for large images so that
    one call holds at most about 4 million input voxels (128 copies of a 32^3 volume)."""
    return int(max(1, min(1000, NOISE_BATCH_VOXELS // max(1, image.numel()))))


def bundle_demo_data(bundle: Path, samples: Optional[int], seed: int = 0) -> Optional[Tuple[Any, str]]:
    """The test split of the demo data in the shape the bundle's network takes, read from its
    ``configs/metadata.json``: ``network_data_format`` (input spatial shape; output format "segmentation" or
    classes) and, when ``samples`` is None, ``eval_metrics#test_samples`` (the size of the bundle's own evaluation).
    None when the metadata does not describe a square (cubic) image of 2 or 3 spatial dims."""
    path = Path(bundle) / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
        formats = metadata["network_data_format"]
        shape = [int(v) for v in formats["inputs"]["image"]["spatial_shape"]]
        output = str(formats["outputs"]["pred"].get("format", "classes"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if samples is None:
        measured = (metadata.get("eval_metrics") or {}).get("test_samples")
        samples = measured if isinstance(measured, int) and not isinstance(measured, bool) and measured > 0 else None
    if len(shape) not in (2, 3) or len(set(shape)) != 1 or shape[0] < 16:
        return None
    task = "segmentation" if output == "segmentation" else "classification"
    dims = len(shape)
    dataset = BrainLesionDataset("test", task, dims, num_samples=samples, image_size=shape[0], seed=seed)
    return dataset, f"{'demo3d' if dims == 3 else 'demo'}:{task} (test split, {shape[0]}^{dims})"


def _model(
    bundle: Optional[Path], checkpoint: Optional[Path], network: Optional[str]
) -> Tuple[torch.nn.Module, str, Optional[Callable], Optional[Callable]]:
    """The network, its name, the bundle's inferer and preprocessing (None when not a bundle or not given)."""
    if bundle is not None:
        model, parser = load_bundle(bundle)
        parts = {}
        for key in ("preprocessing", "inferer"):
            try:
                parts[key] = parser.get_parsed_content(key) if key in parser else None
            except Exception:
                parts[key] = None
        return model, Path(bundle).resolve().name, parts["inferer"], parts["preprocessing"]
    if checkpoint is not None and network is not None:
        return load_network(network, checkpoint), Path(checkpoint).stem, None, None
    raise CommandError("give --bundle DIR, or --checkpoint FILE with --network SPEC")


def run_certify(
    out: Path,
    sigma: float,
    data: Optional[str] = None,
    bundle: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    network: Optional[str] = None,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    radii: Optional[Sequence[float]] = None,
    task: str = "auto",
    samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    correction: str = "holm",
    seed: int = 0,
    progress: bool = True,
    log=print,
    device: Optional[str] = None,
) -> Dict[str, Any]:
    """Certify a model by randomized smoothing on ``data`` and write the report folder ``out``: ``certification.json``
    (schema ``monai_adv.certification_report``), ``certification.csv`` (one line per sample), ``certification.md``
    and ``certified_curves.png``.

    ``data`` None: with a bundle, the demo test split in the shape its metadata gives (``demo`` otherwise).
    ``batch_size`` None: see :func:`default_noise_batch`. ``radii`` None: 0 to 4 sigma in steps of sigma / 2.
    Under ``torchrun`` each rank certifies its shard and rank 0 writes the report (as ``monai-adv evaluate``).

    Returns:
        ``{"report": ..., "paths": {kind: path}, "table": the Markdown summary}``.
    """
    arguments = dict(locals())
    check_smoothing(sigma, n0, n, alpha)
    check_count(samples, "--samples")
    check_count(batch_size, "--batch-size")
    check_out_folder(Path(out))
    arguments["radii"] = parse_radii(None, sigma) if radii is None else parse_radii(",".join(map(str, radii)), sigma)
    device = resolve_device(device, "--device")
    with distributed_run(device) as run:
        return _certify_run(run, **{k: v for k, v in arguments.items() if k != "device"})


def _certify_run(
    run: RunContext,
    out: Path,
    sigma: float,
    data: Optional[str],
    bundle: Optional[Path],
    checkpoint: Optional[Path],
    network: Optional[str],
    n0: int,
    n: int,
    alpha: float,
    radii: Sequence[float],
    task: str,
    samples: Optional[int],
    batch_size: Optional[int],
    correction: str,
    seed: int,
    progress: bool,
    log,
) -> Dict[str, Any]:
    """The certification of this process (of this rank under torchrun); rank 0 writes the report folder."""
    model, name, inferer, preprocessing = _model(bundle, checkpoint, network)
    model = model.to(run.device)
    found = bundle_demo_data(bundle, samples, seed) if data is None and bundle is not None else None
    if found is not None:
        dataset, data_name = found
    else:
        data_name = data or "demo"
        dataset = load_data(data_name, samples, preprocessing)
    if len(dataset) == 0:
        raise CommandError(f"--data {data_name}: no samples")
    first = dataset[0]
    if not isinstance(first, dict) or "image" not in first or "label" not in first:
        raise CommandError(f"--data {data_name}: samples must be dicts with 'image' and 'label'")
    image = torch.as_tensor(first["image"])
    check_channels(model, image)
    check_spatial_dims(model, image, f"--data {data_name}")
    sampler = DistributedSampler(dataset, shuffle=False, even_divisible=False) if run.world_size > 1 else None
    loader = DataLoader(dataset, batch_size=IMAGES_PER_BATCH, sampler=sampler)
    try:
        evaluator = CertificationEvaluator(
            device=run.device,
            val_data_loader=loader,
            network=model,
            sigma=sigma,
            n0=n0,
            n=n,
            alpha=alpha,
            radii=radii,
            task=task,
            batch_size=batch_size or default_noise_batch(image),
            seed=seed,
            correction=correction,
            inferer=inferer,
        )
    except (ValueError, TypeError) as e:
        raise CommandError(str(e)) from e
    attach_progress(evaluator, Events.ITERATION_COMPLETED, len(loader), f"certify {name}", progress and run.is_main)
    evaluator.run()
    report = evaluator.report(model={"name": name}, data={"name": data_name, "samples": len(dataset)})
    if not run.is_main:
        return {"report": report, "paths": {}, "table": ""}
    paths = write_certification_reports(report, out)
    paths["curves"] = plot_certified_curves(report, Path(out) / "certified_curves.png")
    paths["html"] = write_html_report([report], out)
    table = certification_markdown(report)
    log(table)
    log(f"report in {out}/ (open {paths['html']} in a browser)")
    return {"report": report, "paths": paths, "table": table}
