"""The docs site builds without a dead link or anchor, the README stays a five-minute read, and every table of
figures in the pages shows what the committed result it quotes holds (`bench/results/`), so a table that drifts from
its report fails here. The Quickstart's table is checked by tests/test_main_job.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
README_LIMIT = 20_000  # bytes: pitch, install, Quickstart, headline results, links; the reference lives in docs/


def pages() -> list[str]:
    """README.md, then the docs pages in the order of the site's navigation: the order a reader follows."""
    def flat(nav) -> list[str]:
        entries = [entry if isinstance(entry, (str, list)) else next(iter(entry.values())) for entry in nav]
        return [page for entry in entries for page in (flat(entry) if isinstance(entry, list) else [entry])]

    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return ["README.md"] + [f"{site['docs_dir']}/{page}" for page in flat(site["nav"])]


def test_the_docs_site_builds_strict(tmp_path):
    # cwd: the snippets that bring the README's pitch and Quickstart into docs/index.md are read from the root
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'id="quickstart"' in (tmp_path / "site" / "index.html").read_text()  # the README's, brought in


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) < README_LIMIT


# ------------------------------------------------------------------ tables against their results


def table(page: str, header: str) -> list[list[str]]:
    """The body rows (cells, markup kept) of the one table on `page` whose header line is `header`."""
    text = (ROOT / page).read_text()
    assert text.count(header + "\n") == 1, f"{page}: no single table {header}"
    lines = text[text.index(header + "\n"):].split("\n\n")[0].splitlines()[2:]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def shown(text: str, *values: float) -> bool:
    """`text` shows `values`, in order, each as its own number rounded to the decimals printed."""
    numbers = NUMBER.findall(text)
    return len(numbers) == len(values) and all(
        abs(float(number) - value) <= 0.5 * 10 ** -len((number.split(".") + [""])[1]) + 1e-9
        for number, value in zip(numbers, values))


def result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_the_scenes_probe_tables_show_their_reports():
    seg, depth = result("scenes_probes/linear-seg.json"), result("scenes_probes/depth.json")
    rows = table("docs/evaluation.md", "| linear-seg | teacher | student | | depth (linear bins) | teacher | student "
                                       "| train-mean baseline |")
    assert len(rows) == 4
    for seg_metric, *seg_cells, _, depth_label, teacher, student, baseline in rows:
        for model, cell in zip(("teacher", "student"), seg_cells):
            assert shown(cell, seg["models"][model][seg_metric]), (seg_metric, model, cell)
        metric = depth_label.split()[0]  # "rmse (m)"
        for model, cell in (("teacher", teacher), ("student", student)):
            assert shown(cell, depth["models"][model][metric]), (metric, model, cell)
        assert shown(baseline, depth["baselines"][f"train_mean_{metric}"]), (metric, baseline)


def test_the_teacher_curve_table_shows_its_result():
    curve = result("teacher_curve.json")
    rows = table("docs/pretraining.md",
                 "| teacher steps | validation mIoU [95 % bootstrap] | things mIoU | pixel acc |")
    points = {point["steps"]: point for point in curve["points"]}
    assert sorted(int(row[0]) for row in rows) == sorted(points)
    for steps, miou, things, pixel_acc in rows:
        point = points[int(steps)]
        assert shown(miou, point["teacher"]["miou"], *point["teacher_miou_ci95"]), (steps, miou)
        assert shown(things, point["teacher"]["things_miou"]) and shown(pixel_acc, point["teacher"]["pixel_acc"])
        assert ("**" in miou) == (point["steps"] == curve["chosen_steps"])  # bold: the step count chosen


LAB_OTHER = {"pixel acc": "pixel_acc", "text-to-image R@1": "t2i_r1"}


