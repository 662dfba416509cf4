# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``--device`` on every command: its default, its checks (before any work) and the device reaching the runs."""

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from monai_adv.apps.arguments import CommandError, check_device, default_device
from monai_adv.cli import build_parser, main
from monai_adv.devices import host_state_dict, resolve_device

COMMANDS = ("demo", "evaluate", "benchmark", "attack")
#: the arguments each command needs to get past its other checks (FILE: an existing file)
VALID = {
    "demo": [],
    "evaluate": ["--checkpoint", "FILE", "--network", "demo"],
    "benchmark": [],
    "attack": ["--checkpoint", "FILE", "--network", "demo", "--image", "FILE"],
}
RUNS = {
    "demo": ("monai_adv.apps.demo", "run_demo"),
    "evaluate": ("monai_adv.apps.evaluate", "run_evaluate"),
    "benchmark": ("monai_adv.benchmark.grid", "run_grid"),
    "attack": ("monai_adv.apps.attack_image", "run_attack"),
}


def _fake_cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _record_runs(monkeypatch):
    """Replace the commands' work by a recorder of the device it is given."""
    import importlib

    seen = []

    def recorder(*args, **kwargs):
        seen.append(kwargs["device"] if "device" in kwargs else args[0].device)  # run_* keyword, or the config
        return {}

    for module, name in RUNS.values():
        monkeypatch.setattr(importlib.import_module(module), name, recorder)
    return seen


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_device(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "cuda:N" in out


def test_every_command_takes_device():
    parser = build_parser()
    for command in COMMANDS:
        args = parser.parse_args([command, "--device", "cuda:1", *[a.replace("FILE", "x") for a in VALID[command]]])
        assert args.device == "cuda:1"
        assert parser.parse_args([command, *[a.replace("FILE", "x") for a in VALID[command]]]).device is None


def test_check_device_syntax_and_availability(monkeypatch):
    _fake_cuda(monkeypatch, 2)
    assert check_device("cuda:1") == "cuda:1"
    assert check_device(" CUDA:0 ") == "cuda:0"
    assert check_device("cuda") == "cuda"
    assert check_device("cpu") == "cpu"
    assert check_device(None) == default_device() == "cuda"
    with pytest.raises(CommandError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2")
    for bad in ("gpu", "cuda:x", "cuda:", "cuda:-1", "cpu:0", "", "mps"):
        with pytest.raises(CommandError, match=r"^--device: expected cpu, cuda or cuda:N \(e\.g\. cuda:0\), got"):
            check_device(bad)
    _fake_cuda(monkeypatch, 0)
    assert check_device(None) == default_device() == "cpu"
    with pytest.raises(CommandError, match=r"--device cuda: CUDA is not available on this machine"):
        check_device("cuda")
    with pytest.raises(CommandError, match=r"--device cuda:0: CUDA is not available"):
        check_device("cuda:0")


def test_resolve_device_for_library_callers(monkeypatch):
    _fake_cuda(monkeypatch, 0)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="`device`: expected cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="`device` cuda:0: CUDA is not available"):
        resolve_device("cuda:0")
    _fake_cuda(monkeypatch, 1)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"cuda:3: this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:3")


def test_no_default_is_a_hard_coded_device():
    from monai_adv.apps.attack_image import run_attack
    from monai_adv.apps.demo import DemoConfig
    from monai_adv.apps.evaluate import run_evaluate
    from monai_adv.benchmark.grid import RESULT_SETTINGS, GridConfig
    from monai_adv.benchmark.training import train_with_defense

    for function in (run_attack, run_evaluate, train_with_defense):
        assert inspect.signature(function).parameters["device"].default is None, function.__name__
    assert DemoConfig().device is None and GridConfig().device is None
    assert "device" not in RESULT_SETTINGS  # a resumed grid may run on another device


BAD_DEVICES = [
    ("gpu", 1, "--device: expected cpu, cuda or cuda:N (e.g. cuda:0), got 'gpu'"),
    ("cuda:x", 1, "--device: expected cpu, cuda or cuda:N"),
    ("cuda", 0, "--device cuda: CUDA is not available on this machine"),
    ("cuda:3", 1, "--device cuda:3: this machine has 1 CUDA device(s)"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device, gpus, message", BAD_DEVICES, ids=[d for d, _, _ in BAD_DEVICES])
def test_bad_device_is_refused_before_any_work(command, device, gpus, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    _fake_cuda(monkeypatch, gpus)
    seen = _record_runs(monkeypatch)
    args = [command, *[a.replace("FILE", "file") for a in VALID[command]], "--device", device, "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("monai-adv: error:") and message in err and err.count("\n") == 1, err
    assert seen == [], "the command started its work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing may be written before the check"


def test_a_malformed_device_is_refused_without_importing_torch(tmp_path):
    (tmp_path / "m.pt").write_text("")
    code = (
        "import sys\nfrom monai_adv.cli import main\n"
        f"assert main(['evaluate', '--checkpoint', {str(tmp_path / 'm.pt')!r}, '--network', 'demo', "
        "'--device', 'gpu']) == 1\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--device: expected" in proc.stderr, proc.stderr


@pytest.mark.parametrize("gpus, expected", [(0, "cpu"), (2, "cuda")])
@pytest.mark.parametrize("command", COMMANDS)
def test_the_device_reaches_the_run(command, gpus, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    _fake_cuda(monkeypatch, gpus)
    seen = _record_runs(monkeypatch)
    args = [command, *[a.replace("FILE", "file") for a in VALID[command]], "--no-progress"]
    assert main(args) == 0
    assert main(args + ["--device", "cpu"]) == 0
    if gpus:
        assert main(args + ["--device", "cuda:1"]) == 0
    assert seen == [expected, "cpu"] + (["cuda:1"] if gpus else [])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from monai_adv.apps.demo import demo_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "net.pt"
    torch.save(demo_network().state_dict(), path)
    return path


def _devices():
    return ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_evaluate_and_attack_run_on_the_device(device, checkpoint, tmp_path):
    args = ["evaluate", "--checkpoint", str(checkpoint), "--network", "demo", "--data", "demo", "--samples", "6"]
    args += ["--attacks", "fgsm,pgd", "--eps", "8/255", "--out", str(tmp_path / "r"), "--device", device]
    assert main(args + ["--no-progress"]) == 0
    report = json.loads((tmp_path / "r" / "net.json").read_text())
    assert report["num_samples"] == 6
    image = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "slice.png")
    args = ["attack", "--checkpoint", str(checkpoint), "--network", "demo", "--image", str(tmp_path / "slice.png")]
    assert main(args + ["--attack", "fgsm", "--out", str(tmp_path / "a"), "--device", device]) == 0
    assert (tmp_path / "a" / "slice_adversarial.nii.gz").is_file()


@pytest.mark.parametrize("device", _devices())
def test_demo_and_benchmark_run_on_the_device(device, tmp_path):
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--train-samples", "16"]
    args += ["--test-samples", "4", "--attacks", "fgsm", "--eps", "8/255", "--device", device]
    assert main(args + ["--no-progress"]) == 0
    for name in ("nat.pt", "pgd_at.pt"):  # saved from the host: loads on any machine
        state = torch.load(tmp_path / "demo" / "models" / name, weights_only=True)
        assert all(t.device.type == "cpu" for t in state.values())
    args = ["benchmark", "--out", str(tmp_path / "grid"), "--tasks", "classification", "--methods", "nat"]
    args += ["--eps", "8/255", "--attacks", "fgsm", "--epochs", "1", "--train-samples", "16", "--test-samples", "4"]
    assert main(args + ["--device", device, "--no-progress"]) == 0
    assert (tmp_path / "grid" / "benchmark_classification.md").is_file()
    assert "device" not in json.loads((tmp_path / "grid" / "settings.json").read_text())


def test_host_state_dict_keeps_the_version_metadata():
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    state = host_state_dict(network)
    assert list(state) == list(network.state_dict())
    assert all(t.device.type == "cpu" for t in state.values())
    assert state._metadata == network.state_dict()._metadata
    torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).load_state_dict(state)
