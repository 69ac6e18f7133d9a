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
- Checkpoints (written and read by `distill.run_dir`, which owns the run directory) hold the training
  state and plain student checkpoints readable by eval/export without any training state.
- No host-device synchronisation inside the loop except every `train.log_every` steps, when the logged
  sums are reduced.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device
from tqdm.auto import tqdm

from distill.config import Recipe
from distill.data import DataStats
from distill.data.loader import Sizes
from distill.run_dir import Progress, append_metrics, save_checkpoint
from distill.tasks import TrainingTask

log = logging.getLogger(__name__)


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
            stats.merge(batch.stats)
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
        append_metrics(out, {"step": step, **metrics})
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