def test_the_lab_table_shows_the_committed_claims():
    claims = {}
    for claim in result("ablation.json")["claims"]:
        claims.setdefault(claim["claim"], {})[claim["metric"]] = claim
    rows = table("docs/lab.md", "| comparison | mIoU | things mIoU | other | paper's claim | verdict (Holm) |")
    assert len(rows) == len(claims)
    for label, miou, things, other, _, verdict in rows:
        name = re.sub(r"\s*\(.*\)$", "", label.replace("**", ""))  # "iBOT++ vs iBOT (masked tokens)"
        cells = {"miou": miou, "things_miou": things}
        if other:
            other_label, other_cell = re.fullmatch(r"(.*?) (\**[-+].*)", other).groups()
            cells[LAB_OTHER[other_label]] = other_cell
        for metric, cell in cells.items():
            claim = claims[name][metric]
            assert shown(cell, claim["mean"], *claim["ci95"]), (name, metric, cell)
        reproduced = any(claim["verdict"].startswith("reproduced") for claim in claims[name].values())
        assert verdict.startswith("reproduced") == reproduced, (name, verdict)


def test_the_cpu_performance_table_shows_its_result():
    measured = result("throughput.json")
    bold = [" ".join(re.findall(r"\*\*(.*?)\*\*", row[1]))
            for row in table("docs/performance.md", "| measurement | result | goal |")]
    expected = [[100 * measured["step_overhead"]], [measured["cached_step_over_student_step"]],
                [measured["cache_speedup"]], [measured["loader_images_per_cpu_s"]],
                [measured["loader"]["cached"]["images_per_cpu_s"]],
                [measured["cache"]["memory"]["peak_over_weights_and_state"]],
                [measured["lightly_train"]["lightly_median_cpu_s_per_batch"],
                 measured["lightly_train"]["tipsdistill_median_cpu_s_per_batch"]]]
    assert len(bold) == len(expected)
    for cell, values in zip(bold, expected):
        assert shown(cell, *values), (cell, values)
    with_float = measured["loader"]["images_per_cpu_s_with_cpu_float"]
    loader_cell = table("docs/performance.md", "| measurement | result | goal |")[3][1]
    assert f"({with_float:.0f} with the float32 batch made on the CPU)" in loader_cell, loader_cell
    assert f"{with_float:.0f} images per CPU-second with it" in prose("docs/performance.md")
    overhead, cache = measured["overhead"], measured["cache"]
    step_cell = table("docs/performance.md", "| measurement | result | goal |")[0][1]
    assert shown(step_cell, *(100 * v for v in (measured["step_overhead"],)), overhead["processes"],
                 *(100 * v for v in overhead["process_medians_min_max"] + overhead["pairs_interquartile"]))
    memory = cache["memory"]
    for pair in (f"{cache['cached_epoch2_images_per_cpu_s']:.2f} vs {cache['online_epoch2_images_per_cpu_s']:.2f} "
                 "images/CPU-s",
                 f"{memory['step_peak_rss_gib']:.2f} vs "
                 f"{memory['teacher_weights_gib'] + memory['student_train_state_gib']:.2f} GiB"):
        assert pair in prose("docs/performance.md"), pair


def test_the_deploy_table_shows_its_result():
    measured = result("deploy.json")
    rows, res, batch = measured["rows"], measured["rows"]["vit"]["resolution"], measured["batch_size"]
    body = table("docs/students.md", f"| model | runtime | vision params (M) | GFLOPs/image @{res} px | images/s (1 "
                 f"thread, batch {batch}) | zero-shot mIoU [95 % CI] | minus the ViT student [95 % CI] |")
    order = ["teacher", "vit", "vit-onnx-fp32", "vit-onnx-int8", "convnet", "convnet-onnx-fp32", "convnet-onnx-int8"]
    assert len(body) == len(order)
    for (_, runtime, params, gflops, speed, miou, versus), name in zip(body, order):
        row = rows[name]
        assert runtime == f"{row['runtime']} {row['precision']}"
        assert shown(params, row["vision_params"] / 1e6) and shown(speed, row["images_per_s"])
        assert gflops == "-" if row["gflops_per_image"] is None else shown(gflops, row["gflops_per_image"])
        assert shown(miou, row["miou"], *row["miou_ci95"]), (name, miou)
        difference = row.get("minus_reference_miou")
        assert versus == "reference" if difference is None else shown(versus, difference["difference"],
                                                                       *difference["ci95"]), (name, versus)


