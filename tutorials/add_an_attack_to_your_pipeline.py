# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Add an attack to your MONAI pipeline in one line.

Run from the repository root::

    python -m tutorials.add_an_attack_to_your_pipeline          # about a minute on a laptop CPU
    python -m tutorials.add_an_attack_to_your_pipeline --tiny   # a few seconds

1. Train a small MONAI classifier on the embedded demo data (brain MRI slices, simulated lesions).
2. Evaluate it clean, then add ONE transform to the validation pipeline - ``RandAdversarialPerturbd`` - and
   evaluate it under a PGD attack.
3. Attack the model while it is being trained: the recommended way is at the batch level, in the main process,
   with the current network - not inside DataLoader workers, which would race the optimizer for the model.
"""

from __future__ import annotations

import argparse

import torch
from monai.data import CacheDataset, DataLoader
from monai.networks.nets import ResNet
from monai.transforms import Compose, ScaleIntensityd

from monai_adv.data import BrainLesionDataset
from monai_adv.transforms import AdversarialPerturbd, RandAdversarialPerturbd


def accuracy(net: torch.nn.Module, loader: DataLoader) -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            correct += int((net(batch["image"]).argmax(1) == batch["label"]).sum())
            total += batch["label"].numel()
    return correct / total


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Add an attack to a MONAI pipeline in one line.")
    parser.add_argument("--tiny", action="store_true", help="a few samples and one epoch, for a quick check")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n_train, n_val, epochs = (128, 64, 1) if args.tiny else (2000, 400, 6)

    train_data = BrainLesionDataset("train", task="classification", spatial_dims=2, num_samples=n_train)
    val_data = BrainLesionDataset("val", task="classification", spatial_dims=2, num_samples=n_val)
    net = ResNet(
        "basic",
        [1, 1, 1, 1],
        [16, 32, 64, 128],
        spatial_dims=2,
        n_input_channels=1,
        num_classes=2,
        conv1_t_stride=1,
        no_max_pool=True,
    )

    # --- 3. adversarial training, batch-level in the main process: the attack follows the current network ---
    attack_batch = AdversarialPerturbd(
        keys="image",
        label_key="label",
        network=lambda: net,
        attack="fgsm",
        attack_kwargs={"eps": 2 / 255, "random_start": True, "alpha": 2.5 / 255},
    )
    train_loader = DataLoader(train_data, batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for batch in train_loader:
            batch = attack_batch(batch)  # a collated MetaTensor batch: the transform sees `is_batch`
            net.train()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"]).backward()
            optimizer.step()

    # --- 1./2. evaluation: the clean pipeline, and the same pipeline plus ONE line ---
    clean = Compose([ScaleIntensityd(keys="image")])
    attacked = Compose(
        [
            ScaleIntensityd(keys="image"),
            RandAdversarialPerturbd(
                keys="image", label_key="label", network=net, attack="pgd", attack_kwargs={"eps": 2 / 255, "steps": 10}
            ),  # <- the one line
        ]
    )
    clean_acc = accuracy(net, DataLoader(CacheDataset(val_data.data, clean, progress=False), batch_size=64))
    robust_acc = accuracy(net, DataLoader(CacheDataset(val_data.data, attacked, progress=False), batch_size=64))
    print(f"validation accuracy: clean {clean_acc:.3f}, under PGD-10 at eps 2/255 {robust_acc:.3f}")
    return {"clean_accuracy": clean_acc, "robust_accuracy": robust_acc}


if __name__ == "__main__":
    main()
