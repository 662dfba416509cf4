# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""RobustnessEvaluator keeps per-sample rows: the report depends on the samples, not on how they were batched,
sharded (a padding sampler's repeated sample counts once) or resumed from a progress folder."""

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy
from monai.data import DataLoader
from monai.metrics import ConfusionMatrixMetric
from torch.utils.data import DistributedSampler

from monai_adv.data import BrainLesionDataset
from monai_adv.engines import RobustnessEvaluator
from tests.cases import comparable_report
from tests.models import TinyClassifier

SAMPLES = 11


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    network = TinyClassifier(2, 1, 2).eval()
    data = BrainLesionDataset("test", "classification", 2, num_samples=SAMPLES, image_size=16)
    return network, data


def _evaluate(network, loader, **kwargs):
    metrics = {"sensitivity": ConfusionMatrixMetric(metric_name="sensitivity"), "acc": Accuracy()}
    evaluator = RobustnessEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=network,
        attacks=["fgsm", {"attack": "pgd", "name": "pgd-5", "steps": 5}],
        eps=[2 / 255, 8 / 255],
        additional_metrics=metrics,
        **kwargs,
    )
    evaluator.run()
    return evaluator


@pytest.fixture(scope="module")
def reference(setup):
    network, data = setup
    return comparable_report(_evaluate(network, DataLoader(data, batch_size=4)).report())


def test_the_report_does_not_depend_on_the_batches(setup, reference):
    network, data = setup
    evaluator = _evaluate(network, DataLoader(data, batch_size=3))
    assert comparable_report(evaluator.report()) == reference
    assert reference["num_samples"] == SAMPLES
    assert {"sensitivity", "acc"} <= set(reference["results"][0]["metrics"])


def test_padded_shards_evaluated_apart_make_the_whole_report(setup, reference, tmp_path):
    network, data = setup
    # two ranks of a padding sampler (11 samples: rank 1's last one repeats sample 0), one folder for both
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_size=2, sampler=sampler)
        evaluator = _evaluate(network, loader, progress_dir=tmp_path)
    assert comparable_report(evaluator.report()) == reference


def test_a_resumed_evaluation_attacks_only_the_missing_samples(setup, reference, tmp_path):
    network, data = setup
    first = _evaluate(network, DataLoader(data, batch_size=4), progress_dir=tmp_path)
    assert comparable_report(first.report()) == reference
    stored = sorted((tmp_path / "batches").glob("*.pt"))
    assert len(stored) == 3
    stored[1].unlink()  # samples 4-7 are lost
    attacked = []
    second = RobustnessEvaluator(
        device="cpu",
        val_data_loader=DataLoader(data, batch_size=2),
        network=network,
        attacks=["fgsm", {"attack": "pgd", "name": "pgd-5", "steps": 5}],
        eps=[2 / 255, 8 / 255],
        additional_metrics={"sensitivity": ConfusionMatrixMetric(metric_name="sensitivity"), "acc": Accuracy()},
        progress_dir=tmp_path,
    )
    second.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: attacked.append(not engine.state.output.get("skipped", False))
    )
    second.run()
    assert attacked == [False, False, True, True, False, False], "only the batches of samples 4-7 are attacked"
    assert comparable_report(second.report()) == reference


def test_progress_needs_to_know_each_sample(setup, tmp_path):
    network, data = setup
    with pytest.raises(ValueError, match="shuffle=False"):
        _evaluate(network, DataLoader(data, batch_size=4, shuffle=True), progress_dir=tmp_path)


def test_a_progress_folder_of_another_model_is_refused(setup, tmp_path):
    network, data = setup
    _evaluate(network, DataLoader(data, batch_size=8), progress_dir=tmp_path)
    other = TinyClassifier(2, 1, 2).eval()
    with pytest.raises(ValueError, match="network: stored"):
        _evaluate(other, DataLoader(data, batch_size=8), progress_dir=tmp_path)


def test_max_batch_gives_the_same_report(setup, reference):
    network, data = setup
    evaluator = _evaluate(network, DataLoader(data, batch_size=8), max_batch=3)
    assert evaluator.max_batch == 3
    assert all(attack.max_batch == 3 for attack in evaluator._attacks.values())
    assert comparable_report(evaluator.report()) == reference
    with pytest.raises(ValueError, match="max_batch"):
        _evaluate(network, DataLoader(data, batch_size=8), max_batch=0)