def test_the_readme_deploy_line_shows_its_result():
    rows, summary = result("deploy.json")["rows"], result("deploy.json")["summary"]["vit"]
    line = prose("README.md")
    line = line[line.index("**Deploy**"):line.index("any timm model")]
    for figure in (f"{rows['vit-onnx-fp32']['miou']:.2f} fp32", f"{rows['vit-onnx-int8']['miou']:.2f} int8",
                   f"{summary['teacher_speedup']:.1f}x the teacher", f"{summary['int8_speedup_over_onnx_fp32']:.2f}x ONNX"):
        assert figure in line, figure


def test_the_recipe_compute_table_shows_the_estimate():
    """The real-scale rows quote `distill.compute.estimate_compute` of each recipe (`python -m distill.compute NAME`
    prints it); the recipes keep only its inputs."""
    from distill.compute import estimate_compute
    from distill.recipe_loader import load_recipe

    fields = ("teacher_gflops_per_image", "student_gflops_per_image", "train_gflops_per_image",
              "gpu_hours_per_100m_samples")
    rows = table("docs/training.md",
                 "| recipe | student | teacher | px | batch x steps | contrastive | teacher GFLOPs/img "
                 "| student GFLOPs/img | train GFLOPs/img | H100 GPU-h / 100M samples* |")
    checked = 0
    for name, *_, teacher, student, train, hours in rows:
        if yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text()).get("compute"):  # micro runs on a CPU
            estimate = estimate_compute(load_recipe(name))
            for field, cell in zip(fields, (teacher, student, train, hours)):
                assert shown(cell, getattr(estimate, field)), (name, field, cell)
            checked += 1
    assert checked == 4


SCALE_OUT = "docs/scale-out.md"


def at_size(size: int):
    """The b14 recipe at one resolution, both views at `size`: the scale-out page's compute rows."""
    from distill.recipe_loader import load_recipe

    return load_recipe("b14", ["train.resolution_phases=[]", f"student.image_size={size}",
                               f"teacher.image_size={size}"])


def test_the_scale_out_storage_table_shows_the_cache_bytes():
    from distill.compute import cache_basis_bytes, cache_bytes_per_image

    rows = table(SCALE_OUT, "| teacher px | `--compress` | MB / image / crop | TB / 1M images, K=1 "
                            "| TB / 1M images, K=4 |")
    assert len(rows) == 6
    for px, compress, mb, tb1, tb4 in rows:
        per_crop = cache_bytes_per_image("g14", int(px), "bf16", compress.strip("`"))
        assert shown(mb, per_crop / 1e6) and shown(tb1, per_crop * 1e6 / 1e12) and shown(tb4, 4 * per_crop * 1e6 / 1e12)
    assert f"adds one {cache_basis_bytes('g14', 'pca:256') / 1e6:.2f} MB basis" in prose(SCALE_OUT)


