"""The training loop: one plain Accelerate loop around a training task (`distill.tasks`).

The loop knows Accelerate, logging and checkpoints, nothing of the objective: per batch it asks the target
source (the frozen teacher online, or a cache; none for pretraining) for the targets, the task for the
loss, then steps the optimizer and calls the task's after-step hook.

Choices that matter:
- Gradient accumulation: the contrastive batch is the micro-batch gathered over processes
  (`train.batch_size / train.grad_accum_steps` images, whatever the process count). Accumulation
  averages the gradients of independent micro-batch losses; it does not enlarge the contrastive
  batch (that would need cached embeddings, GradCache-style).
- Exact resume: crops, masks, caption choices and extra views are drawn in the data workers from
  per-sample streams keyed by (seed, epoch, sample index); `save_state` stores weights (safetensors),
  optimizer, scheduler and RNG states; the data position is restored with `skip_first_batches`.
- Checkpoints are built in a temp dir and renamed into place; each holds the training state, plain
  student checkpoints (`student/`, readable by eval/export without any training state) and the size of
  every file (`sizes.json`), so `--resume` can tell a checkpoint damaged later (a copy cut short, a
  truncated file) and fall back to the one before.
- No host-device synchronisation inside the loop except every `train.log_every` steps, when the logged
  sums are reduced.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, load, send_to_device
from safetensors import safe_open
from tqdm.auto import tqdm

from distill.config import Recipe, dump_recipe, recipe_to_dict
from distill.data import DataStats
from distill.data.loader import Sizes
from distill.tasks import TrainingTask
from common.atomic import share_tree, temp_name, write_atomic
from common.errors import UserError, writing
from common.faults import crash_point

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
METRICS = "metrics.jsonl"
SIZES = "sizes.json"
RECIPE = "recipe.yaml"
# What only a training run writes at its top level (its `recipe.yaml` comes first, before any step).
RUN_MARKERS = (RECIPE, METRICS, CHECKPOINTS)


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this process consumed in `epoch`


@dataclass
class Run:
    """Everything a training run is made of, built by `distill.run.build_run`."""

    recipe: Recipe
    out: Path
    accelerator: Accelerator
    task: TrainingTask  # as prepared (possibly DDP-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    targets: Callable | None  # batch -> TeacherOutput; None: the task makes its own targets (pretraining)
    teacher: dict = field(default_factory=dict)  # {"spec", "fingerprint"} recorded with the students
    desc: str = "distill"
    dataset: object = None  # what the loader reads (for the run's data summary)
    sizes: Callable | None = None  # sets the loader's view sizes (resolution phases)

    @property
    def unwrapped(self) -> TrainingTask:
        return self.accelerator.unwrap_model(self.task)


# ---------------------------------------------------------------- checkpoints


def run_marker(directory: Path) -> str | None:
    """The first file showing that `directory` is a training run, None if it is not one."""
    return next((name for name in RUN_MARKERS if (directory / name).exists()), None)


def checkpoints(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    return sorted(root.glob("step_*")) if root.is_dir() else []


def save_exports(run: Run, directory: Path, step: int) -> None:
    """The task's students as plain checkpoints: `directory` for one, `directory/<name>` for several."""
    task = run.unwrapped
    for name, student in task.exports().items():
        student.save(directory / name if name else directory, metadata={
            "recipe": recipe_to_dict(run.recipe), "teacher": run.teacher, "step": step, **task.export_notes()})


def save_checkpoint(run: Run, progress: Progress) -> Path:
    """A full disk (or lost permission) is a one-line error naming the checkpoint; the earlier ones stay."""
    accelerator = run.accelerator
    final = run.out / CHECKPOINTS / f"step_{progress.step:08d}"
    tmp = temp_name(final)  # a fixed name: every process writes into it
    try:
        with writing(final):
            _write_checkpoint(run, progress, tmp)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        crash_point("checkpoint-renamed", progress.step)
        prune_checkpoints(run.out, run.recipe.train.keep_checkpoints, final)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(run: Run, progress: Progress, tmp: Path) -> None:
    accelerator = run.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    # Each process's data position (they differ only in name; kept per process for clarity).
    (tmp / f"{STATE}.{accelerator.process_index}").write_text(json.dumps(progress.__dict__))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_exports(run, tmp / "student", progress.step)
        (tmp / RECIPE).write_text(dump_recipe(run.recipe))
        sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / SIZES).write_text(json.dumps(sizes, indent=1))
        share_tree(tmp)  # Accelerate saves the weights through safetensors, owner-only


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from, None when it can: a file missing or of another size than
    written, a safetensors header that does not parse, or a torch-pickled state that Accelerate's own loader
    refuses (a pickle holding objects other than tensors: loading it could run code). Flipped bits inside tensor data pass (catching
    them would mean hashing every byte at each checkpoint)."""
    try:
        sizes = json.loads((checkpoint / SIZES).read_text())
    except (OSError, ValueError):
        return f"{SIZES} is missing or unreadable"
    for name, size in sizes.items():
        path = checkpoint / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            return f"{name} is missing" if actual is None else f"{name} has {actual} bytes, {size} were written"
    for path in sorted(checkpoint.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged headers
            return f"{path.relative_to(checkpoint)} has no readable safetensors header ({str(exc).splitlines()[0]})"
    for path in sorted(p for p in checkpoint.iterdir() if p.suffix in (".bin", ".pkl")):
        try:
            load(path, map_location="cpu", mmap=True)  # as `load_state` reads it (weights only), memory-mapped
        except Exception as exc:  # noqa: BLE001 - a refused pickle, a torn archive: either way not resumable
            return f"{path.name} is not a torch.save file of plain tensors ({str(exc).splitlines()[0]})"
    return None


def latest_usable_checkpoint(out: Path) -> Path:
    """The newest checkpoint without a `checkpoint_problem`; each damaged newer one is skipped with a warning."""
    found = checkpoints(out)
    for checkpoint in reversed(found):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        log.warning("checkpoint %s is damaged (%s): skipped, and removed if an earlier one is whole", checkpoint,
                    problem)
    raise UserError(f"--resume: none of the {len(found)} checkpoints in {out / CHECKPOINTS} is whole (see the "
                    "warnings above); start the run again in another --out")


def prune_checkpoints(out: Path, keep: int, newest: Path) -> None:
    """Keeps `newest` and the `keep - 1` before it; newer ones (damaged, skipped by a resume) go too. Also run
    when a run starts: a kill between a checkpoint's rename and this pruning leaves one too many."""
    found = checkpoints(out)
    position = found.index(newest)
    for old in found[: max(0, position + 1 - keep)] + found[position + 1:]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run: Run, checkpoint: Path) -> Progress:
    run.accelerator.load_state(str(checkpoint))
    state = checkpoint / f"{STATE}.{run.accelerator.process_index}"
    progress = Progress(**json.loads(state.read_text()))
    log.info("resumed from %s at step %d", checkpoint, progress.step)
    return progress


