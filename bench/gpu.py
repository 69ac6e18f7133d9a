"""GPU throughput of the real-scale recipes against the hardware's limit, in one run; prints one JSON object.

  matmul_peak     the measured bf16 matmul rate of this GPU (a large GEMM): the reference
  teacher         the g/14 teacher's forward alone, images/s at 224 and 448 px
  steps           per recipe (b14, then l14 and so400m14 while --max-seconds allows): a full online
                  distillation step (g/14 teacher, student with its text tower, caption contrastive) and the
                  same step from cached targets; images/s, achieved TFLOP/s (the recipe's FLOP count,
                  `distill.compute`) and its fraction of the matmul peak, peak GPU memory
  compile         the b14 online step with `train.compile=true` against the eager one
  loader          images/s of the data pipeline (448 px teacher view, 224 px student view) with all CPU
                  workers, against the b14 step's images/s

Weights are random (throughput depends on the shapes); batch sizes are the largest that fit, found by the
script. Steps are timed on synthetic batches already on the GPU, so the step and the loader are measured
apart. `--tiny` runs the same code on CPU with toy shapes (without the compiled step) in a minute: the suite runs it
so this cannot rot.

Usage: python bench/gpu.py [--recipes b14 l14 so400m14] [--steps 10] [--max-seconds 420] [--out FILE] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from distill.compute import estimate_compute
from distill.recipe_loader import load_recipe
from distill.data import DataStats, build_dataset, make_dataloader
from distill.data.batch import Batch
from distill.data.captions import caption_pair
from distill.run import build_run, caption_tokenizer
from distill.tasks import TeacherOutput
from teachers.random import random_tipsv2_teacher

CAPTION = ("a photo of a large red circle at the bottom left and a small blue square in the center, standing on "
           "a sand floor in front of a stone wall")  # truncated at 64 tokens, as TIPS's captions are
BATCHES = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 16, 8, 4, 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `reps` calls after `warmup`, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_batch(trial, candidates: tuple[int, ...], device: torch.device):
    """(batch, trial(batch)) for the largest candidate whose trial does not run out of memory."""
    for batch in candidates:
        try:
            return batch, trial(batch)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not out_of_memory(exc):
                raise
            reset_peak(device)
    raise RuntimeError(f"no batch size in {candidates} fits on {device}")


def matmul_peak(device: torch.device, n: int, dtype: torch.dtype, reps: int) -> dict:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = seconds_per_call(lambda: a @ b, device, reps)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": 2 * n ** 3 / seconds / 1e12}


def teacher_forward(teacher, device: torch.device, size: int, reps: int, candidates) -> dict:
    def trial(batch):
        pixels = torch.rand(batch, 3, size, size, device=device)
        return batch / seconds_per_call(lambda: teacher.encode_image(pixels), device, reps)

    batch, rate = largest_batch(trial, candidates, device)
    return {"resolution": size, "batch": batch, "images_per_s": rate}


def tokenizer_dir(root: Path) -> Path:
    """A tokenizer with TIPSv2's 32k vocabulary size (the text embedding's real memory and optimizer state)."""
    from transformers import Tipsv2Tokenizer

    letters = ["<pad>", "<unk>", "▁", *"abcdefghijklmnopqrstuvwxyz,."]
    vocab = {piece: i for i, piece in enumerate(letters + [f"▁filler{i}" for i in range(32000 - len(letters))])}
    Tipsv2Tokenizer(vocab=vocab, merges=[], model_max_length=64).save_pretrained(root / "tokenizer")
    return root / "tokenizer"


def make_run(name: str, teacher, work: Path, tiny: bool, compile_: bool):
    overrides = [f"student.tokenizer={tokenizer_dir(work)}", "data.source=scenes", "data.num_workers=0",
                 "loss.target_norm=none", f"train.compile={str(compile_).lower()}", "train.batch_size=2",
                 "teacher.image_size=224", "student.image_size=224", "data.options={size: 256, length: 8}"]
    if tiny:
        overrides += ["student.name=tipsv2-nano", "student.image_size=32", "teacher.image_size=28",
                      "data.options={size: 36, length: 8}", "train.mixed_precision=no"]
    elif not torch.cuda.is_available():
        overrides.append("train.mixed_precision=no")
    recipe = load_recipe(name, overrides)
    return recipe, build_run(recipe, work / f"run-{name}-{compile_}", calibrate=False, teacher=teacher)


def synthetic_batch(recipe, run, batch: int) -> Batch:
    device, size = run.accelerator.device, recipe.student.image_size
    teacher_size = recipe.teacher.image_size or size
    grid = (size // run.unwrapped.student.patch_size) ** 2
    mask = torch.zeros(batch, grid, dtype=torch.bool, device=device)
    mask[: batch // 2, : int(0.4 * grid)] = True  # half the images masked, as the recipes do
    captions = [f"{CAPTION} {i}" for i in range(batch)]
    pair = caption_pair([(c, c) for c in captions], caption_tokenizer(run.targets, run.unwrapped))
    return Batch(pixels=torch.rand(batch, 3, size, size, device=device),
                 teacher_pixels=torch.rand(batch, 3, teacher_size, teacher_size, device=device),
                 index=torch.arange(batch, device=device), crop=torch.zeros(batch, 5, device=device),
                 captions={"short": captions}, stats=DataStats(), mask=mask,
                 caption_pair=pair.map(lambda t: t.to(device)))


def train_step(run, batch: Batch, targets: TeacherOutput | None = None) -> None:
    """The loop's step without the data and the logging: targets, loss, backward, clip, optimizer."""
    targets = targets if targets is not None else run.targets(batch)
    output = run.task(batch, targets)
    run.accelerator.backward(output.loss)
    run.accelerator.clip_grad_norm_(run.task.parameters(), run.recipe.optim.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


def measure_steps(recipe, run, reps: int, candidates) -> dict:
    device = run.accelerator.device
    compute = estimate_compute(recipe)
    cached_gflops = compute.train_gflops_per_image - compute.teacher_gflops_per_image
    result = {}
    for kind, gflops in (("online", compute.train_gflops_per_image), ("cached", cached_gflops)):
        def trial(batch, kind=kind):
            data = synthetic_batch(recipe, run, batch)
            # Cached targets: the teacher's tokens made before the timing, as a cache's decoded targets (their
            # decoding on the device, a cast for a bf16 cache, is not timed).
            targets = None if kind == "online" else run.targets(data)
            reset_peak(device)
            seconds = seconds_per_call(lambda: train_step(run, data, targets), device, reps)
            return seconds, peak_memory_gib(device)

        batch, (seconds, memory) = largest_batch(trial, candidates, device)
        rate = batch / seconds
        result[kind] = {"batch": batch, "images_per_s": rate, "achieved_tflops": rate * gflops / 1e3,
                        "gflops_per_image": gflops, "peak_memory_gib": memory}
    return result


def loader_rate(tiny: bool, workers: int, batches: int) -> dict:
    """The data pipeline alone: decode, crop, a 448 px teacher view and a 224 px student view per image."""
    student, teacher = (32, 64) if tiny else (224, 448)
    dataset = build_dataset("scenes", size=teacher + teacher // 7, length=32 * (batches + 1))
    loader = make_dataloader(dataset, batch_size=32, student_size=student, teacher_size=teacher,
                             num_workers=workers)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    count = sum(len(next(it)) for _ in range(batches))
    return {"workers": workers, "student_px": student, "teacher_px": teacher,
            "images_per_s": count / (time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["b14", "l14", "so400m14"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--max-seconds", type=float, default=420, help="skip later recipes past this budget")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="toy shapes on CPU: the suite's smoke run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "tiny": args.tiny}
    candidates = (8, 4) if args.tiny else BATCHES
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result["matmul_peak"] = matmul_peak(device, 256 if args.tiny else 8192, dtype, args.steps)
    teacher = (random_tipsv2_teacher("b14", depth=2, device=device) if args.tiny
               else random_tipsv2_teacher("g14", device=device, dtype=dtype))
    result["teacher"] = [teacher_forward(teacher, device, size, args.steps, candidates)
                         for size in ((28, 56) if args.tiny else (224, 448))]
    peak = result["matmul_peak"]["tflops"]
    result["steps"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.recipes:
            if time.perf_counter() - start > args.max_seconds:
                result["steps"][name] = "skipped: --max-seconds reached"
                continue
            recipe, run = make_run(name, teacher, work, args.tiny, compile_=False)
            steps = measure_steps(recipe, run, args.steps, candidates)
            for kind in steps.values():
                kind["fraction_of_matmul_peak"] = kind["achieved_tflops"] / peak
            result["steps"][name] = steps
            del run
            reset_peak(device)
        # Compiling on a CPU takes minutes (inductor generates C++): the tiny run leaves it out.
        if not args.tiny and time.perf_counter() - start <= args.max_seconds:
            recipe, run = make_run(args.recipes[0], teacher, work, args.tiny, compile_=True)
            first = time.perf_counter()
            train_step(run, synthetic_batch(recipe, run, candidates[-1]))  # compiles
            compiled = measure_steps(recipe, run, args.steps, candidates)["online"]
            eager = result["steps"][args.recipes[0]]["online"]
            result["compile"] = {"recipe": args.recipes[0], "first_step_seconds": time.perf_counter() - first,
                                 "online_images_per_s": compiled["images_per_s"],
                                 "speedup_over_eager": compiled["images_per_s"] / eager["images_per_s"]}
    workers = 2 if args.tiny else max(1, (os.cpu_count() or 2) - 1)
    result["loader"] = loader_rate(args.tiny, workers, 2 if args.tiny else 20)
    b14 = result["steps"].get(args.recipes[0])
    if isinstance(b14, dict):
        result["loader"]["keeps_up_with_online_step"] = result["loader"]["images_per_s"] >= b14["online"]["images_per_s"]
    result["seconds"] = time.perf_counter() - start
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
