# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""`monai-adv evaluate` at scale: two torchrun processes (gloo) and a killed-then-rerun evaluation both write the
report of one uninterrupted single-process run, sample for sample."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monai_adv.apps.demo import demo_network
from monai_adv.cli import main
from tests.cases import comparable_report

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 13  # odd: the two ranks get shards of different sizes
SETTINGS = ["--data", "demo", "--samples", str(SAMPLES), "--attacks", "fgsm,pgd-20", "--eps", "2/255,8/255"]


def _arguments(checkpoint, out, batch_size=4, extra=()):
    args = ["evaluate", "--checkpoint", str(checkpoint), "--network", "demo", *SETTINGS, *extra]
    return args + ["--batch-size", str(batch_size), "--out", str(out), "--no-progress", "--device", "cpu"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The checkpoint and the uninterrupted single-process report (batches of 4)."""
    folder = tmp_path_factory.mktemp("single")
    torch.manual_seed(0)
    checkpoint = folder / "model.pt"
    torch.save(demo_network().state_dict(), checkpoint)
    assert main(_arguments(checkpoint, folder / "report")) == 0
    return checkpoint, json.loads((folder / "report" / "model.json").read_text())


def test_two_gloo_processes_write_the_single_process_report(single_run, tmp_path):
    checkpoint, single = single_run
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai_adv"]
    # batches of 3 on each rank: neither the shards nor the batches are those of the single run
    command = launcher + _arguments(checkpoint, tmp_path / "ddp", batch_size=3)
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert report["num_samples"] == SAMPLES and all(r["samples"] == SAMPLES for r in report["results"])
    assert comparable_report(report) == comparable_report(single)
    stored = sorted(p.name for p in (tmp_path / "ddp" / "progress" / "batches").glob("*.pt"))
    assert any("rank0" in p for p in stored) and any("rank1" in p for p in stored), "each rank wrote its batches"


def test_fitted_attacks_and_corruptions_under_two_gloo_processes(single_run, tmp_path):
    """Rank 0 fits the universal perturbation and patch on the (unsharded) validation split and sends them; the
    corruption cells are seeded per sample: the report equals the single-process one."""
    checkpoint = single_run[0]
    extra = ["--attacks", "fgsm,uap,patch", "--eps", "8/255", "--patch-sizes", "0.05", "--fit-samples", "8"]
    extra += ["--corruptions", "gaussian_noise,bias_field"]
    assert main(_arguments(checkpoint, tmp_path / "single", extra=extra)) == 0
    single = json.loads((tmp_path / "single" / "model.json").read_text())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai_adv"]
    # the same batch size: the fit's stochastic steps follow the fit data's batches (the shards differ anyway)
    command = launcher + _arguments(checkpoint, tmp_path / "ddp", extra=extra)
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert {r["threat_model"] for r in report["results"]} == {"per-image", "universal", "worst-case"}
    assert len(report["patches"]) == 1 and len(report["corruptions"]["results"]) == 10
    assert comparable_report(report) == comparable_report(single)


def test_a_killed_evaluation_resumes_to_the_same_report(single_run, tmp_path):
    checkpoint, single = single_run
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "monai_adv", *_arguments(checkpoint, out, batch_size=1)]
    batches = out / "progress" / "batches"
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(list(batches.glob("*.pt"))) < 3 and process.poll() is None:
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    finished = len(list(batches.glob("*.pt")))
    assert 3 <= finished < SAMPLES, "the run was not killed mid-way"
    assert not (out / "model.json").exists()
    # the rerun (with other batches: the outcomes do not depend on them) computes only the missing samples
    assert main(_arguments(checkpoint, out, batch_size=5)) == 0
    report = json.loads((out / "model.json").read_text())
    assert comparable_report(report) == comparable_report(single)
    assert not list(batches.glob(".*.tmp*")), "no temporary file is left"


def test_a_rerun_with_other_settings_or_weights_is_refused(single_run, tmp_path, capsys):
    checkpoint, _ = single_run
    out = tmp_path / "report"
    args = _arguments(checkpoint, out, extra=["--samples", "2", "--attacks", "fgsm", "--eps", "2/255"])
    assert main(args) == 0
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(demo_network().state_dict(), other)
    changes = [(["--eps", "4/255"], "eps"), (["--attacks", "pgd-20"], "attacks"), (["--seed", "1"], "seed")]
    changes += [(["--samples", "3"], "samples"), (["--checkpoint", str(other)], "network")]
    for change, named in changes:
        capsys.readouterr()
        assert main(args + change) == 1, change
        error = capsys.readouterr().err
        assert "other settings" in error and f"{named}: stored" in error, error
    capsys.readouterr()
    assert main(args + ["--batch-size", "1"]) == 0, "the batch size is not a setting of the outcomes"
