# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Every output is written atomically: the old file or the new one, never half of one, and no temporary left."""

import errno

import pytest
import torch

from monai_adv.atomic import DiskFullError, atomic_folder, write_atomic
from monai_adv.benchmark.io import save_state_dict_atomic, write_json_atomic


def _full_disk(tmp):
    tmp.write_bytes(b"half a fi")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_old_file_and_names_the_new_one(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(DiskFullError, match=f"the disk is full: could not write {path}"):
        write_atomic(path, _full_disk)
    assert path.read_text() == '{\n  "ok": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_torch_save_on_a_full_disk_says_so(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"

    def failing_save(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DiskFullError, match="the disk is full: could not write .*model.pt"):
        save_state_dict_atomic(path, {"w": torch.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_and_leave_no_temporary(tmp_path):
    def broken(tmp):
        tmp.write_text("x")
        raise ValueError("not serializable")

    with pytest.raises(ValueError, match="not serializable"):
        write_atomic(tmp_path / "a.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_keep_suffix_lets_a_writer_choose_the_format_by_name(tmp_path):
    names = []
    write_atomic(tmp_path / "x.nii.gz", lambda tmp: (names.append(tmp.name), tmp.write_bytes(b"1")), keep_suffix=True)
    assert names[0].startswith(".x.nii.gz.") and names[0].endswith(".tmp.nii.gz")
    assert (tmp_path / "x.nii.gz").read_bytes() == b"1"


def test_atomic_folder_moves_everything_or_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(tmp_path) as staging:
        (staging / "a.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"
    with atomic_folder(tmp_path) as staging:
        (staging / "a.txt").write_text("new")
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "new"
