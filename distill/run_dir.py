"""The run directory: its layout, its checkpoints and the checks that open it for a new run or a resume.

    OUT/recipe.yaml               the recipe, written before the first step
    OUT/metrics.jsonl             one line per logged step (truncated back to the checkpoint on resume)
    OUT/target_norm.safetensors   the target statistics, when the recipe standardises targets
    OUT/logs/                     TensorBoard
    OUT/checkpoints/step_N/       Accelerate's training state, `trainer_state.json.<process>`, plain students
                                  (`student/`), the recipe, and the size of every file (`sizes.json`)
    OUT/student[/<name>]          the final students; pretraining also writes OUT/model (a `Tipsv2Model`)

Checkpoints are built in a temp dir and renamed into place; `sizes.json` lets `--resume` tell a checkpoint
damaged later (a copy cut short, a truncated file) and fall back to the one before.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from accelerate.utils import load
from safetensors import safe_open

from distill.config import Recipe, dump_recipe, recipe_to_dict, save_recipe
from distill.recipe_loader import recipe_from_dict
from common.atomic import share_tree, temp_name, write_atomic
from common.errors import UserError, writing
from common.jsonl import json_record
from common.faults import crash_point
from common.lock import OutputLock

if TYPE_CHECKING:
    from distill.train import Run

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
METRICS = "metrics.jsonl"
SIZES = "sizes.json"
RECIPE = "recipe.yaml"
# What only a training run writes at its top level (its `recipe.yaml` comes first, before any step).
RUN_MARKERS = (RECIPE, METRICS, CHECKPOINTS)
STUDENT = "student"
PRETRAINED_MODEL = "model"
TARGET_NORM = "target_norm.safetensors"



@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this process consumed in `epoch`




# ---------------------------------------------------------------- opening


def open_run_dir(lock: OutputLock, recipe: Recipe, out: Path, resume: bool) -> Path | None:
    """Locks the run directory (which removes the temps of killed writers), then checks it."""
    lock.acquire()
    return check_run_dir(recipe, out, resume)


def check_run_dir(recipe: Recipe, out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a new run): the newest whole one, older ones beyond
    `train.keep_checkpoints` removed."""
    existing = checkpoints(out)
    if resume and not existing:
        raise UserError(f"--resume: no checkpoint in {out / CHECKPOINTS}; start the run without --resume")
    final = PRETRAINED_MODEL if recipe.is_pretraining else STUDENT
    if not resume and (existing or (out / final).exists()):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not resume:
        return None
    checkpoint = latest_usable_checkpoint(out)
    check_resumable(checkpoint, recipe)
    prune_checkpoints(out, recipe.train.keep_checkpoints, checkpoint)
    return checkpoint


def check_resumable(checkpoint: Path, recipe: Recipe) -> None:
    saved = recipe_to_dict(recipe_from_dict(yaml.safe_load((checkpoint / RECIPE).read_text()),
                                            str(checkpoint / RECIPE)))
    current = recipe_to_dict(recipe)

    def diff(a, b, prefix=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [prefix.rstrip(".")]

    changed = diff(saved, current)
    if changed:
        raise UserError(f"--resume needs the recipe the run started with; changed: {', '.join(changed)} "
                        f"(see {checkpoint / RECIPE})")


def write_run_start(out: Path, recipe: Recipe, norms: dict, step: int) -> None:
    """What the main process writes before the first step: the recipe, the target statistics (if any: the
    primary teacher's in `target_norm.safetensors`, another teacher's in `target_norm.NAME.safetensors`), and
    the metrics cut back to `step` (0 for a new run)."""
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out / RECIPE)
    primary = recipe.run_teachers[0].name if recipe.run_teachers else None
    for name, norm in norms.items():
        norm.save(out / (TARGET_NORM if name == primary else TARGET_NORM.replace(".", f".{name}.", 1)))
    truncate_metrics(out / METRICS, step)


def append_metrics(out: Path, record: dict) -> None:
    with writing(out / METRICS), open(out / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


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
        save_exports(run, tmp / STUDENT, progress.step)
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
        record = json_record(line, "step", int)
        if record is None:
            torn.append(number)
        elif record["step"] <= step:
            keep.append(line)
    if torn:
        log.warning("%s: dropped %d line(s) that do not parse (line %s), e.g. torn by a kill", path, len(torn),
                    ", ".join(map(str, torn)))
    write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))
