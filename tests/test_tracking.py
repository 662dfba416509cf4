# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Experiment tracking with MONAI's TensorBoardStatsHandler and MLFlowHandler: names, trainer and evaluator metrics,
the bundles run with ``--tracking mlflow``. TensorBoard and MLflow are optional: their tests skip without them."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.utils import path_to_sqlite_uri

from monai_adv.data import BrainLesionDataset
from monai_adv.defenses import PGDAT
from monai_adv.engines import RobustnessEvaluator, RobustTrainer
from monai_adv.handlers import OutputAverage, iteration_scalars, tracking_metrics, tracking_name, training_metrics
from tests.models import TinyClassifier

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network in the tests
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # inside mlflow

ROOT = Path(__file__).resolve().parents[1]
CLS = "brain_lesion_robust_classification"

NAMES = {
    "clean/accuracy": "clean/accuracy",
    "pgd-20@4/255/accuracy": "pgd-20/eps_4_255/accuracy",
    "worst-case@8/255/success_rate": "worst-case/eps_8_255/success_rate",
    "pgd-20@0.05/dice": "pgd-20/eps_0.05/dice",
    "patch@5%/accuracy": "patch/size_5pct/accuracy",
    "patch@16 px/accuracy": "patch/size_16px/accuracy",
    "gaussian_noise@s3/accuracy": "gaussian_noise/severity_3/accuracy",
    "corruption/mean_accuracy": "corruption/mean_accuracy",
    "pgd-20@4/255/hd/95": "pgd-20/eps_4_255/hd/95",
    "my(attack)@4/255/accuracy": "my_attack_/eps_4_255/accuracy",
}


class ReportingPGDAT(PGDAT):
    """PGD-AT whose outputs report a loss term, as a defense with several terms would."""

    name = "reporting_pgd_at"

    def objective(self, network, inputs, targets):
        loss, outputs = super().objective(network, inputs, targets)
        return loss, {**outputs, "ce": loss.detach() * 1.0}