def test_the_scale_out_compute_table_and_example_show_the_estimate():
    from distill.compute import cache_bytes_per_image, estimate_compute

    rows = table(SCALE_OUT, "| px (teacher and student) | g/14 forward GFLOPs/img | cache build: H100 GPU-h / 1M "
                            "images / crop | B/14 from the cache: H100 GPU-h / 1M samples | B/14 online: H100 GPU-h / "
                            "1M samples |")
    assert len(rows) == 2
    for px, gflops, build, cached, online in rows:
        estimate = estimate_compute(at_size(int(px)))
        assert shown(gflops, estimate.teacher_gflops_per_image)
        assert shown(build, estimate.teacher_gpu_hours_per_1m_images)
        assert shown(cached, estimate.cached_gpu_hours_per_100m_samples / 100)
        assert shown(online, estimate.gpu_hours_per_100m_samples / 100)
    recipe, images, k = at_size(224), 100e6, 4  # the worked example
    estimate, samples = estimate_compute(recipe), recipe.train.max_steps * recipe.train.batch_size
    build = k * images / 1e6 * estimate.teacher_gpu_hours_per_1m_images
    cached = samples / 1e8 * estimate.cached_gpu_hours_per_100m_samples
    assert (f"({samples / 1e6:.1f}M samples) on {images / 1e6:.0f}M images is {samples / images:.1f} epochs. Online it "
            f"costs {samples / 1e8 * estimate.gpu_hours_per_100m_samples:.0f} H100 GPU-hours. With an int8 cache of "
            f"K={k} crops the build costs {build:.0f} GPU-hours and "
            f"{k * images * cache_bytes_per_image('g14', 224, compression='int8') / 1e12:.0f} TB, and each student "
            f"trained from it {cached:.0f} GPU-hours: {build + cached:.0f} for the first student") in prose(SCALE_OUT)


def test_the_memory_table_shows_the_model_state_per_gpu():
    from distill.compute import memory_per_gpu, tower_params
    from distill.recipe_loader import load_recipe

    rows = table(SCALE_OUT, "| recipe | trained params | teacher, bf16 | student weights + grads + AdamW, fp32 "
                            "| DDP buckets | per GPU, DDP | per GPU, student sharded | per GPU, teacher sharded too |")
    assert [row[0] for row in rows] == ["b14", "l14", "so400m14"]
    for name, params, teacher, state, buckets, ddp, sharded, all_sharded in rows:
        m = memory_per_gpu(load_recipe(name), 8)
        assert params.endswith("M") and shown(params, m.student_params / 1e6), (name, params)
        student_state = m.student_weights_gib + m.student_grads_gib + m.adamw_gib
        for cell, value in ((teacher, m.teacher_gib), (state, student_state),
                            (buckets, m.ddp_buckets_gib), (ddp, m.ddp_gib), (sharded, m.sharded_gib),
                            (all_sharded, m.sharded_teacher_too_gib)):
            assert shown(cell, value), (name, cell, value)
    vision, text = tower_params("g14")
    assert f"({vision / 1e6:.1f}M vision and {text / 1e6:.1f}M text parameters" in prose(SCALE_OUT)
    assert "over 8 GPUs:" in prose(SCALE_OUT)


# ------------------------------------------------------------------ figures in the text, against their results


def prose(page: str) -> str:
    """A page's text with its line breaks undone, so a figure's sentence reads as one line."""
    return " ".join((ROOT / page).read_text().split())


def test_the_alignment_figures_show_their_result():
    models, classes = result("alignment.json")["models"], result("alignment.json")["setup"]["classes"]
    teacher, student, text = models["teacher"], models["student"], prose("docs/default.md")
    between = [row[j] for i, row in enumerate(teacher["text_text_cosine"]) for j in range(len(row)) if i != j]
    assert f"are {min(between):.2f}-{max(between):.2f} (mean {sum(between) / len(between):.3f})" in text

    def closer(name: str) -> float:  # how much nearer its patches sit to another class's prompt than to their own
        i = classes.index(name)
        row = teacher["patch_text_cosine"][i]
        return max(value for j, value in enumerate(row) if j != i) - row[i]

    assert (f"sit {closer('red'):.2f} closer to another class's prompt than to \"red\" (yellow {closer('yellow'):.2f},"
            f" blue {closer('blue'):.2f})") in text
    accuracy = teacher["patch_accuracy_per_class"]
    assert (f"(patch accuracy {accuracy['red']:.0%}, blue {accuracy['blue']:.0%}, green {accuracy['green']:.0%})"
            .replace("%", " %")) in text and accuracy["yellow"] == 0  # "red and yellow ... never labelled right"
    right = student["patch_accuracy_per_class"]  # "labels red and yellow patches right every time, misses green, blue"
    assert (right["red"], right["yellow"], right["green"], right["blue"]) == (1, 1, 0, 0)
    assert student["text_text_cosine"] == teacher["text_text_cosine"]  # "reading the *same* text embeddings"


