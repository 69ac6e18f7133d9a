"""The main job, `tipsdistill distill` with no recipe: packaged teacher -> micro student -> side-by-side report."""
from __future__ import annotations

import json

import pytest

from distill.cli import main


@pytest.mark.slow
def test_default_job_distils_and_reports_teacher_and_student(tmp_path, capsys):
    out = tmp_path / "default"
    # A short run: the full job (README figures) takes minutes; the wiring and the report are what is checked here.
    assert main(["distill", "--out", str(out), "train.max_steps=2", "train.batch_size=8"]) == 0
    printed = capsys.readouterr().out
    assert "| metric | teacher | student |" in printed and f"report: {out / 'report.json'}" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "zeroshot-seg" and set(report["models"]) == {"teacher", "student"}
    assert (out / "run" / "student" / "student.json").is_file()
    teacher, base = report["models"]["teacher"], report["baselines"]
    # The packaged teacher is fixed: its patch-text alignment must beat the trivial predictions.
    assert teacher["miou"] > base["majority_class_miou"] + 5
    assert teacher["things_pixel_acc"] > base["majority_things_pixel_acc"] + 10


def test_default_job_refuses_a_used_run_directory(tmp_path, capsys):
    (tmp_path / "run" / "student").mkdir(parents=True)
    assert main(["distill", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
