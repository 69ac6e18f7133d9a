"""One way to build and run a training run from a recipe: distillation (a `teacher:` section or a teacher-target
`cache:`) or TIPSv2 pretraining (a `pretrain:` section).

`run_training(recipe, out)` checks the recipe and the run directory, builds the Accelerator, the data, the
target source and the training task (`build_run`), calibrates target statistics, resumes from the last
checkpoint when asked, trains (`distill.train.train_loop`) and saves the students: `out/student` (one
student, or `out/student/<name>` for several); pretraining also writes `out/model`, a `Tipsv2Model` +
tokenizer (`save_pretrained`) that the teacher layer, distillation and evaluation read.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, send_to_device, set_seed
from torch.utils.data import IterableDataset
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from distill.cache.replay import open_replay, replay_dataloader
from distill.cache.teacher_set import cache_members
from distill.caption_check import check_captions
from distill.config import Recipe, TeacherConfig, flat_recipe, own_input_size
from distill.data import CAPTION_KEYS, CropConfig, Draws, MaskConfig, build_dataset, make_dataloader
from distill.data.captions import CaptionTokenizer
from distill.data.loader import Augment
from distill.processes import Processes, cpu_launch
from distill.recipe_rules import check_rules
from distill.targets import CachedTargets, OnlineTargets, TeacherSet
from distill.tasks import TrainingTask
from distill.tasks.distill_task import DistillTask
from distill.tasks.multi_student import MultiStudentTask
from distill.tasks.pretrain_task import PretrainTask
from distill.run_dir import (PRETRAINED_MODEL, STUDENT, Progress, checkpoints, load_checkpoint, open_run_dir,
                             save_exports, write_run_start)
from distill.train import Run, train_loop
from students.export import export_student
from teachers import load_teacher, teacher_dtype
from common.errors import UserError, writing
from common.lock import OutputLock

log = logging.getLogger(__name__)

NO_DECAY = ("cls_token", "register_tokens", "mask_token", "position_embeddings", "temperature", "logit_bias")


# ---------------------------------------------------------------- pieces


def make_accelerator(recipe: Recipe, out: Path) -> Accelerator:
    t = recipe.train
    return Accelerator(
        cpu=cpu_launch(),
        mixed_precision=None if t.mixed_precision == "auto" else t.mixed_precision,
        # Steps are counted in micro-batches only: an epoch end must not force an early optimizer step.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=t.grad_accum_steps,
                                                                sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def per_process_batch(recipe: Recipe, processes: int) -> int:
    t = recipe.train
    per_step = t.grad_accum_steps * processes
    if t.batch_size % per_step:
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by grad_accum_steps x processes "
                        f"= {t.grad_accum_steps} x {processes}")
    return t.batch_size // per_step


def make_optimizer(recipe: Recipe, task: torch.nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in task.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.rsplit(".", 1)[-1] in NO_DECAY else decay).append(p)
    o = recipe.optim
    # One kernel for the whole update on CUDA (fused). On CPU torch's default per-tensor loop: its foreach path
    # takes the square root of every second moment at once, a temporary as large as the model whose fresh pages
    # cost more than the loop it saves (bench/throughput.py's step overhead); both give the same bits.
    cuda = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas),
                             fused=cuda or None)


def task_class(recipe: Recipe) -> type[TrainingTask]:
    """What the recipe trains: TIPSv2 pretraining (`pretrain:`), several students on one teacher forward
    (`students:`), or one student."""
    if recipe.is_pretraining:
        return PretrainTask
    return MultiStudentTask if len(recipe.students) > 1 else DistillTask


def compile_towers(students, teachers, teacher_text: bool = False) -> None:
    """`train.compile`: compile the forward passes in place (module names, hence checkpoints, unchanged); the
    primary teacher's text tower too when the caption contrastive term reads it every step (`text_tower: teacher`)."""
    for student in students:
        student.vision.compile()
        if student.text is not None:
            student.text.compile()
    if teacher_text and teachers and getattr(teachers[0], "text", None) is not None:
        teachers[0].text.compile()
    for teacher in teachers:
        vision = getattr(teacher, "vision", None)
        if vision is not None:
            vision.compile()
        elif teacher is not None:
            log.info("train.compile: the %s teacher has no TIPSv2 vision tower to compile; it runs eagerly",
                     type(teacher).__name__)


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
        if recipe.is_pretraining:
            raise UserError(f"pretraining needs captions ({', '.join(sorted(wanted))}): the data has none "
                            "(the contrastive loss is the text anchor); caption it with `tipsdistill caption`")
        log.info("the data has no captions (%s wanted): image-only distillation, no contrastive loss",
                 ", ".join(sorted(wanted)))
        return False
    weighted = [k for k, w in c.caption_weights.items() if w > 0]
    # CLS2 draws among the granularities an image has (`draw_captions`): a weight without captions is never used.
    absent = [k for k in weighted if k not in keys]
    log.info("contrastive %s loss (text tower: %s): CLS1 <-> short, CLS2 <-> %s; data captions: %s%s", c.kind,
             c.text_tower, ", ".join(f"{k} {c.caption_weights[k]:g}" for k in weighted if k in keys) or "none",
             ", ".join(keys), f" ({', '.join(absent)} weighted but not in the data)" if absent else "")
    return True


