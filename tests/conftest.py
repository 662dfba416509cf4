# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.models import TinyClassifier, accuracy, bars_dataset, train_classifier

# "ci" keeps the default run short; HYPOTHESIS_PROFILE=thorough explores more examples.
settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def trained_bars():
    """A small CNN trained on the synthetic bar images: (model, x_test, y_test), clean test accuracy >= 0.95."""
    x_train, y_train = bars_dataset(1024, seed=0)
    x_test, y_test = bars_dataset(256, seed=1)
    torch.manual_seed(0)
    model = train_classifier(TinyClassifier(2, 1, 3, width=8), x_train, y_train, epochs=15)
    assert accuracy(model, x_test, y_test) >= 0.95
    return model, x_test, y_test


@pytest.fixture(scope="session")
def trained_bars4():
    """The same small CNN trained on four bar orientations (enough classes for the targeted DLR loss)."""
    x_train, y_train = bars_dataset(1024, seed=0, classes=4)
    x_test, y_test = bars_dataset(256, seed=1, classes=4)
    torch.manual_seed(0)
    model = train_classifier(TinyClassifier(2, 1, 4, width=8), x_train, y_train, epochs=15)
    assert accuracy(model, x_test, y_test) >= 0.95
    return model, x_test, y_test