@pytest.fixture(scope="module")
def loader():
    data = BrainLesionDataset("train", "classification", 2, num_samples=40, image_size=16)
    return DataLoader(data, batch_size=16, shuffle=False)  # batches of 16, 16 and 8


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One local MLflow store (SQLite, as MONAI's settings make) for the module: creating it costs seconds."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    return path_to_sqlite_uri(tmp_path_factory.mktemp("mlflow") / "mlruns.db")


def _run_metrics(uri, experiment):
    """{name: [(step, value), ...]} of the only run of ``experiment``, read back with MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    history = {name: client.get_metric_history(run.info.run_id, name) for name in run.data.metrics}
    return run, {name: [(m.step, m.value) for m in values] for name, values in history.items()}


# ---- names ----


@pytest.mark.parametrize("name,expected", sorted(NAMES.items()))
def test_tracking_name(name, expected):
    assert tracking_name(name) == expected


def test_tracking_names_are_valid_mlflow_names():
    validation = pytest.importorskip("mlflow.utils.validation")
    for name in NAMES.values():
        validation._validate_metric_name(name)  # raises on a name MLflow refuses
    with pytest.raises(Exception, match="Names may only contain"):
        validation._validate_metric_name("pgd-20@4/255/accuracy")


def test_tracking_metrics_values_and_collisions():
    metrics = tracking_metrics({"clean/accuracy": 1, "fgsm@4/255/success_rate": None, "x@1/255/auc": torch.tensor(0.5)})
    assert metrics["clean/accuracy"] == 1.0 and isinstance(metrics["clean/accuracy"], float)
    assert math.isnan(metrics["fgsm/eps_4_255/success_rate"]) and metrics["x/eps_1_255/auc"] == 0.5
    with pytest.raises(ValueError, match="same tracking name"):
        tracking_metrics({"a(b)@4/255/accuracy": 1.0, "a_b_@4/255/accuracy": 0.0})
    with pytest.raises(TypeError, match="scalar"):
        tracking_metrics({"clean/accuracy": torch.zeros(3)})
    with pytest.raises(TypeError):
        tracking_name(3)


def test_output_average_weights_batches_and_skips_none():
    metric = OutputAverage("clean_accuracy")
    metric.reset()
    metric.update([{"clean_accuracy": 1.0}] * 3)  # a decollated batch of 3
    metric.update({"image": torch.zeros(1, 1, 2, 2), "clean_accuracy": 0.0})  # a plain dict, batch of 1
    metric.update({"image": torch.zeros(5, 1, 2, 2), "clean_accuracy": None})  # not reported: not counted
    assert metric.compute() == pytest.approx(0.75)
    metric.reset()
    with pytest.warns(UserWarning, match="no iteration"):
        assert math.isnan(metric.compute())
    with pytest.raises(ValueError):
        OutputAverage("")


def test_iteration_scalars_names():
    output = {"image": torch.zeros(2, 1), "label": torch.zeros(2), "pred": torch.zeros(2, 2), "loss": torch.tensor(2.0)}
    output.update(clean_accuracy=0.5, adversarial_accuracy=None, loss_kl=torch.tensor(0.25))
    expected = {"train_loss": 2.0, "train_batch_clean_accuracy": 0.5, "train_loss_kl": 0.25}
    assert iteration_scalars(output) == expected
    assert iteration_scalars([output, output]) == expected  # decollated: the first item
    assert iteration_scalars(None) == {}


def test_tracking_helpers_work_without_mlflow_and_tensorboard():
    """The tracking extras stay optional: with mlflow and tensorboard unimportable, the package imports and a robust
    training epoch with the tracking metrics runs."""
    code = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "tensorboard", "tensorboardX"):
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Missing())
import torch
from monai.handlers import StatsHandler
from monai_adv.engines import RobustnessEvaluator, RobustTrainer
from monai_adv.handlers import iteration_scalars, training_metrics
from tests.models import TinyClassifier

net = TinyClassifier(2, 1, 2)
data = [{"image": torch.rand(4, 1, 8, 8), "label": torch.tensor([0, 1, 0, 1])}] * 2
trainer = RobustTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net,
                        optimizer=torch.optim.SGD(net.parameters(), 0.1), defense="trades",
                        defense_kwargs={"eps": 2 / 255, "steps": 1}, key_train_metric=training_metrics(),
                        train_handlers=[StatsHandler(output_transform=iteration_scalars)])
trainer.run()
assert set(trainer.state.metrics) == {"train_adversarial_accuracy", "train_clean_accuracy", "train_mean_loss"}
assert not any(m.split(".")[0] in ("mlflow", "tensorboard") for m in sys.modules)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ---- engines ----


def test_robust_trainer_with_tensorboard_writes_the_robust_scalars(loader, tmp_path):
    pytest.importorskip("tensorboard")
    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    net = TinyClassifier(2, 1, 2)
    values = []
    trainer = RobustTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        defense=ReportingPGDAT(eps=2 / 255, steps=2),
        clean_accuracy=True,
        key_train_metric=training_metrics(terms=("ce",)),
        train_handlers=[TensorBoardStatsHandler(log_dir=str(tmp_path), output_transform=iteration_scalars)],
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: values.append(iteration_scalars(e.state.output)))
    trainer.run()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    per_iteration = ["train_loss", "train_batch_clean_accuracy", "train_batch_adversarial_accuracy", "train_loss_ce"]
    per_epoch = ["train_clean_accuracy", "train_adversarial_accuracy", "train_mean_loss", "train_mean_loss_ce"]
    assert set(scalars) == set(per_iteration + per_epoch)
    for tag in per_iteration:
        assert [step for step, _ in scalars[tag]] == list(range(1, 7))
    for tag in per_epoch:
        assert [step for step, _ in scalars[tag]] == [1, 2]
    # the epoch values are the sample-weighted means of the iteration values (batches of 16, 16, 8)
    for epoch in (0, 1):
        batch = values[3 * epoch : 3 * epoch + 3]
        for name, key in (("train_clean_accuracy", "train_batch_clean_accuracy"), ("train_mean_loss", "train_loss")):
            mean = sum(w * b[key] for w, b in zip((16, 16, 8), batch)) / 40
            assert scalars[name][epoch][1] == pytest.approx(mean, rel=1e-5)
    assert scalars["train_mean_loss_ce"] == pytest.approx(scalars["train_mean_loss"], rel=1e-5)
    assert trainer.state.metrics["train_clean_accuracy"] == pytest.approx(scalars["train_clean_accuracy"][1][1])


def _evaluator(loader, **kwargs):
    torch.manual_seed(0)
    return RobustnessEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=TinyClassifier(2, 1, 2).eval(),
        attacks=["fgsm", {"attack": "pgd", "name": "pgd-3", "steps": 3}],
        eps=[2 / 255, 4 / 255],
        check=False,
        **kwargs,
    )


def test_evaluator_with_mlflow_logs_every_attack_and_budget(loader, tracking_uri):
    from monai.handlers import MLFlowHandler, StatsHandler

    seen = {}
    mlflow_handler = MLFlowHandler(
        tracking_uri=tracking_uri, experiment_name="evaluator", iteration_log=False, close_on_complete=True
    )
    stats = StatsHandler(iteration_log=False, epoch_print_logger=lambda e: seen.update(e.state.metrics))
    evaluator = _evaluator(loader, tracking_names=True, val_handlers=[stats, mlflow_handler])
    evaluator.run()
    plain = _evaluator(loader)
    plain.run()
    names = {tracking_name(k) for k in plain.state.metrics}
    cells = [f"{a}/eps_{e}_255" for a in ("fgsm", "pgd-3", "worst-case") for e in (2, 4)]
    assert {f"{c}/{m}" for c in cells for m in ("accuracy", "success_rate")} <= names
    assert set(evaluator.state.metrics) == names and seen == evaluator.state.metrics  # the handlers saw the metrics
    run, logged = _run_metrics(tracking_uri, "evaluator")
    assert run.info.status == "FINISHED" and set(logged) == names
    for name, value in evaluator.state.metrics.items():
        assert logged[name] == [(1, pytest.approx(value, nan_ok=True))]
    for name, value in plain.state.metrics.items():  # the same numbers as the state.metrics names of old
        if value is not None:
            assert evaluator.state.metrics[tracking_name(name)] == pytest.approx(value)


def test_evaluator_with_tensorboard(loader, tmp_path):
    pytest.importorskip("tensorboard")
    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    handler = TensorBoardStatsHandler(log_dir=str(tmp_path), iteration_log=False)
    evaluator = _evaluator(loader, tracking_names=True, val_handlers=[handler])
    evaluator.run()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    finite = {k for k, v in evaluator.state.metrics.items() if not math.isnan(v)}
    assert set(events.Tags()["scalars"]) >= finite and "pgd-3/eps_4_255/accuracy" in finite


# ---- bundles ----


def _bundle(tmp_path):
    dst = tmp_path / CLS
    shutil.copytree(ROOT / "bundles" / CLS, dst, ignore=shutil.ignore_patterns("eval", "data", "train"))
    return dst


def test_bundle_robust_training_with_tracking_mlflow(tmp_path):
    """The command line of the docs: ``python -m monai.bundle run`` on train.json + train_robust.json with
    ``--tracking mlflow`` records the run (MONAI's settings: ``<output_dir>/mlruns.db``, artifacts in ``mlruns/``)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    bundle = _bundle(tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    cmd += ["['configs/train.json','configs/train_robust.json']", "--tracking", "mlflow", "--bundle_root", "."]
    tiny = {"max_epochs": 2, "num_train": 32, "num_val": 8, "val_interval": 1, "image_size": 16, "batch_size": 16}
    tiny.update({"train_eps": "$2 / 255", "defense_kwargs#steps": 2})  # 2 iterations per epoch, 2 attack steps
    for key, value in tiny.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = path_to_sqlite_uri(bundle / "eval" / "mlruns.db")
    run, logged = _run_metrics(uri, "monai_experiment")
    assert run.info.status == "FINISHED"
    epoch = ["train_accuracy", "train_clean_accuracy", "train_adversarial_accuracy", "train_mean_loss"]
    for name in epoch + ["val_robust_accuracy"]:
        assert [step for step, _ in logged[name]] == [1, 2], name
        assert all(0.0 <= value <= 1.0 for _, value in logged[name]) or name == "train_mean_loss"
    assert [step for step, _ in logged["train_loss"]] == [1, 2, 3, 4]  # every iteration
    artifacts = list((bundle / "eval" / "mlruns").rglob("config_*.json"))
    assert artifacts, "the executed config is recorded with the run"


def test_bundle_robustness_evaluation_with_tracking_mlflow(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from monai.bundle import ConfigWorkflow

    bundle = _bundle(tmp_path)
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in ("train.json", "evaluate_robustness.json")],
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        tracking="mlflow",
        num_test=6,
        attacks=["fgsm", "pgd-20"],
        attack_eps="$[2 / 255, 4 / 255]",
        run_name="robustness",
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    run, logged = _run_metrics(path_to_sqlite_uri(bundle / "eval" / "mlruns.db"), "monai_experiment")
    assert run.info.run_name == "robustness" and run.info.status == "FINISHED"
    cells = [f"{a}/eps_{e}_255" for a in ("fgsm", "pgd-20", "worst-case") for e in (2, 4)]
    metrics = ["accuracy", "recall", "precision", "f1", "auc", "success_rate"]
    assert {f"{c}/{m}" for c in cells for m in metrics} | {f"clean/{m}" for m in metrics[:-1]} == set(logged)
    assert (bundle / "eval" / f"{CLS}.json").is_file()  # the report is written as without tracking