def caption_tokenizer(targets, task: TrainingTask) -> CaptionTokenizer:
    """How the loader tokenises the caption pairs: for the text tower that reads them, the frozen teacher's
    (`text_tokenizer`, each caption list alone, as its `encode_text`), else the students' (both lists in one
    forward)."""
    if targets is not None and targets.text:
        return CaptionTokenizer(targets.teacher.text_tokenizer)
    first, *others = (student.text_tokenizer for student in task.students())
    if not all(_same_tokenisation(first, other) for other in others):
        raise UserError("the students' text towers tokenise captions differently (student.init / text_init); "
                        "the students of one run read one tokenisation of each batch's captions")
    return CaptionTokenizer(first, joint=True)


def _same_tokenisation(a, b) -> bool:
    return a.max_length == b.max_length and (a.tokenizer is b.tokenizer or a.tokenizer.backend_tokenizer.to_str()
                                             == b.tokenizer.backend_tokenizer.to_str())


def _target_source(recipe: Recipe, accelerator: Accelerator, teacher, contrastive: bool):
    """The online teacher(s), or the cache standing in for them (which never loads a teacher); None when
    pretraining (the model is its own teacher)."""
    if recipe.is_pretraining:
        return None
    if recipe.cache:
        return _cached_targets(recipe)
    if not recipe.teachers and (recipe.teacher is None or not (recipe.teacher.spec or teacher is not None)):
        raise UserError("recipe key 'teacher.spec' is empty; expected a teacher (micro, a hub id, a directory, "
                        "npz:..., timm:NAME) or cache=DIR")
    c = recipe.loss.contrastive
    text_tower = contrastive and c.text_tower == "teacher"
    sources, entries = [], recipe.run_teachers
    for i, entry in enumerate(entries):
        key = f"teachers[{i}]" if recipe.teachers else "teacher"
        dtype = teacher_precision(entry, accelerator.device, accelerator.mixed_precision)
        if teacher is not None and i == 0:
            loaded = teacher.to(device=accelerator.device, dtype=dtype)
        else:
            loaded = load_teacher(entry.spec, dtype=dtype, device=accelerator.device)
        if i > 0:  # only the primary's text tower serves the caption term: the others' would take memory only
            loaded.drop_text()
        own_size = own_input_size(entries, i)
        for *_, size in recipe.phases():
            size = own_size or size
            if size % loaded.patch_size:
                raise UserError(f"{key} view size {size} ({key}.image_size or a resolution phase) is not a multiple "
                                f"of the teacher's patch size {loaded.patch_size}")
        if i == 0 and text_tower and not loaded.has_text:
            raise UserError(f"loss.contrastive.text_tower=teacher needs a {key} with a text tower (with teachers:, the "
                            "first); use text_tower=student or a TIPSv2/CLIP/SigLIP teacher")
        sources.append(OnlineTargets(loaded, entry.spec or type(loaded).__name__, text=text_tower and i == 0,
                                     name=entry.name, image_size=own_size))
    return sources[0] if len(sources) == 1 else TeacherSet(sources)


def teacher_precision(entry: TeacherConfig, device, mixed_precision: str | None) -> torch.dtype:
    return teacher_dtype(device, mixed_precision if entry.precision == "auto" else entry.precision)


def _cached_targets(recipe: Recipe):
    """The cache standing in for the recipe's teacher(s); a `teachers:` cache was checked to be of those very teachers
    (`cache_members`), a one-teacher one may come from another spec than `teacher.spec` (a warning)."""
    sources = [CachedTargets(location, name=name) for name, location in cache_members(recipe.cache, recipe).items()]
    if len(sources) > 1:
        return TeacherSet(sources)
    targets = sources[0]
    spec = None if recipe.teachers or recipe.teacher is None else recipe.teacher.spec
    if spec and spec != targets.spec:
        log.warning("teacher.spec %s differs from the cache's teacher %s; the cache's targets are used", spec,
                    targets.spec or targets.fingerprint[:12])
    return targets


def _draws(recipe: Recipe, patch_size: int, contrastive: bool) -> Draws:
    loss = recipe.loss
    views: tuple[CropConfig, ...] = ()
    if recipe.is_pretraining:
        p = recipe.pretrain
        views = (p.global_crop, *[p.local_crop] * p.local_crops)
    return Draws(MaskConfig(patch_size, loss.mask_ratio, loss.mask_probability, loss.mask_shape),
                 dict(loss.contrastive.caption_weights) if contrastive else None, views)