LAB_ARMS = {"teacher": "teacher", "all tokens": "all_tokens", "masked tokens": "masked_tokens", "CLS only": "cls_only",
            "no contrastive": "no_contrastive", "cosine": "cosine"}


def test_the_lab_arm_means_and_ema_cost_show_their_result():
    lab, text = result("ablation.json"), prose("docs/lab.md")
    arms = lab["arms"]
    sentence = text[text.index("Arm means"):].split(". ")[0]
    for words, arm in LAB_ARMS.items():
        miou = arms[arm]["miou"]
        shows = f"{words} {miou['mean']:.1f}" + ("" if arm == "teacher" else f" ± {miou['std']:.1f}")
        assert shows in sentence, shows
    heads, full = lab["ema_cost"]["heads"], lab["ema_cost"]["full"]
    assert (f"keeps {heads['ema_params']:,} EMA parameters against {full['ema_params']:,} for full EMA "
            f"({1 - heads['ema_params'] / full['ema_params']:.0%} fewer), the same {heads['trainable_params']:,} "
            f"trainable ones, full EMA steps {lab['ema_cost']['full_over_heads_step_time']:.2f}x slower"
            ).replace("%", " %") in text
    [beat] = [claim for claim in lab["claims"]
              if claim["claim"] == "student vs its teacher" and claim["metric"] == "miou"]
    assert f"(+{min(beat['differences']):.1f} to +{max(beat['differences']):.1f} mIoU per seed)" in text


def test_the_readme_links_every_page():
    """The README is the way in: every page of the site's navigation is one link away."""
    readme = (ROOT / "README.md").read_text()
    for page in pages()[1:]:
        assert f"]({page})" in readme or page.endswith("index.md"), page


def test_the_several_teachers_tables_show_the_committed_lab():
    lab = result("multi_teacher.json")
    metrics = ("zeroshot_miou", "linseg_miou", "depth_delta1", "depth_rmse")
    rows = table("docs/lab.md", "| model | zero-shot mIoU | linear-seg mIoU | depth δ1 | depth rmse (m) |")
    assert len(rows) == 5
    for label, *cells in rows:
        kind, name = label.split()[0], label.split()[-1]
        scores = lab["teachers"][name] if kind == "teacher" else {m: s["mean"] for m, s in lab["arms"][name].items()}
        spread = {} if kind == "teacher" else {m: s["std"] for m, s in lab["arms"][name].items()}
        for metric, cell in zip(metrics, cells):
            if metric not in scores:
                assert cell == "-", (label, metric)
                continue
            values = (scores[metric], spread[metric]) if spread else (scores[metric],)
            assert shown(cell, *values), (label, metric, cell)
    names = {"zero-shot mIoU": "zeroshot_miou", "linear-seg mIoU": "linseg_miou", "depth δ1": "depth_delta1"}
    rows = table("docs/lab.md", "| comparison | metric | expected | mean difference [95 %] | verdict (Holm) |")
    assert len(rows) == len(lab["claims"])
    for (comparison, metric, _, difference, verdict), claim in zip(rows, lab["claims"]):
        assert (comparison, names[metric]) == (claim["claim"], claim["metric"])
        assert shown(difference.replace("**", ""), claim["mean"], *claim["ci95"]), (comparison, metric, difference)
        assert verdict.split(" ")[0].rstrip(":") in claim["verdict"], (verdict, claim["verdict"])
    zero_shot = lab["claims"][0]
    assert zero_shot["metric"] == "zeroshot_miou"
    assert (f"zero-shot {zero_shot['mean']:+.1f} [{zero_shot['ci95'][0]:+.1f}, {zero_shot['ci95'][1]:+.1f}] mIoU over "
            f"{len(lab['setup']['seeds'])} seeds") in prose("README.md")
