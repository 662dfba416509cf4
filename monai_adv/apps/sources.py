# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Where the command line gets its models (bundle, checkpoint + network) and its data (demo, MedMNIST, CSV, NIfTI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from monai.bundle import ConfigParser
from monai.data import Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

from monai_adv.apps.arguments import CommandError, parse_eps
from monai_adv.data import BrainLesionDataset, CSVManifestDataset, MedMNISTDataset

__all__ = [
    "CommandError",
    "check_channels",
    "check_spatial_dims",
    "first_conv_channels",
    "first_conv_spatial_dims",
    "load_bundle",
    "load_data",
    "load_network",
    "parse_eps",
]

BUNDLE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")


def _load_weights(network: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    if not checkpoint.is_file():
        raise CommandError(f"checkpoint not found: {checkpoint}")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code, corrupt files
        raise CommandError(f"cannot load {checkpoint} as weights (torch.load weights_only=True): {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CommandError(f"{checkpoint} does not hold a state dict")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CommandError(f"the weights in {checkpoint} do not fit the network: {first}") from e
    return network.eval()


def load_network(spec: str, checkpoint: Optional[Path] = None) -> torch.nn.Module:
    """A network from "demo" (the demo ResNet), a JSON object with ``_target_`` (as a bundle's ``network_def``)
    or a JSON file holding one; with weights from ``checkpoint`` when given."""
    if spec == "demo":
        from monai_adv.apps.demo import demo_network

        network = demo_network()
    else:
        text = Path(spec).read_text() if spec.endswith(".json") and Path(spec).is_file() else spec
        try:
            config = json.loads(text)
        except json.JSONDecodeError:
            raise CommandError(
                f'--network: expected "demo", a JSON object such as \'{{"_target_": "monai.networks.nets.DenseNet121", '
                f'"spatial_dims": 2, "in_channels": 1, "out_channels": 2}}\' or a .json file, got {spec!r}'
            ) from None
        if not isinstance(config, dict) or "_target_" not in config:
            raise CommandError('--network: the JSON object needs a "_target_" (e.g. "monai.networks.nets.DenseNet121")')
        try:
            network = ConfigParser({"network_def": config}).get_parsed_content("network_def")
        except Exception as e:
            raise CommandError(f"--network: cannot build {config['_target_']}: {str(e).splitlines()[0]}") from e
    return _load_weights(network, checkpoint) if checkpoint is not None else network.eval()


def load_bundle(bundle: Path) -> Tuple[torch.nn.Module, ConfigParser]:
    """The network of a MONAI bundle (``network_def`` of its inference config, weights ``models/model.pt``)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise CommandError(f"bundle folder not found: {bundle}")
    config_file = next((bundle / c for c in BUNDLE_CONFIGS if (bundle / c).is_file()), None)
    if config_file is None:
        raise CommandError(f"{bundle} is not a MONAI bundle: no configs/inference.json")
    parser = ConfigParser()
    try:
        parser.read_config(config_file)
    except Exception as e:
        raise CommandError(f"cannot read {config_file}: {str(e).splitlines()[0]}") from e
    parser["bundle_root"] = str(bundle)
    if "network_def" not in parser:
        raise CommandError(f"{config_file} has no network_def: not a bundle this command can load")
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as e:
        raise CommandError(f"cannot build the network_def of {config_file}: {str(e).splitlines()[0]}") from e
    return _load_weights(network, bundle / "models" / "model.pt"), parser


def _loading_transform(preprocessing: Optional[Callable]) -> Callable:
    if preprocessing is not None:
        return preprocessing
    return Compose([LoadImaged("image"), EnsureChannelFirstd("image"), ScaleIntensityd("image")])


def bundle_image_size(bundle: Optional[Path]) -> Optional[int]:
    """The side of the square (cubic) input the bundle's network takes, from ``network_data_format`` in its
    ``configs/metadata.json``; None without a bundle or when the metadata does not say."""
    if bundle is None:
        return None
    try:
        formats = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())["network_data_format"]
        shape = [int(v) for v in formats["inputs"]["image"]["spatial_shape"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return shape[0] if len(shape) in (2, 3) and len(set(shape)) == 1 else None


def load_data(
    spec: str,
    samples: Optional[int] = None,
    preprocessing: Optional[Callable] = None,
    split: str = "test",
    image_size: Optional[int] = None,
) -> Any:
    """An evaluation data set from a specification:

    - ``demo`` or ``demo:<task>`` (classification, multiclass, multilabel, segmentation; ``demo3d:<task>``
      for 3D patches): the ``split`` ("test", or "val" for the fit data of fitted attacks) of the embedded demo data,
      its images of side ``image_size`` (None: the data set's default; a bundle's from :func:`bundle_image_size`);
    - ``medmnist:<file.npz>``: the ``split`` of a MedMNIST file;
    - ``csv:<manifest.csv>``: a manifest with columns image (path) and label;
    - ``nifti:<folder>``: segmentation pairs ``<folder>/images/<name>`` and ``<folder>/labels/<name>``.
    """
    if samples is not None and samples < 1:
        raise CommandError(f"--samples: expected a number >= 1, got {samples}")
    kind, _, arg = spec.partition(":")
    if kind in ("demo", "demo3d"):
        task = arg or "classification"
        try:
            size = {} if image_size is None else {"image_size": image_size}
            return BrainLesionDataset(split, task, 3 if kind == "demo3d" else 2, num_samples=samples or 200, **size)
        except ValueError as e:
            raise CommandError(f"--data {spec}: {e}") from e
    if kind in ("medmnist", "csv", "nifti") and not arg:
        raise CommandError(f"--data {spec}: give a path after the colon, e.g. {kind}:<path>")
    path = Path(arg)
    if kind == "medmnist":
        if not path.is_file():
            raise CommandError(f"--data: MedMNIST file not found: {path}")
        data = MedMNISTDataset(path, split=split)
    elif kind == "csv":
        if not path.is_file():
            raise CommandError(f"--data: CSV manifest not found: {path}")
        try:
            data = CSVManifestDataset(path, transform=_loading_transform(preprocessing))
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise CommandError(f"--data {spec}: {e.args[0] if e.args else e}") from e  # KeyError's str() quotes
    elif kind == "nifti":
        images = sorted((path / "images").glob("*.nii*")) if (path / "images").is_dir() else []
        if not images:
            raise CommandError(f"--data: no NIfTI images in {path / 'images'}")
        pairs: List[Dict[str, str]] = []
        for image in images:
            label = path / "labels" / image.name
            if not label.is_file():
                raise CommandError(f"--data: no label map {label} for {image}")
            pairs.append({"image": str(image), "label": str(label)})
        transform = Compose(
            [LoadImaged(("image", "label")), EnsureChannelFirstd(("image", "label")), ScaleIntensityd("image")]
        )
        data = NamedFileDataset(pairs, transform=transform)
    else:
        raise CommandError(f"--data: expected demo[:task], demo3d[:task], medmnist:, csv: or nifti:, got {spec!r}")
    if samples is not None:
        try:
            data = Dataset([data[i] for i in range(min(samples, len(data)))])
        except ValueError as e:
            raise CommandError(f"--data {spec}: {e}") from e
    return data


class NamedFileDataset(Dataset):
    """A MONAI ``Dataset`` of file paths whose loading errors name the files of the sample."""

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:
            files = ", ".join(str(v) for v in self.data[index].values())
            cause = e
            while cause.__cause__ is not None:  # MONAI wraps a reader's error in "applying transform ..."
                cause = cause.__cause__
            text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            raise ValueError(f"cannot load {files}: {type(cause).__name__}: {text}") from e


def first_conv_channels(network: torch.nn.Module) -> Optional[int]:
    """Input channels of the network's first convolution (None when it has none)."""
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            return module.in_channels
    return None


def first_conv_spatial_dims(network: torch.nn.Module) -> Optional[int]:
    """Spatial dims (1, 2 or 3) of the network's first convolution (None when it has none)."""
    for module in network.modules():
        for dims, kind in enumerate((torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d), start=1):
            if isinstance(module, kind):
                return dims
    return None


def check_spatial_dims(network: torch.nn.Module, image: torch.Tensor, what: str = "the image") -> None:
    """Refuse an image (C, *spatial) with another number of spatial dims than the network's convolutions take."""
    dims = first_conv_spatial_dims(network)
    if dims is not None and image.ndim - 1 != dims:
        raise CommandError(
            f"dimension mismatch: {what} is {image.ndim - 1}D (shape {tuple(image.shape)}, channels first), the "
            f"network takes {dims}D images; use data of the network's dimension (e.g. demo for 2D, demo3d for 3D)"
        )


def check_channels(network: torch.nn.Module, image: torch.Tensor) -> None:
    """Refuse an image whose channels (first axis) the network does not take."""
    expected = first_conv_channels(network)
    if expected is not None and image.shape[0] != expected:
        raise CommandError(
            f"channel mismatch: the image has {image.shape[0]} channel(s) (shape {tuple(image.shape)}), "
            f"the network expects {expected}"
        )
