# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Building attacks by name, and the `monai-adv attacks` command."""

import json
import subprocess
import sys

import pytest
import torch

from monai_adv import __version__
from monai_adv.attacks import (
    CW,
    FGSM,
    PGD,
    Attack,
    attack_class,
    attack_defaults,
    available_attacks,
    make_attack,
    register_attack,
    registry,
)
from monai_adv.cli import main
from tests.models import TinyClassifier, TinySegmenter

MODEL = TinyClassifier(2, 1, 3).eval()
SEGMENTER = TinySegmenter(2, 1, 2).eval()


@pytest.mark.parametrize(
    "name,cls,norm", [("fgsm", FGSM, "Linf"), ("PGD", PGD, "Linf"), ("pgd-l2", PGD, "L2"), ("cw", CW, "Linf")]
)
def test_make_attack_by_name(name, cls, norm):
    attack = make_attack(name, MODEL, eps=2 / 255)
    assert type(attack) is cls and attack.norm == norm and attack.eps == 2 / 255


def test_make_attack_overrides_and_presets():
    attack = make_attack("pgd_l2", MODEL, eps=0.5, steps=7, alpha=0.1)
    assert (attack.norm, attack.steps, attack.alpha) == ("L2", 7, 0.1)
    assert make_attack("pgd_l2", MODEL, norm="Linf").norm == "Linf"  # the caller wins over the preset
    assert make_attack("cw", MODEL).kappa == 50.0 and make_attack("cw", MODEL).steps == 30


def test_register_a_custom_attack(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the global registry as it was

    class Noisy(PGD):
        name = "noisy"

    register_attack("noisy_pgd", Noisy, steps=1)
    assert "noisy_pgd" in available_attacks()
    assert isinstance(make_attack("noisy_pgd", MODEL), Noisy)
    with pytest.raises(TypeError, match="subclass of monai_adv.attacks.Attack"):
        register_attack("bad", dict)


def test_attack_defaults_are_complete():
    defaults = attack_defaults("pgd")
    assert defaults["eps"] == 8 / 255 and defaults["steps"] == 10 and defaults["norm"] == "Linf"
    assert "model" not in defaults
    assert attack_defaults("pgd_l2")["norm"] == "L2"


def test_all_registered_attacks_run():
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    for name in [n for n in available_attacks() if attack_class(n).threat_model == "per-image"]:
        tasks = attack_class(name).tasks
        label_maps = y[:, None, None, None].expand(2, 1, 8, 8)
        model, labels = (MODEL, y) if "classification" in tasks else (SEGMENTER, label_maps)
        out = make_attack(name, model, eps=4 / 255)(x, labels)
        assert out.shape == x.shape and isinstance(make_attack(name, model), Attack)


def test_cli_lists_attacks_and_defaults(capsys):
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for name in ("fgsm", "pgd", "pgd_l2", "cw"):
        assert f"\n{name}  (monai_adv.attacks." in out
    assert "eps                8/255" in out and "kappa              50.0" in out


def test_cli_json(capsys):
    assert main(["attacks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["pgd"]["steps"] == 10 and rows["cw"]["kappa"] == 50.0


def test_console_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "monai_adv", "attacks"], capture_output=True, text=True, check=True)
    assert "pgd" in done.stdout
    version = subprocess.run([sys.executable, "-m", "monai_adv", "--version"], capture_output=True, text=True)
    assert __version__ in version.stdout
