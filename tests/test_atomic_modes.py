"""Outputs honour the umask: atomic files and directories get the modes a plain open() / mkdir() would."""
from __future__ import annotations

import os
import stat

import pytest

from students import build_student
from students.export import export_student
from common.atomic import atomic_directory, write_atomic


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _modes_follow_umask(root, umask: int) -> None:
    for path in [root, *root.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_atomic_helpers_honour_the_umask(umask, tmp_path):
    write_atomic(tmp_path / "report.json", lambda tmp: tmp.write_text("{}"))
    with atomic_directory(tmp_path / "out") as out:
        (out / "model.safetensors").write_bytes(b"weights")
    _modes_follow_umask(tmp_path / "out", umask)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask


def test_student_and_export_honour_the_umask(umask, tmp_path, tiny_tokenizer):
    build_student("tipsv2-nano", teacher_width=48, tokenizer=tiny_tokenizer).save(tmp_path / "student")
    export_student(tmp_path / "student", "npz", tmp_path / "export")
    _modes_follow_umask(tmp_path / "student", umask)
    _modes_follow_umask(tmp_path / "export", umask)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_a_training_run_and_its_checkpoints_honour_the_umask(mask, tiny_tipsv2_dir, tmp_path):
    from distill.cli import main
    from test_reliability import distill_args

    previous = os.umask(mask)
    try:
        assert main([*distill_args(tiny_tipsv2_dir, "max_steps=1"), "--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "run" / "checkpoints" / "step_00000001" / "model.safetensors").is_file()
    _modes_follow_umask(tmp_path / "run", mask)
