"""Run TIPSv2 stage-1 pretraining from a recipe: the distill recipe sections + a `pretrain:` section.

The run uses the distill engine's pieces (Accelerator set-up, data loader with per-sample crops, masks
and caption draws, optimizer groups, cosine schedule, metric logging) and ends with a real
`Tipsv2Model` + tokenizer written by `save_pretrained` in `OUT/model` (through the student exporter),
which `teachers.load_teacher(OUT/model)` loads.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

from distill.captions import sample_captions
from distill.config import (TeacherConfig, _build, apply_overrides, dump_recipe, recipe_from_dict,
                            resolve_recipe_path, Recipe)
from distill.data import build_dataset
from distill.data.scenes import SceneDataset, caption_corpus
from distill.masking import sample_masks
from distill.pretrain import PretrainConfig, TipsPretrainer
from distill.train import _accelerator, _loader, _log_step, _micro_batch, _optimizer
from teachers.errors import UserError
from teachers.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

# The distill recipe validator insists on a teacher; pretraining has none, so this placeholder stands in.
NO_TEACHER = "(none: pretraining)"
TOKENIZER_VOCAB = 256
TOKENIZER_CORPUS_SCENES = 2000


@dataclasses.dataclass
class PretrainRecipe:
    recipe: Recipe  # student (the architecture trained), data, loss (masking, caption weights), optim, train
    pretrain: PretrainConfig


def pretrain_recipe_from_dict(data: dict, overrides: list[str] = (), source: str = "recipe") -> PretrainRecipe:
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a YAML mapping of recipe sections, got {type(data).__name__}")
    data = copy.deepcopy(data)
    section = data.pop("pretrain", None) or {}
    if data.get("teacher"):
        raise UserError(f"{source}: a pretraining recipe has no 'teacher' section (the model is its own teacher)")
    data["teacher"] = {"spec": NO_TEACHER}
    recipe = recipe_from_dict(data, source)
    ours = [o for o in overrides if o.split("=", 1)[0].startswith("pretrain.")]
    recipe = apply_overrides(recipe, [o for o in overrides if o not in ours])
    for item in ours:
        key, _, raw = item.partition("=")
        section[key.removeprefix("pretrain.")] = yaml.safe_load(raw)
    return PretrainRecipe(recipe, _build(PretrainConfig, section, "pretrain"))


def load_pretrain_recipe(name_or_path: str, overrides: list[str] = ()) -> PretrainRecipe:
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return pretrain_recipe_from_dict(data, list(overrides), str(path))


def dump_pretrain_recipe(run: PretrainRecipe) -> str:
    data = yaml.safe_load(dump_recipe(dataclasses.replace(run.recipe, teacher=TeacherConfig())))
    data.pop("teacher")
    data["pretrain"] = dataclasses.asdict(run.pretrain)
    return yaml.safe_dump(data, sort_keys=False)


def _tokenizer(run: PretrainRecipe, dataset):
    if run.recipe.student.tokenizer:
        return AutoTokenizer.from_pretrained(run.recipe.student.tokenizer)
    if isinstance(dataset, SceneDataset):
        return build_tokenizer(caption_corpus(TOKENIZER_CORPUS_SCENES, seed=dataset.seed, size=dataset.size),
                               vocab_size=TOKENIZER_VOCAB)
    raise UserError("pretraining on this data needs a tokenizer: set student.tokenizer=DIR (a tokenizer directory)")


def run_pretrain(run: PretrainRecipe, out_dir, progress: bool = True) -> Path:
    """Pretrain into `out_dir`; returns `out_dir/model` (Tipsv2Model + tokenizer, `save_pretrained` layout)."""
    from students import build_student
    from students.export import export_student

    recipe, out = run.recipe, Path(out_dir)
    if (out / "model").exists():
        raise UserError(f"{out} already holds a pretrained model; choose another --out")
    accelerator = _accelerator(recipe, out)
    micro = _micro_batch(recipe, accelerator.num_processes)
    set_seed(recipe.seed)
    dataset = build_dataset(recipe.data.source, **recipe.data.options)
    s = recipe.student
    student = build_student(s.name, text=True, init=s.init, image_size=s.image_size,
                            tokenizer=None if s.init else _tokenizer(run, dataset),
                            gradient_checkpointing=recipe.train.gradient_checkpointing)
    objective = TipsPretrainer(student, run.pretrain, recipe.loss).to(accelerator.device)
    optimizer = _optimizer(recipe, objective)
    t, o = recipe.train, recipe.optim
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, o.warmup_steps, t.max_steps,
                                                            min_lr_rate=o.min_lr_ratio)
    loader = _loader(dataset, recipe, micro)
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(objective)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(dump_pretrain_recipe(run))
    log.info("pretraining %s (%s EMA, patch loss on %s tokens): %d steps, batch %d", s.name, run.pretrain.ema,
             recipe.loss.patch_tokens, t.max_steps, t.batch_size)

    grid = (s.image_size // student.patch_size,) * 2
    step, epoch, tick = 0, 0, time.perf_counter()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
    bar = tqdm(total=t.max_steps, disable=not (progress and accelerator.is_local_main_process), desc="pretrain",
               dynamic_ncols=True)
    objective.train()
    while step < t.max_steps:
        loader.set_epoch(epoch)
        for batch in loader:
            indices = batch["index"]
            masks = sample_masks(indices, step, recipe.seed, grid, recipe.loss.mask_ratio,
                                 recipe.loss.mask_probability, recipe.loss.mask_shape)
            if masks is None:
                masks = torch.zeros(len(indices), grid[0] * grid[1], dtype=torch.bool)
            captions = sample_captions(batch["captions"], indices, step, recipe.seed,
                                       recipe.loss.contrastive.caption_weights)
            with accelerator.accumulate(objective):
                output = objective(batch["pixels"], masks.to(accelerator.device), None, captions)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and o.grad_clip > 0:
                    accelerator.clip_grad_norm_(objective.parameters(), o.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            for key, value in output.parts.items():
                sums[key] += value / t.grad_accum_steps
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            unwrapped.after_optimizer_step(step, t.max_steps)
            if step % t.log_every == 0 or step == t.max_steps:
                elapsed = time.perf_counter() - tick
                _log_step(accelerator, sums, step, scheduler.get_last_lr()[0],
                          t.batch_size * t.log_every / max(elapsed, 1e-9), out, bar)
                tick = time.perf_counter()
            sums.clear()
            bar.update(1)
            if step >= t.max_steps:
                break
        epoch += 1
    bar.close()
    final = out / "model"
    if accelerator.is_main_process:
        tmp = out / ".student-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.student.save(tmp, metadata={"pretrain_recipe": yaml.safe_load(dump_pretrain_recipe(run)),
                                              "step": step})
        export_student(tmp, "hf", final)
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final
