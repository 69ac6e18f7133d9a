"""Run TIPSv2 stage-1 pretraining from a recipe: the distill recipe sections + a `pretrain:` section.

The run uses the distill engine (Accelerator set-up, data loader with per-sample crops, optimizer groups,
cosine schedule, and `train_loop` with its masks, caption draws and metric logging) and ends with a real
`Tipsv2Model` + tokenizer written by `save_pretrained` in `OUT/model` (through the student exporter),
which `teachers.load_teacher(OUT/model)` loads.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from pathlib import Path

import yaml
from accelerate.utils import set_seed
from transformers import AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

from distill.config import (TeacherConfig, apply_overrides, build_section, dump_recipe, recipe_from_dict,
                            resolve_recipe_path, Recipe)
from distill.data import build_dataset
from distill.data.scenes import SceneDataset, caption_corpus
from distill.pretrain import PretrainConfig, TipsPretrainer
from distill.train import Progress, make_accelerator, make_loader, make_optimizer, micro_batch_size, train_loop
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
    return PretrainRecipe(recipe, build_section(PretrainConfig, section, "pretrain"))


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
    accelerator = make_accelerator(recipe, out)
    micro = micro_batch_size(recipe, accelerator.num_processes)
    set_seed(recipe.seed)
    dataset = build_dataset(recipe.data.source, **recipe.data.options)
    s = recipe.student
    student = build_student(s.name, text=True, init=s.init, image_size=s.image_size,
                            tokenizer=None if s.init else _tokenizer(run, dataset),
                            gradient_checkpointing=recipe.train.gradient_checkpointing)
    objective = TipsPretrainer(student, run.pretrain, recipe.loss).to(accelerator.device)
    optimizer = make_optimizer(recipe, objective)
    t, o = recipe.train, recipe.optim
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, o.warmup_steps, t.max_steps,
                                                            min_lr_rate=o.min_lr_ratio)
    loader = make_loader(dataset, recipe, micro)
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(objective)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(dump_pretrain_recipe(run))
    log.info("pretraining %s (%s EMA, patch loss on %s tokens): %d steps, batch %d", s.name, run.pretrain.ema,
             recipe.loss.patch_tokens, t.max_steps, t.batch_size)

    # No teacher targets, and no checkpoints: saving one records a teacher, and pretraining cannot resume.
    state = Progress()
    train_loop(recipe, accelerator, objective, optimizer, scheduler, loader, state, out,
               after_step=unwrapped.after_optimizer_step, desc="pretrain", show_progress=progress)
    final = out / "model"
    if accelerator.is_main_process:
        tmp = out / ".student-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.student.save(tmp, metadata={"pretrain_recipe": yaml.safe_load(dump_pretrain_recipe(run)),
                                              "step": state.step})
        export_student(tmp, "hf", final)
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final