def truncate_metrics(path: Path, step: int) -> None:
    """Drops lines past `step` (a resume) or from an earlier attempt that died before its first checkpoint,
    and lines that do not parse (the last one torn by a kill, or a copy cut short), with a warning."""
    if not path.is_file():
        return
    keep, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        record = _metrics_record(line)
        if record is None:
            torn.append(number)
        elif record["step"] <= step:
            keep.append(line)
    if torn:
        log.warning("%s: dropped %d line(s) that do not parse (line %s), e.g. torn by a kill", path, len(torn),
                    ", ".join(map(str, torn)))
    write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def _metrics_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


# ---------------------------------------------------------------- the loop


def train_loop(run: Run, progress: Progress, *, stop_at: int | None = None, show_progress: bool = True) -> None:
    """Train from `progress` to `train.max_steps` (or `stop_at`), checkpointing as the recipe says."""
    accelerator, task, t = run.accelerator, run.task, run.recipe.train
    grad_clip = run.recipe.optim.grad_clip
    last = min(t.max_steps, stop_at or t.max_steps)
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    stats = DataStats()
    bar = tqdm(total=t.max_steps, initial=progress.step,
               disable=not (show_progress and accelerator.is_local_main_process), desc=run.desc, dynamic_ncols=True)
    # Logged values are means over the steps since the last log line.
    tick, logged_at = time.perf_counter(), progress.step
    task.train()
    while progress.step < last:
        run.loader.set_epoch(progress.epoch)
        sizes = run.recipe.view_sizes(progress.step)
        if run.sizes:
            run.sizes(Sizes(*sizes))
        batches = (accelerator.skip_first_batches(run.loader, progress.batches_in_epoch)
                   if progress.batches_in_epoch else run.loader)
        for batch in batches:
            batch = send_to_device(batch, accelerator.device, non_blocking=True)
            targets = run.targets(batch) if run.targets else None
            with accelerator.accumulate(task):
                output = task(batch, targets)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and grad_clip > 0:
                    sums["grad_norm"] += accelerator.clip_grad_norm_(task.parameters(), grad_clip)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            progress.batches_in_epoch += 1
            stats.merge(batch["stats"])
            for key, value in output.parts.items():
                sums[key] += value / t.grad_accum_steps
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            progress.step += 1
            accelerator.unwrap_model(task).after_optimizer_step(progress.step, t.max_steps)
            # Step 1 too: a user sees the first loss and speed at once, not after `log_every` steps.
            if progress.step % t.log_every == 0 or progress.step in (1, last):
                steps = progress.step - logged_at
                _log_step(accelerator, {k: v / steps for k, v in sums.items()}, progress.step,
                          run.scheduler.get_last_lr()[0], t.batch_size * steps / max(time.perf_counter() - tick, 1e-9),
                          run.out, bar)
                tick, logged_at = time.perf_counter(), progress.step
                sums.clear()
            bar.update(1)
            if progress.step == last or (t.checkpoint_every and progress.step % t.checkpoint_every == 0):
                _log_data_stats(accelerator, stats, progress.step)
                save_checkpoint(run, progress)
            if progress.step >= last:
                break
            if run.recipe.view_sizes(progress.step) != sizes:
                # A new resolution phase: restart this epoch's iteration at its position with the new sizes
                # (exactly what a resume there does), dropping batches prefetched at the old ones.
                log.info("resolution phase from step %d: views %s", progress.step, run.recipe.view_sizes(progress.step))
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()


def _log_step(accelerator: Accelerator, sums: dict[str, torch.Tensor], step: int, lr: float, images_per_s: float,
              out: Path, bar) -> None:
    keys = sorted(sums)
    values = accelerator.reduce(torch.stack([sums[k].float() for k in keys]), "mean")
    metrics = {k: float(v) for k, v in zip(keys, values.tolist())}
    metrics.update({"lr": lr, "images_per_s": images_per_s})
    accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        with writing(out / METRICS), open(out / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{images_per_s:.1f}")
    if not math.isfinite(metrics["loss"]):
        raise RuntimeError(f"loss is {metrics['loss']} at step {step}; lower optim.lr or check the data")


def _log_data_stats(accelerator: Accelerator, stats: DataStats, step: int) -> None:
    """Samples drawn and data problems met so far, summed over processes: a log line and tracker scalars."""
    merged = DataStats()
    for part in gather_object([stats]):
        merged.merge(part)
    accelerator.log(merged.as_dict(), step=step)
    if accelerator.is_main_process:
        log.info(merged.summary())
