"""Throughput of tipsdistill, measured as ratios in ONE run on this machine; prints one JSON object.

  step_overhead   toolkit distill step time / bare PyTorch step time - 1, same models, same batches, same
                  math: the steps alternate in one process (pairs in turn bare-toolkit, toolkit-bare) after
                  warm-up; the median paired ratio per process, then the median over 5 fresh processes, with
                  their min/max (goal <= 0.02)
  cache_speedup   images/s of epoch 2 from a teacher-target cache / images/s of epoch 2 online, with a
                  g/14-shaped teacher (random weights) and a B/14 student (goal >= 5)
  cached_step_over_student_step
                  a cached distillation batch (cache read, replayed crop, step) / the student's own
                  forward + backward + update on targets already in memory: the physical limit of caching
                  (goal <= 1.05)
  memory          peak resident memory of an online step vs teacher weights + student training state
  loader          the data pipeline's images per CPU-second (one core) on JPEG photos with a 448 px
                  teacher view and a 224 px student view, batches of uint8 views as they reach the device
                  (goal >= 500); `images_per_cpu_s_with_cpu_float` also makes them float32 on the CPU;
                  `cached`: a cached run's loader (the student view, replayed crops, g/14-wide targets read)
  lightly_train   lightly-train 0.18 distillation on the same teacher weights, images and resolution,
                  alternated with tipsdistill's online loop (2 rounds x 4 timed batches per tool), medians and
                  spread (only when `lightly-train` is importable: pip install ".[bench]")

Times are process CPU seconds (`time.process_time`) with one torch thread by default: the machines
this runs on are shared, and other jobs change wall-clock times several-fold within one run, while the
CPU time a step needs stays put. On a dedicated machine wall time ~= CPU time / threads.

Usage: python bench/throughput.py [--quick] [--threads N] [--processes N] [--only overhead|loader|cache
                                  [--into REPORT]] [--out FILE]
  --quick: a reduced g/14 (4 of 40 blocks) and S/14 student, for a smoke run in a few minutes.
  --only overhead: the step overhead alone (5 fresh processes, about 4 CPU-minutes); --only loader: the loader alone
  (about a minute); --only cache: the cache speedup, the cached step and the memory of an online step. With --into
  REPORT each replaces its own section of a full report in place.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from teachers.random import random_tipsv2_teacher


# ------------------------------------------------------------------ machine, clock and memory

clock = time.process_time  # CPU seconds of this process, all threads (see the module docstring)
OVERHEAD_WARMUP = 2  # pairs dropped per process: AdamW allocates its moments on the first step, caches settle


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) // 1024 ** 2
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "ram_gib": mem,
            "torch": torch.__version__, "load_avg_at_start": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Highest resident set size while the block runs, sampled every 2 ms (CPU; no allocator stats)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ------------------------------------------------------------------ models and data


@dataclass
class Setup:
    images: int
    batch: int
    resolution: int
    teacher_depth: int
    student: str
    overhead_teacher: str  # a `teachers.tipsv2_sizes` key: the (random) teacher of the overhead run
    overhead_steps: int
    augmentations: int = 2
    seed: int = 0


def build_student(setup: Setup, teacher_width: int):
    from students import build_student as zoo_student

    torch.manual_seed(1)
    return zoo_student(setup.student, teacher_width=teacher_width, text=False, image_size=setup.resolution)


def image_only_loss():
    """The objective both loops compute: cosine on CLS1, registers and every patch, no mask, no captions."""
    from distill.config import ContrastiveConfig, LossConfig

    return LossConfig(distance="cosine", mask_ratio=0.0, contrastive=ContrastiveConfig(kind="none"))


def scenes(setup: Setup):
    from distill.data.scenes import SceneDataset

    # Source images a little larger than the crops, as real data is.
    return SceneDataset(length=setup.images, size=setup.resolution + setup.resolution // 7)


def bare_step(student, optimizer, pixels: torch.Tensor, target) -> None:
    """The hand-written reference: the student's own modules called directly, cosine distance on CLS1,
    registers and every patch token, global-norm clipping, AdamW."""
    seq = student.vision(pixel_values=pixels).last_hidden_state
    r, heads = target.registers.shape[1], student.heads
    pred = (heads.cls(seq[:, 0]), heads.registers(seq[:, 1:1 + r]), heads.patches(seq[:, 1 + r:]))
    want = (target.cls, target.registers, target.patches.flatten(1, 2))
    loss = sum((1 - F.cosine_similarity(p, t, dim=-1)).mean() for p, t in zip(pred, want))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class ToolkitStep:
    """The toolkit's step math without the loop around it: teacher targets (online or cached) ->
    `DistillTask` -> backward, clipping, AdamW."""

    def __init__(self, student):
        from distill.tasks.distill_task import DistillTask
        from distill.tasks.student_setup import teacher_term

        loss = image_only_loss()
        self.task = DistillTask(student, loss, teachers=[teacher_term(loss, student.heads.teacher_width)],
                                contrastive=False)
        self.optimizer = torch.optim.AdamW(self.task.parameters(), lr=1e-4)
        self.student = student

    def __call__(self, batch, targets) -> None:
        grid = (batch.pixels.shape[-1] // self.student.patch_size,) * 2
        batch = replace(batch, mask=torch.zeros(len(batch), grid[0] * grid[1], dtype=torch.bool))
        self.task(batch, targets).loss.backward()
        torch.nn.utils.clip_grad_norm_(self.task.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run_epoch(loader, epoch: int, targets, step) -> list[float]:
    """Seconds per batch over one epoch: data, teacher targets (online or cached) and the student step."""
    loader.set_epoch(epoch)
    times, tick = [], clock()
    for batch in loader:
        batch = batch.to("cpu")  # as the loop's send_to_device: float views
        step(batch, targets(batch))
        times.append(clock() - tick)
        tick = clock()
    return times


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


# ------------------------------------------------------------------ the measurements


class Alternating:
    """The run's loader with a bare step on each batch besides the loop's: bare and toolkit steps alternate on the
    same batches in one process, so both meet the same allocator and cache state and whatever else runs on the
    machine hits both alike. Which of a pair goes first alternates too (bare first on even batches), so neither
    side always follows the data loading or the other. Neither side's time includes loading the batch."""

    def __init__(self, bare):
        self.loader, self.bare = None, bare
        self.bare_s: list[float] = []
        self.toolkit_s: list[float] = []

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i % 2 == 0:
                self._bare(batch)
            handed = clock()
            yield batch  # the loop's whole step runs until it asks for the next batch
            # The last step (a checkpoint follows it) never gets here, so it is not timed.
            self.toolkit_s.append(clock() - handed)
            if i % 2 == 1:
                self._bare(batch)

    def _bare(self, batch) -> None:
        tick = clock()
        self.bare(batch)
        self.bare_s.append(clock() - tick)


