"""The benchmark scripts run (in their smoke modes), so they cannot rot; their figures come from full runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work"), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == json.loads(out.read_text())
    return json.loads(out.read_text())


@pytest.mark.slow
def test_the_lab_runs_every_arm_and_reports_paired_statistics(tmp_path):
    result = bench("ablation", tmp_path)
    assert result["setup"]["student_seeds"] == [0, 1] and result["setup"]["pretraining"]["seeds"] == [0, 1]
    assert set(result["arms"]) == {"ibot++", "ibot", "contrastive_only", "full_ema", "short_captions", "all_tokens",
                                   "masked_tokens", "cls_only", "no_contrastive", "cosine", "teacher"}
    assert all("p_holm" in c and c["verdict"] for c in result["claims"])
    assert all("p_equal_holm" in c for c in result["claims"] if c["expect"] == "equal")
    claim = next(c for c in result["claims"] if c["claim"] == "iBOT++ vs iBOT" and c["metric"] == "miou")
    ibot_pp, ibot = result["arms"]["ibot++"]["miou"]["values"], result["arms"]["ibot"]["miou"]["values"]
    assert claim["differences"] == pytest.approx([a - b for a, b in zip(ibot_pp, ibot)])
    assert claim["ci95"][0] <= claim["mean"] <= claim["ci95"][1]
    ema = result["ema_cost"]
    assert ema["full"]["ema_params"] > ema["heads"]["ema_params"] > 0
    assert ema["full"]["trainable_params"] == ema["heads"]["trainable_params"]
    assert (tmp_path / "ablation.md").read_text().startswith("| arm |")
    assert (tmp_path / "ablation.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_teacher_curve_runs_and_reuses_finished_runs(tmp_path):
    first = bench("teacher_curve", tmp_path)
    assert [p["steps"] for p in first["points"]] == [2, 4] and "student" in first["points"][0]
    assert first["chosen_steps"] in (2, 4) and "validation" in first["setup"]["eval"]
    assert (tmp_path / "teacher_curve.png").stat().st_size > 1000
    again = bench("teacher_curve", tmp_path)  # every run is found in the work directory, nothing retrained
    assert again["points"] == first["points"]


@pytest.mark.slow
def test_the_multi_teacher_lab_compares_every_arm_on_paired_seeds(tmp_path):
    result = bench("multi_teacher", tmp_path)
    assert result["setup"]["seeds"] == [0, 1] and set(result["arms"]) == {"tips", "ssl", "both"}
    assert "zeroshot_miou" not in result["arms"]["ssl"]  # no text-aligned space to read it in
    assert {"linseg_miou", "depth_delta1", "depth_rmse"} <= set(result["arms"]["both"])
    claim = next(c for c in result["claims"] if c["claim"] == "both vs tips" and c["metric"] == "linseg_miou")
    both, tips = result["arms"]["both"]["linseg_miou"]["values"], result["arms"]["tips"]["linseg_miou"]["values"]
    assert claim["differences"] == pytest.approx([a - b for a, b in zip(both, tips)])
    assert all(c["verdict"] for c in result["claims"])
    assert (tmp_path / "multi_teacher.md").read_text().startswith("| model |")


def test_paired_statistics_by_hand():
    sys.path.insert(0, str(ROOT / "bench"))
    from lab import MARGIN, holm, paired, with_verdicts

    stats = paired([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])  # differences 2, 3, 2: mean 7/3, sd 0.577
    assert stats["differences"] == [2.0, 3.0, 2.0] and stats["mean"] == pytest.approx(7 / 3)
    se = stats["std"] / 3 ** 0.5
    half = 4.303 * se  # t(0.975, 2 dof) from a table
    assert stats["ci95"] == pytest.approx([7 / 3 - half, 7 / 3 + half], rel=1e-3)
    assert stats["p"] == pytest.approx(0.0198, abs=1e-4)  # t = 7 with 2 dof, two-sided
    # Holm by hand: sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, 1 x 0.04 -> 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    # An interval far wider than the margin is no evidence of equality; a tight one around 0 is.
    wide = {"expect": "equal", **paired([0.0, 30.0, -25.0, 10.0], [0.0] * 4)}
    tight = {"expect": "equal", **paired([0.1, -0.1, 0.2, 0.0, -0.2], [0.0] * 5)}
    better = {"expect": "positive", **paired([5.0, 5.5, 6.0, 5.2, 5.8], [0.0] * 5)}
    verdicts = [c["verdict"] for c in with_verdicts([wide, tight, better])]
    assert verdicts[0].startswith("not shown") and verdicts[1] == f"equal within +-{MARGIN:g} (TOST, Holm)"
    assert verdicts[2] == "reproduced (Holm)"
    assert wide["p_holm"] >= wide["p"] and "p_equal_holm" in tight and "p_equal_holm" not in better


@pytest.mark.slow
def test_the_main_job_bench_runs_the_job_in_fresh_processes(tmp_path):
    result = bench("main_job", tmp_path, "--threads", "1", "2")
    assert [r["threads"] for r in result["runs"]] == [1, 2] and result["quick"]
    run = result["runs"][0]
    assert run["wall_s"] > 0 and run["peak_rss_mib"] > 100 and set(run["models"]) == {"teacher", "student"}
    assert "student - teacher" in run["bootstrap"]["differences"] and run["cost"]["student"]["gflops_per_image"] > 0
    assert set(result["moved_by_threads"]["2 vs 1 threads"]) == {"teacher", "student"}


@pytest.mark.slow
def test_the_deploy_bench_measures_each_student_in_pytorch_and_onnx(tmp_path):
    # The convnet alone keeps the suite short: the ViT student's export and teacher space are tested elsewhere.
    result = bench("deploy", tmp_path, "--students", "convnet")
    assert set(result["rows"]) == {"teacher", "convnet", "convnet-onnx-fp32", "convnet-onnx-int8"}
    assert result["eval_threads"] == 1 and result["reference"] == "convnet"
    rows = result["rows"]
    assert rows["convnet"]["gflops_per_image"] > 0 and rows["convnet-onnx-int8"]["gflops_per_image"] is None
    assert rows["convnet-onnx-fp32"]["vision_params"] == rows["convnet"]["vision_params"]
    assert all(row["images_per_s"] > 0 and 0 <= row["miou"] <= 100 for row in rows.values())
    summary = result["summary"]["convnet"]
    assert summary["int8_minus_fp32_miou"] == rows["convnet-onnx-int8"]["miou"] - rows["convnet-onnx-fp32"]["miou"]
    assert "minus_reference_miou" in rows["teacher"] and "minus_reference_miou" not in rows["convnet"]


def test_the_alignment_bench_reports_each_class(tmp_path):
    out = tmp_path / "alignment.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "alignment.py"), "--model", "teacher=micro",
                           "--limit", "3", "--out", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    teacher = json.loads(out.read_text())["models"]["teacher"]
    assert len(teacher["patch_text_cosine"]) == 10 and len(teacher["text_text_cosine"][0]) == 10
    assert all(abs(sum(row) - 1) < 1e-3 for row, n in zip(teacher["confusion"], teacher["patches_per_class"]) if n)
    assert (tmp_path / "alignment.md").read_text().startswith("### teacher")


@pytest.mark.slow
def test_the_gpu_bench_runs_its_tiny_cpu_configuration(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--steps", "2",
                           "--recipes", "b14", "--out", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and result["matmul_peak"]["tflops"] > 0
    for kind in ("online", "cached"):
        step = result["steps"]["b14"][kind]
        assert step["batch"] in (4, 8) and step["images_per_s"] > 0 and step["achieved_tflops"] > 0
    assert result["loader"]["images_per_s"] > 0 and [t["resolution"] for t in result["teacher"]] == [28, 56]


@pytest.mark.slow
def test_the_step_overhead_alternates_steps_in_fresh_processes(tmp_path):
    out = tmp_path / "throughput.json"
    out.write_text(json.dumps({"step_overhead": 1.0, "loader_images_per_cpu_s": 182.0, "overhead": {}}))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--only", "overhead",
                           "--processes", "2", "--into", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["loader_images_per_cpu_s"] == 182.0 and "cpu" in result["overhead_machine"]  # the rest kept
    overhead = result["overhead"]
    assert overhead["processes"] == 2 and len(overhead["process_medians"]) == 2
    low, high = overhead["process_medians_min_max"]
    assert low <= result["step_overhead"] <= high
    # 5 steps: the last (a checkpoint follows) is not timed, 2 warm-up pairs are dropped.
    assert [len(r) for r in overhead["toolkit_cpu_s_per_step_all"]] == [4, 4] and overhead["pairs_per_process"] == 2
    assert [len(r) for r in overhead["bare_cpu_s_per_step_all"]] == [4, 4]
    assert overhead["pairs_interquartile"][0] <= overhead["pairs_interquartile"][1]


@pytest.mark.slow
def test_the_cache_measurement_alone_replaces_its_section_of_a_report(tmp_path):
    out = tmp_path / "throughput.json"
    out.write_text(json.dumps({"step_overhead": 0.04, "cache_speedup": 1.0, "loader_images_per_cpu_s": 7.0}))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--only", "cache",
                           "--into", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["step_overhead"] == 0.04 and result["loader_images_per_cpu_s"] == 7.0  # the rest kept
    cache = result["cache"]
    assert result["cache_speedup"] == cache["cached_epoch2_images_per_cpu_s"] / cache["online_epoch2_images_per_cpu_s"]
    assert result["cached_step_over_student_step"] > 0 and cache["memory"]["peak_over_weights_and_state"] > 0
    assert result["cache_setup"]["teacher_depth"] == 4 and "cpu" in result["cache_machine"]


@pytest.mark.slow
def test_the_loader_alone_replaces_its_section_of_a_report(tmp_path):
    out = tmp_path / "throughput.json"
    out.write_text(json.dumps({"step_overhead": 0.04, "loader_images_per_cpu_s": 1.0, "loader": {}}))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--only", "loader",
                           "--into", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["step_overhead"] == 0.04 and "cpu" in result["loader_machine"]  # the rest kept
    assert result["loader_images_per_cpu_s"] == result["loader"]["images_per_cpu_s"] > 1.0
    assert result["loader"]["teacher_px"] == 224 and len(result["loader"]["images_per_cpu_s_all"]) == 7
    cached = result["loader"]["cached"]  # a cached run's loader: the student view and the stored targets
    assert cached["teacher_px"] == 112 and cached["images_per_cpu_s"] > 0 and cached["target_mb_per_image"] > 0
