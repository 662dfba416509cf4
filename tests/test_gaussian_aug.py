# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Gaussian data augmentation, the training for randomized smoothing."""

from pathlib import Path

import pytest
import torch

from monai_adv.defenses import GaussianAugmentation, make_defense
from monai_adv.engines import RobustTrainer
from tests.models import TinyClassifier, TinySegmenter, bars_dataset

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def _train(defense, net, x, y, steps=20, seed=None):
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for step in range(steps):
        net.train()
        opt.zero_grad()
        loss, outputs = defense(net, x, y, seed=None if seed is None else seed + step)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, outputs


def test_trains_a_2d_classifier_and_3d_segmenters():
    x, y = bars_dataset(32, seed=3)
    torch.manual_seed(0)
    losses, outputs = _train(make_defense("gaussian_aug", sigma=0.25), TinyClassifier(2, 1, 3), x, y, seed=0)
    assert outputs["clean"] is None and outputs["adversarial"].shape == (32, 3)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    for loss in ("ce", "dice"):
        torch.manual_seed(0)
        x = torch.rand(2, 1, 8, 8, 8)
        y = (x > 0.5).long()
        losses, outputs = _train(make_defense("gaussian_aug", sigma=0.1, loss=loss), TinySegmenter(3, 1, 2), x, y)
        assert outputs["adversarial"].shape == (2, 2, 8, 8, 8)
        assert losses[-1] < losses[0], (loss, losses)


def test_the_network_sees_unclipped_noise_of_std_sigma():
    x = torch.rand(16, 1, 32, 32)
    seen = []
    net = TinyClassifier(2, 1, 2)
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    make_defense("gaussian_aug", sigma=0.5)(net, x, torch.zeros(16, dtype=torch.long), seed=1)
    noise = seen[0] - x
    assert noise.std().item() == pytest.approx(0.5, rel=0.03)  # 16384 draws: 1 % standard error
    assert noise.mean().abs().item() < 0.02
    assert seen[0].min() < 0 and seen[0].max() > 1, "noise is added in input space, not clipped to the range"
    # every sample gets its own noise, of std sigma
    per_sample = noise.flatten(1).std(dim=1)
    assert torch.all((per_sample - 0.5).abs() < 0.05)
    assert not torch.equal(noise[0], noise[1])


def test_noise_is_deterministic_for_a_seed_and_independent_of_the_batch():
    defense = GaussianAugmentation(sigma=0.25)
    x = torch.rand(6, 1, 8, 8, 8)
    noise = defense.noise(x, seed=3)
    assert torch.equal(noise, defense.noise(x, seed=3))
    assert not torch.equal(noise, defense.noise(x, seed=4))
    assert torch.equal(defense.noise(x[[4, 1]], seed=3), noise[[4, 1]])
    assert noise.dtype == x.dtype and defense.noise(x.double(), seed=3).dtype == torch.float64
    assert defense.noise(x[:0], seed=3).shape == (0, 1, 8, 8, 8)


def test_robust_trainer_with_a_seed_trains_reproducibly():
    x, y = bars_dataset(16, seed=1)

    def run():
        torch.manual_seed(0)
        net = TinyClassifier(2, 1, 3)
        trainer = RobustTrainer(
            device="cpu",
            max_epochs=2,
            train_data_loader=[{"image": x[:8], "label": y[:8]}, {"image": x[8:], "label": y[8:]}],
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            defense="gaussian_aug",
            defense_kwargs={"sigma": 0.25},
            seed=7,
        )
        trainer.run()
        assert 0.0 <= trainer.state.output[0]["adversarial_accuracy"] <= 1.0
        return [p.detach().clone() for p in net.parameters()]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("bundle", ["brain_lesion_robust_classification", "brain_lesion_robust_segmentation"])
def test_the_bundles_train_robust_override_builds_it(bundle):
    """``--defense gaussian_aug --defense_kwargs "{'sigma': 0.25}"`` on train_robust.json."""
    from monai.bundle import ConfigParser

    files = [str(BUNDLES / bundle / "configs" / c) for c in ("train.json", "train_robust.json")]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser["defense"] = "gaussian_aug"
    parser["defense_kwargs"] = {"sigma": 0.25}
    defense = make_defense(parser.get_parsed_content("defense"), **parser.get_parsed_content("defense_kwargs"))
    assert isinstance(defense, GaussianAugmentation) and defense.sigma == 0.25
    # the bundle's own defense_kwargs (an attack budget) are refused, naming the override to give
    kwargs = ConfigParser(ConfigParser.load_config_files(files)).get_parsed_content("defense_kwargs")
    with pytest.raises(TypeError, match=r"takes `sigma`, not \['eps', 'steps'\].*--defense_kwargs"):
        make_defense("gaussian_aug", **kwargs)


BAD = [
    ({"sigma": 0.0}, ValueError, "`sigma` must be a finite number > 0"),
    ({"sigma": -1.0}, ValueError, "`sigma`"),
    ({"sigma": float("nan")}, ValueError, "`sigma`"),
    ({"sigma": "0.25"}, TypeError, "`sigma` must be a real number"),
    ({"sigma": 25.0}, ValueError, "units of the images"),
    ({"eps": 8 / 255}, TypeError, r"takes `sigma`, not \['eps'\]"),
    ({"loss": "hinge"}, ValueError, "`loss` must be one of"),
    ({"task": "detection"}, ValueError, "`task` must be one of"),
]


@pytest.mark.parametrize("kwargs, error, pattern", BAD, ids=[str(k) for k, _, _ in BAD])
def test_bad_arguments_are_clear_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        make_defense("gaussian_aug", **kwargs)


def test_bad_inputs_are_clear_errors():
    net = TinyClassifier(2, 1, 2)
    defense = make_defense("gaussian_aug")
    with pytest.raises(ValueError, match="value_range"):
        defense(net, torch.rand(2, 1, 8, 8) + 2.0, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN|finite"):
        defense(net, torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"\['bogus'\]"):
        make_defense("gaussian_aug", bogus=1)
