"""The main job, `tipsdistill distill` with no recipe: packaged teacher -> pico student -> side-by-side report
(the full job, its figures and its cost columns: tests/test_main_job.py)."""
from __future__ import annotations

from distill.cli import main


def test_default_job_refuses_a_used_run_directory(tmp_path, capsys):
    (tmp_path / "run" / "student").mkdir(parents=True)
    assert main(["distill", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
