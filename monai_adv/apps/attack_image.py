# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``monai-adv attack``: one image (NIfTI, DICOM, PNG) and a model -> the adversarial image and the perturbation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, SaveImage

from monai_adv.apps.sources import (
    CommandError,
    check_channels,
    check_spatial_dims,
    first_conv_spatial_dims,
    load_bundle,
    load_network,
)
from monai_adv.atomic import atomic_folder
from monai_adv.attacks.tasks import predict
from monai_adv.devices import resolve_device
from monai_adv.engines import build_attack, parse_attack_specs
from monai_adv.visualize import plot_adversarial_examples

__all__ = ["run_attack"]


def _load_image(path: Path) -> MetaTensor:
    if not path.exists():
        raise CommandError(f"image not found: {path}")
    try:
        image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except MemoryError:
        raise CommandError(
            f"cannot read {path}: its header asks for more memory than there is (a corrupt header, or an image "
            "too large for this machine)"
        ) from None
    except Exception as e:
        lines = str(e).strip().splitlines()
        reason = lines[0] if lines else type(e).__name__
        raise CommandError(f"cannot read {path} as an image (NIfTI, DICOM, PNG): {reason}") from e
    return image.float()


def run_attack(
    image: Path,
    out: Path,
    attack: str = "pgd-20",
    eps: float = 4 / 255,
    bundle: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    network: Optional[str] = None,
    label: Optional[int] = None,
    norm: str = "Linf",
    seed: int = 0,
    log=print,
    device: Optional[str] = None,
) -> Dict[str, Any]:
    """Attack one image and write ``<name>_adversarial.nii.gz``, ``<name>_perturbation.nii.gz`` (same affine as
    the input) and ``<name>_preview.png`` in ``out``.

    The image is min-max scaled to [0, 1] for the model (so ``eps`` is a fraction of its intensity range); the
    outputs are mapped back to the input's intensities. Without ``label`` the attack flips the model's own clean
    prediction (class, or label map for a segmentation model).

    The model and the image go to ``device`` (None: ``cuda`` when available, else ``cpu``); the outputs and the
    returned ``x_adv`` are on the host.
    """
    device = resolve_device(device, "--device")
    if bundle is not None:
        model, _ = load_bundle(bundle)
    elif checkpoint is not None and network is not None:
        model = load_network(network, checkpoint)
    else:
        raise CommandError("give --bundle DIR, or --checkpoint FILE with --network SPEC")
    model = model.to(device)
    try:
        spec = parse_attack_specs([attack])[0]
    except (ValueError, TypeError) as e:
        raise CommandError(f"--attack: {e}") from e
    img = _load_image(Path(image))
    check_channels(model, img)
    dims = first_conv_spatial_dims(model)
    squeezed = dims is not None and img.ndim - 1 == dims + 1 and img.shape[-1] == 1  # one DICOM slice, 2D model
    if squeezed:
        img = img[..., 0]
    check_spatial_dims(model, img, f"--image {image}")
    if min(img.shape[1:]) < 2:
        raise CommandError(
            f"the image is too small to attack and save (shape {tuple(img.shape)}, channels first): every spatial "
            "dim must be at least 2"
        )
    lo, hi = float(img.min()), float(img.max())
    scale = hi - lo if hi > lo else 1.0
    x = ((img - lo) / scale)[None].to(device)
    with torch.no_grad():
        logits = model(x.as_tensor())
    segmentation = logits.ndim > 2
    task = "segmentation" if segmentation else "classification"
    if label is not None:
        if segmentation:
            raise CommandError("--label is for classifiers; a segmentation model is attacked against its own map")
        if not 0 <= label < max(logits.shape[1], 2):
            raise CommandError(f"--label must be a class index in [0, {max(logits.shape[1], 2) - 1}], got {label}")
        y = torch.tensor([label], device=device)
    else:  # the model's own clean prediction: class indices (N,), or a label map (N, 1, *spatial)
        y = predict(task, logits)
        y = y[:, None] if segmentation else y
    try:
        atk = build_attack(spec, model, eps, norm, (0.0, 1.0), task, seed)
    except (ValueError, TypeError) as e:
        raise CommandError(f"--attack {attack}: {e}") from e
    x_adv = atk.perturb(x, y).x_adv
    with torch.no_grad():
        adv_logits = model(x_adv.as_tensor())
    # the outputs (files, figure, returned tensors) are on the host
    x, x_adv, y, logits, adv_logits = (t.detach().cpu() for t in (x, x_adv, y, logits, adv_logits))
    adversarial = x_adv[0] * scale + lo
    perturbation = adversarial - img
    if squeezed:
        img, adversarial, perturbation = img[..., None], adversarial[..., None], perturbation[..., None]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(str(image)).name.split(".")[0] or "image"
    with atomic_folder(out) as staging:  # both volumes replace earlier outputs only once both are written
        for tensor, postfix in ((adversarial, "adversarial"), (perturbation, "perturbation")):
            saved = MetaTensor(tensor.as_tensor(), meta=dict(img.meta))
            SaveImage(
                output_dir=str(staging),
                output_postfix=postfix,
                output_ext=".nii.gz",
                separate_folder=False,
                resample=False,
                print_log=False,
            )(saved, meta_data={**img.meta, "filename_or_obj": name})
    paths = {k: out / f"{name}_{k}.nii.gz" for k in ("adversarial", "perturbation")}
    if segmentation:
        seg = {"label": y, "clean": y, "adversarial": predict(task, adv_logits)[:, None]}
        paths["preview"] = plot_adversarial_examples(x, x_adv, out / f"{name}_preview.png", segmentation=seg)
        log(f"{attack} at eps {eps:.4g}: segmentation attacked against the model's own clean map")
    else:
        clean_pred, adv_pred = int(predict(task, logits)[0]), int(predict(task, adv_logits)[0])
        paths["preview"] = plot_adversarial_examples(
            x,
            x_adv,
            out / f"{name}_preview.png",
            labels=y,
            clean_predictions=torch.tensor([clean_pred]),
            adversarial_predictions=torch.tensor([adv_pred]),
        )
        log(f"{attack} at eps {eps:.4g}: prediction {clean_pred} -> {adv_pred} (label {int(y[0])})")
    for key, path in paths.items():
        log(f"{key}: {path}")
    return {"paths": paths, "x_adv": x_adv}