def overhead_process(setup: Setup, workdir: Path) -> dict:
    """One process's toolkit and bare step times, alternating: `run_training` (Accelerate loop, data draws,
    logging, scheduler) and a bare loop on the same teacher, same student architecture, same batches, same loss."""
    from distill.config import DataConfig, OptimConfig, Recipe, StudentConfig, TeacherConfig, TrainConfig
    import distill.run as run_module

    teacher = random_tipsv2_teacher(setup.overhead_teacher)
    size, steps = setup.resolution, setup.overhead_steps
    recipe = Recipe(
        name="bench", seed=setup.seed, teacher=TeacherConfig(spec="", image_size=size),
        student=StudentConfig(name=setup.student, image_size=size),
        data=DataConfig(source="scenes", options={"length": setup.batch * steps, "size": size + size // 7}),
        loss=image_only_loss(), optim=OptimConfig(lr=1e-4, warmup_steps=0, grad_clip=1.0),
        train=TrainConfig(max_steps=steps, batch_size=setup.batch, mixed_precision="no", log_every=1))
    student = build_student(setup, teacher.width)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def bare(batch):
        batch = batch.to("cpu")  # the float views the loop's send_to_device makes on the toolkit side
        bare_step(student, optimizer, batch.pixels, teacher.encode_image(batch.teacher_pixels))

    alternating = Alternating(bare)
    build = run_module.build_run

    def build_alternating(*args, **kwargs):
        run = build(*args, **kwargs)
        alternating.loader, run.loader = run.loader, alternating
        return run

    run_module.build_run = build_alternating
    try:
        torch.manual_seed(1)
        run_module.run_training(recipe, workdir / "run", teacher=teacher, show_progress=False)
    finally:
        run_module.build_run = build
    return {"bare_cpu_s": alternating.bare_s[:len(alternating.toolkit_s)], "toolkit_cpu_s": alternating.toolkit_s}


def quartiles(xs: list[float]) -> list[float]:
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


def step_overhead(setup: Setup, processes: int, threads: int) -> dict:
    """The toolkit step's overhead over a bare step: per fresh process the median of the paired ratios
    toolkit / bare - 1 after `OVERHEAD_WARMUP` warm-up pairs, then the median over processes and its spread."""
    runs = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, __file__, "--overhead-process", json.dumps(setup.__dict__),
                               "--threads", str(threads)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"overhead process failed: {done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ratios = [[t / b - 1 for b, t in zip(r["bare_cpu_s"], r["toolkit_cpu_s"])][OVERHEAD_WARMUP:] for r in runs]
    medians = [statistics.median(r) for r in ratios]
    pooled = [x for r in ratios for x in r]
    return {"step_overhead": statistics.median(medians),
            "method": f"bare and toolkit steps alternate on the same batches (pairs in turn bare-toolkit and "
                      f"toolkit-bare) in each of {processes} fresh processes; per process the median of "
                      f"toolkit / bare - 1 over its pairs after "
                      f"{OVERHEAD_WARMUP} warm-up pairs; step_overhead is the median of the process medians",
            "process_medians": medians, "process_medians_min_max": [min(medians), max(medians)],
            "pairs_interquartile": quartiles(pooled) if len(pooled) > 1 else [pooled[0]] * 2,
            "pairs_per_process": len(ratios[0]), "processes": processes,
            "bare_cpu_s_per_step_all": [r["bare_cpu_s"] for r in runs],
            "toolkit_cpu_s_per_step_all": [r["toolkit_cpu_s"] for r in runs],
            "teacher": f"{setup.overhead_teacher} shapes (random)", "student": setup.student,
            "resolution": setup.resolution, "batch": setup.batch}


def cache_vs_online(setup: Setup, workdir: Path) -> dict:
    """Epoch-2 images/s online vs from the cache with a g/14-shaped teacher, the build cost, and the peak
    memory of an online step."""
    from distill.cache.manifest import Preprocessing
    from distill.cache.replay import open_cache, replay_dataloader
    from distill.cache.writer import CacheSettings, build_cache
    from distill.data import CropConfig, make_dataloader
    from distill.data.loader import Augment
    from distill.targets import CachedTargets, OnlineTargets

    baseline = rss_bytes()
    teacher = random_tipsv2_teacher("g14", depth=setup.teacher_depth)
    student = build_student(setup, teacher.width)
    step = ToolkitStep(student)
    dataset, size = scenes(setup), setup.resolution
    online = make_dataloader(dataset, batch_size=setup.batch, student_size=size, teacher_size=size, seed=setup.seed)
    online_targets = OnlineTargets(teacher, "bench")

    # Memory: the second online step (AdamW allocates its moments on the first).
    online.set_epoch(0)
    first = next(iter(online)).to("cpu")
    step(first, online_targets(first))
    with PeakRss() as peak:
        step(first, online_targets(first))
    state = sum(p.numel() for p in student.parameters()) * 4 * 4  # fp32 weights, grads, 2 AdamW moments
    memory = {"step_peak_rss_gib": (peak.peak - baseline) / 2 ** 30,  # over the process before any model
              "teacher_weights_gib": nbytes(teacher) / 2 ** 30, "student_train_state_gib": state / 2 ** 30}
    memory["peak_over_weights_and_state"] = memory["step_peak_rss_gib"] / (
        memory["teacher_weights_gib"] + memory["student_train_state_gib"])

    pre = Preprocessing(dataset="scenes:bench", data_options={}, dataset_length=len(dataset),
                        teacher_image_size=size, crop=CropConfig(), seed=setup.seed)
    start = clock()
    build_cache(teacher, dataset, workdir / "cache", pre,
                CacheSettings(augmentations=setup.augmentations, dtype="bf16", shard_size=setup.images,
                              batch_size=setup.batch))
    build_s = clock() - start
    cached = replay_dataloader(dataset, {"teacher": open_cache(workdir / "cache", pre)},
                               Augment(size, size, setup.seed), batch_size=setup.batch, seed=setup.seed)
    cached_targets = CachedTargets(workdir / "cache")
    cached_epoch1 = run_epoch(cached, 0, cached_targets, step)
    online_times = run_epoch(online, 1, online_targets, step)  # epoch 2 (index 1)
    cached_times = run_epoch(cached, 1, cached_targets, step)
    # The same steps on batches and targets already in memory: what a cached step cannot go below.
    cached.set_epoch(1)
    held = [(batch.to("cpu"), cached_targets(batch)) for batch in cached]
    student_times = []
    for batch, targets in held:
        tick = clock()
        step(batch, targets)
        student_times.append(clock() - tick)
    rate = lambda times: len(times) * setup.batch / sum(times)  # noqa: E731
    return {
        "teacher": f"g14 shapes, {setup.teacher_depth} of 40 blocks, random weights, fp32",
        "online_epoch2_images_per_cpu_s": rate(online_times),
        "cached_epoch2_images_per_cpu_s": rate(cached_times),
        "online_epoch2_cpu_s_per_batch_all": online_times,
        "cached_epoch1_cpu_s_per_batch_all": cached_epoch1,
        "cached_epoch2_cpu_s_per_batch_all": cached_times,
        "cache_build_images_per_cpu_s": setup.images * setup.augmentations / build_s,
        "cache_mb_per_image_per_crop": sum(f.stat().st_size for f in (workdir / "cache").glob("*.safetensors"))
        / (setup.images * setup.augmentations) / 1e6,
        "cache_speedup": rate(cached_times) / rate(online_times),
        "student_step_cpu_s_per_batch_all": student_times,
        "cached_step_over_student_step": median(cached_times) / median(student_times),
        "memory": memory,
    }


LIGHTLY_RUN = """
import json, sys, time, torch, lightly_train
from lightly_train._methods import batch_timing
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
batch_timing.CpuBatchTimingTracker.__init__.__defaults__ = (time.process_time,)  # the bench's clock
lightly_train.pretrain(out=a["out"], data=a["data"], model="dinov2/vitb14-notpretrained", method="distillation",
    method_args={"teacher": "dinov2/vitg14-tipsv2", "teacher_weights": a["weights"]}, epochs=2,
    batch_size=a["batch"], num_workers=0, accelerator="cpu", devices=1, precision="32-true", seed=0,
    transform_args={"image_size": (a["size"], a["size"])}, trainer_args={"log_every_n_steps": 1}, overwrite=True)
"""


def lightly_side_by_side(setup: Setup, workdir: Path) -> dict:
    """lightly-train 0.18's default distillation (DistillationV3) from the same g/14 weights (saved in the
    official key layout, which its DINOv2 `vitg14-tipsv2` uses) on the same scene images at the same
    resolution, B/14 student from scratch, in a child process; epoch-2 images/s from its batch timer."""
    import importlib.util

    if importlib.util.find_spec("lightly_train") is None:
        return {"skipped": "lightly-train is not installed (pip install '.[bench]')"}
    if setup.teacher_depth != 40:
        return {"skipped": "lightly-train builds vitg14-tipsv2 with all 40 blocks; run without --quick"}
    from teachers.official_npz import official_from_tipsv2
    from teachers.tipsv2_sizes import tipsv2_config

    teacher = random_tipsv2_teacher("g14", depth=setup.teacher_depth)
    arrays, _ = official_from_tipsv2(teacher, tipsv2_config("g14"))
    del teacher
    workdir.mkdir(parents=True)
    weights = workdir / "teacher_official.pt"
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, weights)
    del arrays
    images = workdir / "images"
    images.mkdir()
    dataset = scenes(setup)
    for i in range(len(dataset)):
        dataset[i].image.save(images / f"{i:05d}.png")
    args = {"out": str(workdir / "lightly"), "data": str(images), "weights": str(weights),
            "batch": setup.batch, "size": setup.resolution, "threads": torch.get_num_threads()}
    env = {**os.environ, "LIGHTLY_TRAIN_EVENTS_DISABLED": "1", "LIGHTLY_TRAIN_CACHE_DIR": str(workdir / "lt-cache")}
    proc = subprocess.run([sys.executable, "-c", LIGHTLY_RUN, json.dumps(args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        return {"failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    rows = [json.loads(line) for line in (workdir / "lightly" / "metrics.jsonl").read_text().splitlines()]
    # Its batch timer (patched to the same CPU clock) plus its data time = the work of one batch.
    times = [r["profiling/batch_time"] + r.get("profiling/data_time", 0.0) for r in rows
             if r.get("epoch") == 1 and "profiling/batch_time" in r]
    return {"method": "distillation (DistillationV3), teacher dinov2/vitg14-tipsv2 from teacher_weights, "
                      "student dinov2/vitb14-notpretrained",
            "epoch2_images_per_cpu_s": len(times) * setup.batch / sum(times), "epoch2_cpu_s_per_batch_all": times}


def loader_throughput(workdir: Path, images: int, quick: bool) -> dict:
    """Images per CPU-second of the loader alone in this process (no workers): JPEG decoding, the shared crop,
    a 448 px teacher view and a 224 px student view, masks and caption draws, as a b14 run asks. Its batches hold
    uint8 views, made float32 on the device; `..._with_cpu_float` also counts making them float32 on the CPU
    (`Batch.to("cpu")`, a CPU-only run). `cached` is a cached run's loader on the same photos: the student view
    alone, its crop replayed and its g/14-wide targets read from a cache built at the student's size, as a cached
    run of the real recipes (without their 448 px phase) reads them."""
    import numpy as np
    from PIL import Image

    from distill.data import Draws, MaskConfig, build_dataset, make_dataloader

    folder = workdir / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    size = (320, 240) if quick else (640, 480)  # a typical web photo
    for i in range(images):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        coarse.resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)
        (folder / f"{i:04d}.txt").write_text(f"a photo number {i}")
    student, teacher = (112, 224) if quick else (224, 448)
    draws = Draws(MaskConfig(14, 0.4, 0.5), {"short": 1.0})
    dataset = build_dataset(f"folder:{folder}")
    loader = make_dataloader(dataset, batch_size=16, student_size=student, teacher_size=teacher, draws=draws)
    rates, with_float = loader_passes(loader)
    return {"photo_px": list(size), "student_px": student, "teacher_px": teacher,
            "images_per_cpu_s": median(rates[1:]), "images_per_cpu_s_all": rates,
            "images_per_cpu_s_with_cpu_float": median(with_float[1:]),
            "images_per_cpu_s_with_cpu_float_all": with_float,
            "cached": cached_loader_throughput(dataset, str(folder), student, draws, workdir / "loader-cache")}


def loader_passes(loader) -> tuple[list[float], list[float]]:
    """Images per CPU-second of 7 passes over `loader`, without and with making the batches float32 on the CPU;
    the first warms the caches, the median of the other 6 steadies a shared machine."""
    rates, with_float = [], []
    for epoch in range(7):
        loader.set_epoch(epoch)
        count, converting, tick = 0, 0.0, clock()
        for batch in loader:
            count += len(batch)
            handed = clock()
            batch.to("cpu")
            converting += clock() - handed
        total = clock() - tick
        rates.append(count / (total - converting))
        with_float.append(count / total)
    return rates, with_float


def cached_loader_throughput(dataset, folder: str, student: int, draws, cache: Path) -> dict:
    """`loader_throughput`'s cached-run loader; the build (one crop per photo, a one-block g/14-wide random teacher,
    bf16) is not timed."""
    from distill.cache.manifest import Preprocessing
    from distill.cache.replay import open_cache, replay_dataloader
    from distill.cache.writer import CacheSettings, build_cache
    from distill.data import CropConfig
    from distill.data.loader import Augment

    teacher = random_tipsv2_teacher("g14", depth=1)
    pre = Preprocessing(dataset=f"folder:{folder}", data_options={}, dataset_length=len(dataset),
                        teacher_image_size=student, crop=CropConfig(), seed=0)
    build_cache(teacher, dataset, cache, pre, CacheSettings(augmentations=1, dtype="bf16", batch_size=16))
    loader = replay_dataloader(dataset, {"teacher": open_cache(cache, pre)}, Augment(student, student, 0, draws=draws),
                               batch_size=16)
    rates, with_float = loader_passes(loader)
    return {"teacher_px": student, "target_mb_per_image": teacher_target_mb(cache, len(dataset)),
            "images_per_cpu_s": median(rates[1:]), "images_per_cpu_s_all": rates,
            "images_per_cpu_s_with_cpu_float": median(with_float[1:])}


def teacher_target_mb(cache: Path, images: int) -> float:
    return sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / images / 1e6


def interleaved_lightly(setup: Setup, workdir: Path) -> dict:
    """lightly-train and tipsdistill's online loop alternated twice, each timing 4 batches after warm-up."""
    rounds = []
    for r in range(2):
        theirs = lightly_side_by_side(setup, workdir / f"lightly-{r}")
        if "epoch2_cpu_s_per_batch_all" not in theirs:
            return theirs
        ours = online_loop_batches(setup, workdir / f"ours-{r}")
        rounds.append((theirs["epoch2_cpu_s_per_batch_all"], ours))
    theirs_all = [t for r in rounds for t in r[0]]
    ours_all = [t for r in rounds for t in r[1]]
    spread = lambda xs: [min(xs), max(xs)]  # noqa: E731
    return {"method": theirs["method"], "lightly_cpu_s_per_batch_all": theirs_all,
            "tipsdistill_cpu_s_per_batch_all": ours_all,
            "lightly_median_cpu_s_per_batch": median(theirs_all), "lightly_spread": spread(theirs_all),
            "tipsdistill_median_cpu_s_per_batch": median(ours_all), "tipsdistill_spread": spread(ours_all),
            "tipsdistill_online_speedup": median(theirs_all) / median(ours_all)}


def online_loop_batches(setup: Setup, workdir: Path) -> list[float]:
    """tipsdistill's online step on the lightly run's images, timed batch by batch after one warm-up batch."""
    from distill.data import make_dataloader
    from distill.targets import OnlineTargets

    workdir.mkdir(parents=True)
    teacher = random_tipsv2_teacher("g14", depth=setup.teacher_depth)
    step = ToolkitStep(build_student(setup, teacher.width))
    loader = make_dataloader(scenes(setup), batch_size=setup.batch, student_size=setup.resolution,
                             teacher_size=setup.resolution, seed=setup.seed)
    times = run_epoch(loader, 0, OnlineTargets(teacher, "bench"), step)
    return times[1:]


# The keys of a full report each `--only` measurement re-measures.
SECTIONS = {"overhead": ("step_overhead", "overhead"), "loader": ("loader_images_per_cpu_s", "loader"),
            "cache": ("cache_speedup", "cached_step_over_student_step", "cache")}


def loader_images(quick: bool) -> int:
    return 32 if quick else 128


def only(args, setup: Setup) -> dict:
    """One measurement alone, under its full report's keys (`SECTIONS`)."""
    if args.only == "overhead":
        overhead = step_overhead(setup, args.processes, args.threads)
        return {"step_overhead": overhead.pop("step_overhead"), "overhead": overhead}
    with tempfile.TemporaryDirectory(prefix="tipsdistill-bench-") as tmp:
        if args.only == "cache":  # a fresh process, as its memory baseline wants
            speed = cache_vs_online(setup, Path(tmp))
            return {"cache_speedup": speed.pop("cache_speedup"),
                    "cached_step_over_student_step": speed.pop("cached_step_over_student_step"), "cache": speed}
        loader = loader_throughput(Path(tmp), loader_images(args.quick), args.quick)
    return {"loader_images_per_cpu_s": loader["images_per_cpu_s"], "loader": loader}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced teacher and student (smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see the docstring)")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes for the step overhead (default 5)")
    parser.add_argument("--only", choices=sorted(SECTIONS), help="one measurement alone: the step overhead, the loader "
                                                                 "or the cache")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--into", metavar="REPORT", help="with --only: replace that measurement's section of this "
                                                         "full report (its other sections keep their run)")
    parser.add_argument("--overhead-process", metavar="SETUP", help=argparse.SUPPRESS)  # one of step_overhead's
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.overhead_process:
        with tempfile.TemporaryDirectory(prefix="tipsdistill-bench-") as tmp:
            print(json.dumps(overhead_process(Setup(**json.loads(args.overhead_process)), Path(tmp))))
        return 0
    if args.quick:
        setup = Setup(images=8, batch=4, resolution=56, teacher_depth=4, student="tipsv2-s14",
                      overhead_teacher="b14", overhead_steps=5)
    else:
        setup = Setup(images=20, batch=4, resolution=112, teacher_depth=40, student="tipsv2-b14",
                      overhead_teacher="b14", overhead_steps=9)
    report: dict = {"machine": machine(), "setup": setup.__dict__}
    if args.only:
        report = {**only(args, setup), **report}
        if args.into:
            # The measurements are independent: one can be re-run alone, its machine recorded with it.
            full = json.loads(Path(args.into).read_text())
            own = {f"{args.only}_machine": report["machine"]}
            if args.only != "loader":  # the loader's own parameters are in its section
                own[f"{args.only}_setup"] = report["setup"]
            report = {**full, **{key: report[key] for key in SECTIONS[args.only]}, **own}
            args.out = args.out or args.into
    else:
        with tempfile.TemporaryDirectory(prefix="tipsdistill-bench-") as tmp:
            speed = cache_vs_online(setup, Path(tmp))  # first: its memory baseline is a fresh process
            overhead = step_overhead(setup, args.processes, args.threads)
            loader = loader_throughput(Path(tmp), loader_images(args.quick), args.quick)
            lightly = interleaved_lightly(setup, Path(tmp))
        report = {"step_overhead": overhead.pop("step_overhead"), "cache_speedup": speed.pop("cache_speedup"),
                  "cached_step_over_student_step": speed.pop("cached_step_over_student_step"),
                  "loader_images_per_cpu_s": loader["images_per_cpu_s"],
                  **report, "overhead": overhead, "cache": speed, "loader": loader, "lightly_train": lightly}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
