"""The training loop: one plain Accelerate loop around `DistillObjective`.

Choices that matter:
- The teacher stays out of `accelerator.prepare()` (frozen, never wrapped, no optimizer state); on GPU
  it runs in the training precision; its outputs are computed under inference mode.
- Gradient accumulation: the contrastive batch is the micro-batch gathered over processes
  (`train.batch_size / train.grad_accum_steps` images, whatever the process count). Accumulation
  averages the gradients of independent micro-batch losses; it does not enlarge the contrastive
  batch (that would need cached embeddings, GradCache-style). The per-process micro-batch is
  `batch_size / (grad_accum_steps * processes)`.
- Exact resume: masks, caption choices and crops are drawn from per-sample streams keyed by
  (seed, step or epoch, sample index); `save_state` stores weights (safetensors), optimizer,
  scheduler and RNG states; the data position is restored with `skip_first_batches`.
- Checkpoints are built in a temp dir and renamed into place; each holds the training state and a
  plain student checkpoint (`student/`, readable by eval/export without any training state).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import IterableDataset
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, gather_object, send_to_device, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

from distill.captions import sample_captions
from distill.config import Recipe, StudentConfig, dump_recipe, flat_recipe, recipe_from_dict, recipe_to_dict, save_recipe
from distill.data import CAPTION_KEYS, DataStats, build_dataset, make_dataloader
from distill.masking import sample_masks
from distill.objective import DistillObjective, teacher_targets
from teachers.atomic import write_atomic
from teachers.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
METRICS = "metrics.jsonl"
NO_DECAY = ("cls_token", "register_tokens", "mask_token", "position_embeddings", "temperature", "logit_bias")


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this process consumed in `epoch`


# ---------------------------------------------------------------- setup helpers


def make_accelerator(recipe: Recipe, out: Path) -> Accelerator:
    t = recipe.train
    # Without a GPU, Accelerate joins a multi-process launch (torchrun, `accelerate launch --multi_gpu`) only when
    # told to run on CPU; otherwise every process would train alone on the whole batch.
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=cpu_processes,
        mixed_precision=None if t.mixed_precision == "auto" else t.mixed_precision,
        # Steps are counted in micro-batches only: an epoch end must not force an early optimizer step.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=t.grad_accum_steps,
                                                                sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def micro_batch_size(recipe: Recipe, processes: int) -> int:
    t = recipe.train
    per_step = t.grad_accum_steps * processes
    if t.batch_size % per_step:
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by grad_accum_steps x processes "
                        f"= {t.grad_accum_steps} x {processes}")
    return t.batch_size // per_step


def _teacher_dtype(accelerator: Accelerator) -> torch.dtype:
    if accelerator.device.type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


def _caption_keys(dataset) -> tuple[str, ...]:
    keys = getattr(dataset, "caption_keys", None)
    if keys is None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        keys = tuple(dataset[0].captions)
    return tuple(keys) if keys is not None else CAPTION_KEYS


def _contrastive_enabled(recipe: Recipe, dataset) -> bool:
    c = recipe.loss.contrastive
    if c.kind == "none":
        log.info("contrastive loss off (loss.contrastive.kind=none): image-only distillation")
        return False
    keys = _caption_keys(dataset)
    wanted = {"short"} | {k for k, w in c.caption_weights.items() if w > 0}
    if not wanted & set(keys):
        log.info("the data has no captions (%s wanted): image-only distillation, no contrastive loss",
                 ", ".join(sorted(wanted)))
        return False
    log.info("contrastive %s loss (text tower: %s): CLS1 <-> short, CLS2 <-> %s; data captions: %s", c.kind,
             c.text_tower, ", ".join(f"{k} {w:g}" for k, w in c.caption_weights.items()), ", ".join(keys))
    return True


def _build_student(recipe: Recipe, teacher, text: bool, s: StudentConfig):
    from students import build_student

    tokenizer = None
    if text:
        tokenizer = AutoTokenizer.from_pretrained(s.tokenizer) if s.tokenizer else teacher.tokenizer
    student = build_student(s.name, teacher_width=teacher.width, text=text, init=s.init, text_init=s.text_init,
                            image_size=s.image_size, tokenizer=tokenizer, head=s.head,
                            gradient_checkpointing=recipe.train.gradient_checkpointing)
    if text and student.tokenizer is None:
        raise UserError("the student's text tower needs a tokenizer: set student.tokenizer=DIR, student.init / "
                        "student.text_init, or use a teacher with a tokenizer")
    return student


def make_optimizer(recipe: Recipe, objective: DistillObjective) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in objective.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.rsplit(".", 1)[-1] in NO_DECAY else decay).append(p)
    o = recipe.optim
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas))


def _calibrate(objective: DistillObjective, teacher, dataset, recipe: Recipe, accelerator: Accelerator,
               micro: int) -> None:
    """Target statistics over the first `calibration_batches` contrastive batches of epoch 0, sharded
    over processes and summed, so every process layout sees the same images."""
    loader = make_loader(dataset, recipe, micro)
    world, rank = accelerator.num_processes, accelerator.process_index
    wanted = recipe.loss.calibration_batches * world

    def batches():
        for i, batch in enumerate(loader):
            if i >= wanted:
                break
            if i % world == rank:
                yield teacher.encode_image(batch["teacher_pixels"].to(accelerator.device)).map(lambda t: t.float())

    reduce_sum = (lambda t: accelerator.reduce(t, "sum")) if world > 1 else (lambda t: t)
    objective.norm.calibrate(batches(), reduce_sum)
    log.info("target normalisation (%s) calibrated on %d batches", objective.norm.kind, wanted)


def make_loader(dataset, recipe: Recipe, micro: int):
    d = recipe.data
    return make_dataloader(dataset, batch_size=micro, student_size=recipe.student.image_size,
                           teacher_size=recipe.teacher.image_size, seed=recipe.seed, num_workers=d.num_workers,
                           shuffle=d.shuffle, scale=tuple(d.crop_scale), ratio=tuple(d.crop_ratio), flip_p=d.flip_p)


# ---------------------------------------------------------------- checkpoints


def _checkpoints(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    return sorted(root.glob("step_*")) if root.is_dir() else []


def _save_student(objective: DistillObjective, directory: Path, recipe: Recipe, teacher, step: int) -> None:
    if hasattr(objective, "students_for_export"):  # several students: one checkpoint each, student/<name>
        for name, student in objective.students_for_export().items():
            _save_one(student, objective.objectives[name], directory / name, recipe, teacher, step)
        return
    _save_one(objective.student_for_export(), objective, directory, recipe, teacher, step)


def _save_one(student, objective: DistillObjective, directory: Path, recipe: Recipe, teacher, step: int) -> None:
    student.save(directory, metadata={
        "recipe": recipe_to_dict(recipe), "teacher": {"spec": recipe.teacher.spec, "fingerprint": teacher.fingerprint},
        "step": step, "heads_output": "teacher space" + (" (target normalisation folded in)"
                                                          if objective.norm is not None else ""),
    })


def _save_checkpoint(accelerator: Accelerator, objective, out: Path, recipe: Recipe, teacher,
                     progress: Progress) -> Path:
    root = out / CHECKPOINTS
    final = root / f"step_{progress.step:08d}"
    tmp = root / f".tmp-step_{progress.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    # Each process's data position (they differ only in name; kept per process for clarity).
    (tmp / f"{STATE}.{accelerator.process_index}").write_text(json.dumps(progress.__dict__))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(objective)
        _save_student(unwrapped, tmp / "student", recipe, teacher, progress.step)
        (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in _checkpoints(out)[: -recipe.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _check_resumable(checkpoint: Path, recipe: Recipe) -> None:
    import yaml

    saved = recipe_to_dict(recipe_from_dict(yaml.safe_load((checkpoint / "recipe.yaml").read_text()),
                                            str(checkpoint / "recipe.yaml")))
    current = recipe_to_dict(recipe)

    def diff(a, b, prefix=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [prefix.rstrip(".")]

    changed = diff(saved, current)
    if changed:
        raise UserError(f"--resume needs the recipe the run started with; changed: {', '.join(changed)} "
                        f"(see {checkpoint / 'recipe.yaml'})")


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


# ---------------------------------------------------------------- the loop


def run_distill(recipe: Recipe, out_dir: str | os.PathLike, resume: bool = False, stop_at: int | None = None,
                teacher=None) -> Path:
    """Train a student from `recipe` into `out_dir`; returns the final student checkpoint directory.

    resume: continue the run in `out_dir` from its last checkpoint (the recipe must be unchanged).
    stop_at: stop (with a checkpoint) after this optimizer step, e.g. for a time-limited job.
    teacher: an already-loaded `Teacher` instead of `recipe.teacher.spec`.
    """
    out = Path(out_dir)
    if not recipe.teacher.spec and teacher is None:
        raise UserError("recipe key 'teacher.spec' is empty; expected a teacher (hub id, directory, npz:..., "
                        "timm:NAME), e.g. teacher.spec=google/tipsv2-g14")
    existing = _checkpoints(out)
    if resume and not existing:
        raise UserError(f"--resume: no checkpoint in {out / CHECKPOINTS}; start the run without --resume")
    if not resume and (existing or (out / "student").exists()):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume:
        _check_resumable(existing[-1], recipe)
    if stop_at is not None and stop_at < 1:
        raise UserError(f"--stop-at {stop_at}; expected a step >= 1")

    accelerator = make_accelerator(recipe, out)
    micro = micro_batch_size(recipe, accelerator.num_processes)
    set_seed(recipe.seed)
    if teacher is None:
        from teachers import load_teacher

        teacher = load_teacher(recipe.teacher.spec, dtype=_teacher_dtype(accelerator), device=accelerator.device)
    else:
        teacher = teacher.to(device=accelerator.device, dtype=_teacher_dtype(accelerator))
    dataset = build_dataset(recipe.data.source, **recipe.data.options)
    contrastive = _contrastive_enabled(recipe, dataset)
    c = recipe.loss.contrastive
    if contrastive and c.text_tower == "teacher" and not teacher.has_text:
        raise UserError("loss.contrastive.text_tower=teacher needs a teacher with a text tower; "
                        "use text_tower=student or a TIPSv2/CLIP/SigLIP teacher")
    text = contrastive and c.text_tower == "student"
    objectives = {s.name: DistillObjective(_build_student(recipe, teacher, text, s), recipe.loss,
                                           teacher_width=teacher.width, contrastive=contrastive)
                  for s in recipe.students or [recipe.student]}
    if len(objectives) == 1:
        (objective,) = objectives.values()
    else:
        from distill.multi_student import MultiStudentObjective

        objective = MultiStudentObjective(objectives)
    objective.to(accelerator.device)
    if objective.norm is not None and not resume:
        _calibrate(objective, teacher, dataset, recipe, accelerator, micro)
    optimizer = make_optimizer(recipe, objective)
    o = recipe.optim
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, o.warmup_steps, recipe.train.max_steps,
                                                            min_lr_rate=o.min_lr_ratio)
    if recipe.cache:
        from distill.cache.targets import replay_loader

        loader = replay_loader(recipe.cache, recipe, dataset, teacher, micro)
    else:
        loader = make_loader(dataset, recipe, micro)
    if isinstance(dataset, IterableDataset):
        # Streaming sources shard themselves over processes; Accelerate's batch dispatcher would read rank 0's
        # shards only and cannot carry caption strings. The loop moves their batches to the device instead.
        objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    else:
        objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)

    progress = Progress()
    if resume:
        accelerator.load_state(str(existing[-1]))
        state = existing[-1] / f"{STATE}.{accelerator.process_index}"
        progress = Progress(**json.loads(state.read_text()))
        log.info("resumed from %s at step %d", existing[-1], progress.step)
    unwrapped = accelerator.unwrap_model(objective)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out / "recipe.yaml")
        if unwrapped.norm is not None:
            unwrapped.norm.save(out / "target_norm.safetensors")
        # Drops lines past the checkpoint (resume) or from an earlier attempt that died before its first one.
        _truncate_metrics(out / METRICS, progress.step)
    accelerator.init_trackers("distill", config=flat_recipe(recipe))
    log.info("distilling %s -> %s: %d steps, batch %d (%d per process x %d processes x %d accumulation)",
             recipe.teacher.spec or type(teacher).__name__, recipe.student.name, recipe.train.max_steps,
             recipe.train.batch_size, micro, accelerator.num_processes, recipe.train.grad_accum_steps)

    train_loop(recipe, accelerator, objective, optimizer, scheduler, loader, progress, out, stop_at=stop_at,
               targets=_teacher_targets(recipe, accelerator, teacher, unwrapped),
               checkpoint=lambda p: _save_checkpoint(accelerator, objective, out, recipe, teacher, p))

    final = out / "student"
    if accelerator.is_main_process and progress.step >= recipe.train.max_steps:
        _save_student(accelerator.unwrap_model(objective), final, recipe, teacher, progress.step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final if progress.step >= recipe.train.max_steps else _checkpoints(out)[-1] / "student"


def _teacher_targets(recipe: Recipe, accelerator: Accelerator, teacher, unwrapped):
    teacher_text = unwrapped.contrastive and recipe.loss.contrastive.text_tower == "teacher"
    cached = None
    if recipe.cache:
        from distill.cache.targets import CachedTargets

        cached = CachedTargets(accelerator.device)

    def targets(batch, captions):
        return teacher_targets(teacher, batch["teacher_pixels"], unwrapped.norm, captions, teacher_text,
                               cached(batch) if cached else None)

    return targets


def train_loop(recipe: Recipe, accelerator: Accelerator, objective, optimizer, scheduler, loader, progress: Progress,
               out: Path, *, targets: Callable[[dict, object], object] | None = None,
               after_step: Callable[[int, int], None] | None = None,
               checkpoint: Callable[[Progress], None] | None = None, stop_at: int | None = None,
               desc: str = "distill", show_progress: bool = True) -> None:
    """The loop that distillation and pretraining share.

    targets(batch, captions): what the objective regresses onto (the teacher's outputs), or None without one.
    after_step(step, max_steps): runs after each optimizer step (pretraining's EMA update).
    checkpoint(progress): saves the training state; without it the run cannot resume.
    """
    t, loss_cfg = recipe.train, recipe.loss
    unwrapped = accelerator.unwrap_model(objective)
    grid = (recipe.student.image_size // unwrapped.student.patch_size,) * 2
    last = min(t.max_steps, stop_at or t.max_steps)
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    stats = DataStats()
    bar = tqdm(total=t.max_steps, initial=progress.step,
               disable=not (show_progress and accelerator.is_local_main_process), desc=desc, dynamic_ncols=True)
    tick = time.perf_counter()
    objective.train()
    while progress.step < last:
        loader.set_epoch(progress.epoch)
        batches = (accelerator.skip_first_batches(loader, progress.batches_in_epoch)
                   if progress.batches_in_epoch else loader)
        for batch in batches:
            batch = send_to_device(batch, accelerator.device)
            indices = batch["index"]
            masks = sample_masks(indices, progress.step, recipe.seed, grid, loss_cfg.mask_ratio,
                                 loss_cfg.mask_probability, loss_cfg.mask_shape)
            if masks is None:
                masks = torch.zeros(len(indices), grid[0] * grid[1], dtype=torch.bool)
            captions = (sample_captions(batch["captions"], indices, progress.step, recipe.seed,
                                        loss_cfg.contrastive.caption_weights) if unwrapped.contrastive else None)
            with accelerator.accumulate(objective):
                output = objective(batch["pixels"], masks.to(accelerator.device),
                                   targets(batch, captions) if targets else None, captions)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and recipe.optim.grad_clip > 0:
                    sums["grad_norm"] += accelerator.clip_grad_norm_(objective.parameters(), recipe.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            progress.batches_in_epoch += 1
            stats.merge(batch["stats"])
            for key, value in output.parts.items():
                sums[key] += value / t.grad_accum_steps
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress.step += 1
            if after_step:
                after_step(progress.step, t.max_steps)
            if progress.step % t.log_every == 0 or progress.step == last:
                elapsed = time.perf_counter() - tick
                _log_step(accelerator, sums, progress.step, scheduler.get_last_lr()[0],
                          t.batch_size * t.log_every / max(elapsed, 1e-9), out, bar)
                tick = time.perf_counter()
            sums.clear()
            bar.update(1)
            if progress.step == last or (t.checkpoint_every and progress.step % t.checkpoint_every == 0):
                _log_data_stats(accelerator, stats)
                if checkpoint:
                    checkpoint(progress)
            if progress.step >= last:
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
        with open(out / METRICS, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{images_per_s:.1f}")
    if not math.isfinite(metrics["loss"]):
        raise RuntimeError(f"loss is {metrics['loss']} at step {step}; lower optim.lr or check the data")


def _log_data_stats(accelerator: Accelerator, stats: DataStats) -> None:
    merged = DataStats()
    for counts in gather_object([stats.as_dict(prefix="")]):
        merged.add([k for k, n in counts.items() if k != "samples" for _ in range(n)], counts.get("samples", 0))
    if accelerator.is_main_process:
        log.info(merged.summary())