def _calibrate(task: TrainingTask, targets, loader, recipe: Recipe, accelerator: Accelerator) -> None:
    """Target statistics over the first `calibration_batches` contrastive batches of epoch 0, sharded over
    processes and summed, so every process layout sees the same images (online or cached targets alike)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    wanted = recipe.loss.calibration_batches * world
    loader.set_epoch(0)

    def batches():
        for i, batch in enumerate(loader):
            if i >= wanted:
                break
            if i % world == rank:
                yield targets(send_to_device(batch, accelerator.device))

    reduce_sum = (lambda t: accelerator.reduce(t, "sum")) if world > 1 else (lambda t: t)
    task.calibrate(batches(), reduce_sum)
    log.info("target normalisation (%s) calibrated on %d batches",
             ", ".join(f"{name}: {norm.kind}" for name, norm in task.target_norms().items()), wanted)


# ---------------------------------------------------------------- building and running


def build_run(recipe: Recipe, out: Path, accelerator: Accelerator | None = None, *, calibrate: bool = True,
              teacher=None) -> Run:
    """Everything but the training state: a fresh run, or the shell a checkpoint is loaded into."""
    accelerator = accelerator or make_accelerator(recipe, out)
    batch = per_process_batch(recipe, accelerator.num_processes)
    set_seed(recipe.seed)
    dataset = build_dataset(recipe.data.source, **recipe.data.options)
    if not isinstance(dataset, IterableDataset) and len(dataset) < batch * accelerator.num_processes:
        raise UserError(f"data {recipe.data.source} has {len(dataset)} images, fewer than one global micro-batch "
                        f"({batch} x {accelerator.num_processes} processes); lower train.batch_size or add images")
    contrastive = _contrastive_enabled(recipe, dataset)
    targets = _target_source(recipe, accelerator, teacher, contrastive)
    task = task_class(recipe).build(recipe, targets, dataset, contrastive)
    desc = task.desc  # read before `prepare` wraps the task
    teacher_info = ({"spec": targets.spec, "fingerprint": targets.fingerprint} if targets is not None
                    else {"spec": None, "fingerprint": None})
    if isinstance(targets, TeacherSet):
        teacher_info["teachers"] = targets.describe()
    captions = caption_tokenizer(targets, task) if contrastive else None
    if contrastive and accelerator.is_main_process:
        check_captions(dataset, captions.text.tokenizer)
    patch_size = task.students()[0].patch_size  # one for all: one crop, one mask
    draws = _draws(recipe, patch_size, contrastive)
    task.to(accelerator.device)
    if recipe.train.compile:
        compile_towers(task.students(), [s.teacher for s in targets.teachers().values()] if targets is not None else [],
                       targets is not None and targets.text)
    student_size, teacher_size = recipe.view_sizes(0)
    augment = Augment(student_size, teacher_size, recipe.seed, recipe.data.crop, draws)
    pin = accelerator.device.type == "cuda"
    if recipe.cache:
        # The caches the targets were read from, found once (`cache_members`): the readers replay their crops.
        members = {name: source.directory for name, source in targets.teachers().items()}
        loader = replay_dataloader(dataset, open_replay(recipe, dataset, members), augment, batch_size=batch,
                                   seed=recipe.seed, num_workers=recipe.data.num_workers,
                                   shuffle=recipe.data.shuffle, pin_memory=pin, captions=captions)
    else:
        loader = make_dataloader(dataset, batch_size=batch, student_size=student_size,
                                 teacher_size=teacher_size, seed=recipe.seed, crop=recipe.data.crop, draws=draws,
                                 num_workers=recipe.data.num_workers, shuffle=recipe.data.shuffle, pin_memory=pin,
                                 captions=captions)
    sizes_setter = loader.set_sizes  # kept apart: Accelerate's prepared loader shares the sampler, not the method
    if calibrate and task.target_norms():
        _calibrate(task, targets, loader, recipe, accelerator)
    optimizer = make_optimizer(recipe, task)
    o = recipe.optim
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, o.warmup_steps, recipe.train.max_steps,
                                                            min_lr_rate=o.min_lr_ratio)
    if isinstance(dataset, IterableDataset):
        # Streaming sources shard themselves over processes; Accelerate's batch dispatcher would read rank 0's
        # shards only and cannot carry caption strings. The loop moves their batches to the device instead.
        task, optimizer, scheduler = accelerator.prepare(task, optimizer, scheduler)
    else:
        task, optimizer, loader, scheduler = accelerator.prepare(task, optimizer, loader, scheduler)
    return Run(recipe, out, accelerator, task, optimizer, scheduler, loader, targets, teacher_info, desc, dataset,
               sizes=sizes_setter)


def run_training(recipe: Recipe, out_dir: str | os.PathLike, *, resume: bool = False, stop_at: int | None = None,
                 teacher=None, show_progress: bool = True) -> Path:
    """Train from `recipe` into `out_dir`; returns the final student checkpoint directory (pretraining: the
    `Tipsv2Model` directory), or the last checkpoint's student when `stop_at` ends the run early.

    resume: continue the run in `out_dir` from its last checkpoint (the recipe must be unchanged).
    stop_at: stop (with a checkpoint) after this optimizer step, e.g. for a time-limited job.
    teacher: an already-loaded `Teacher` instead of `recipe.teacher.spec`.
    """
    out = Path(out_dir)
    check_rules(recipe)  # a recipe built in code, not loaded, meets them too
    if stop_at is not None and stop_at < 1:
        raise UserError(f"--stop-at {stop_at}; expected a step >= 1")
    accelerator = make_accelerator(recipe, out)
    lock = OutputLock(out)  # taken once, by the main process, before any process writes
    try:
        # The main process alone opens the run directory; the others write nothing before it is done.
        processes = Processes(accelerator.process_index, accelerator.num_processes)
        checkpoint = processes.main_first(lambda: open_run_dir(lock, recipe, out, resume))
        return _train(recipe, out, accelerator, checkpoint, stop_at=stop_at, teacher=teacher,
                      show_progress=show_progress)
    finally:
        lock.release()


def _train(recipe: Recipe, out: Path, accelerator: Accelerator, checkpoint: Path | None, *, stop_at: int | None,
           teacher, show_progress: bool) -> Path:
    run = build_run(recipe, out, accelerator, calibrate=checkpoint is None, teacher=teacher)
    progress = load_checkpoint(run, checkpoint) if checkpoint else Progress()
    if accelerator.is_main_process:
        write_run_start(out, recipe, run.unwrapped.target_norms(), progress.step)
    with writing(out / "logs"):  # the TensorBoard tracker creates its event file and writes the recipe at once
        accelerator.init_trackers(run.desc, config=flat_recipe(recipe))
    t = recipe.train
    log.info("%s %s -> %s: %d steps, batch %d (%d per process x %d processes x %d accumulation)", run.desc,
             run.teacher.get("spec") or "(self)", ", ".join(s.name for s in recipe.run_students), t.max_steps,
             t.batch_size, per_process_batch(recipe, accelerator.num_processes), accelerator.num_processes, t.grad_accum_steps)
    line, scalars = data_summary(recipe, run.dataset)
    log.info(line)
    accelerator.log(scalars, step=progress.step)
    start, first_step = time.perf_counter(), progress.step
    with logging_redirect_tqdm():  # the loop's log lines (data, checkpoints) go above tqdm's bar, not onto it
        train_loop(run, progress, stop_at=stop_at, show_progress=show_progress)
    finished = progress.step >= t.max_steps
    final = out / STUDENT
    if accelerator.is_main_process and finished:
        save_exports(run, final, progress.step)
        if recipe.is_pretraining:
            export_student(final, "hf", out / PRETRAINED_MODEL)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    result = (out / PRETRAINED_MODEL if recipe.is_pretraining else final) if finished else checkpoints(out)[-1] / STUDENT
    seconds = time.perf_counter() - start
    log.info("done: steps %d-%d in %.0f s (%.1f images/s); %s: %s", first_step + 1, progress.step, seconds,
             (progress.step - first_step) * t.batch_size / max(seconds, 1e-9),
             "model" if finished else "stopped; resume with --resume, latest student", result)
    return result


def data_summary(recipe: Recipe, dataset) -> tuple[str, dict[str, int]]:
    """What the run will read, before its first step: images, captions per granularity, epochs; as a log line
    and as tracker scalars."""
    t = recipe.train
    images = t.max_steps * t.batch_size
    if isinstance(dataset, IterableDataset):
        return (f"data: {recipe.data.source} (streaming shards); {t.max_steps} steps x {t.batch_size} = {images} "
                "images", {})
    counting = getattr(dataset, "caption_counts", None)  # a dataset of the caller's own may not count
    captions = counting() if counting else {}
    keys = (", ".join(f"{key} {n}" for key, n in captions.items()) if counting else ", ".join(_caption_keys(dataset))
            ) or "none (image-only)"
    line = (f"data: {recipe.data.source}, {len(dataset)} images, captions: {keys}; {t.max_steps} steps x "
            f"{t.batch_size} = {images} images = {images / len(dataset):.1f} epochs")
    return line, {"data/images": len(dataset), **{f"data/captions/{key}": n for key, n in captions.items()}}
