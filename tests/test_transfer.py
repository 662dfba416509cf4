# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Transfer attacks: crafted on a surrogate, scored on a target."""

import pytest
import torch

from monai_adv.attacks import CW, PGD, TransferAttack, make_attack
from tests.models import TinyClassifier, accuracy, bars_dataset, train_classifier


@pytest.fixture(scope="module")
def surrogate():
    x_train, y_train = bars_dataset(1024, seed=10)
    torch.manual_seed(1)
    return train_classifier(TinyClassifier(2, 1, 3, width=12), x_train, y_train, epochs=15)


def test_scores_are_measured_on_the_target(trained_bars, surrogate):
    target, x, y = trained_bars
    transfer = TransferAttack(target, PGD(surrogate, eps=24 / 255, steps=20, early_stop=False))
    result = transfer.perturb(x, y)
    with torch.no_grad():
        fooled = target(result.x_adv).argmax(1) != y
        clean_wrong = target(x).argmax(1) != y
    assert torch.equal(result.success, fooled) and torch.equal(result.clean_success, clean_wrong)
    assert torch.equal(result.x_adv, result.details["source"].x_adv)
    assert (result.x_adv - x).abs().max() <= 24 / 255
    target_acc = accuracy(target, result.x_adv, y)
    print(f"transfer PGD-20 eps 24/255: target accuracy {accuracy(target, x, y):.4f} -> {target_acc:.4f}")
    assert target_acc < accuracy(target, x, y) - 0.2


def test_surrogate_equal_to_target_reproduces_the_white_box_attack(trained_bars):
    model, x, y = trained_bars
    attack = PGD(model, eps=12 / 255, steps=10)
    white_box = attack.perturb(x, y)
    transfer = TransferAttack(model, attack).perturb(x, y)
    assert torch.equal(transfer.x_adv, white_box.x_adv) and torch.equal(transfer.success, white_box.success)


def test_the_target_can_be_a_black_box(trained_bars, surrogate):
    model, x, y = trained_bars

    def black_box(v):
        with torch.no_grad():
            return model((v * 16).round() / 16)

    result = TransferAttack(black_box, CW(surrogate, eps=24 / 255, kappa=10, early_stop=False)).perturb(x, y)
    assert result.success.float().mean() > 0.2


def test_bad_arguments(trained_bars):
    model = trained_bars[0]
    with pytest.raises(TypeError, match="takes no argument"):
        TransferAttack(model, "pgd", source_kwargs={"steps": 2, "nope": 1})
    with pytest.raises(TypeError, match="`source` must be an attack or an attack name"):
        TransferAttack(model, 3)
    with pytest.raises(ValueError, match="`source` is a built attack"):
        TransferAttack(model, PGD(model), eps=1 / 255)
    with pytest.raises(ValueError, match="least_likely"):
        TransferAttack(model, PGD(model, targeted="least_likely"))


def test_by_name_from_the_registry(trained_bars, surrogate):
    target, x, y = trained_bars
    transfer = make_attack(
        "transfer",
        target,
        source="pgd",
        surrogate=surrogate,
        eps=24 / 255,
        source_kwargs={"steps": 20, "early_stop": False},
    )
    by_name = transfer.perturb(x, y)
    built = TransferAttack(target, PGD(surrogate, eps=24 / 255, steps=20, early_stop=False)).perturb(x, y)
    assert torch.equal(by_name.x_adv, built.x_adv) and torch.equal(by_name.success, built.success)
