"""Every command and code block of the README and of the docs pages runs as written, in order, on micro data.

The order is the README's, then the pages' in the navigation of `mkdocs.yml`. The blocks share one working directory,
as a user following the README and then the docs would: outputs of earlier blocks feed later ones, across pages. It
holds tiny stand-ins in the real layouts: `google/tipsv2-*` directories (local directories win over hub ids),
`runs/b14/student`, `photos/`, `models/` captioners and `data/` datasets (ADE20K, VOC, NYUv2, class folders).
A block marked `<!-- readme: skip REASON -->` is reported as skipped with its reason (only the network, a GPU, the
test command itself, or replacing the installed package); `<!-- readme: with ARGS -->` appends ARGS (recipe
overrides, `--iterations N`) to each `tipsdistill` command of its block, to keep the runs short. `pip install` steps
are the CI's own.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.cli import main
from test_docs import pages

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!-- readme: (skip|with) (.*?) -->$")


def page_blocks(page: str) -> list[tuple[str, int, str, str, tuple[str, str] | None]]:
    """(page, line, language, code, directive) of every ```bash / ```python block of one page, in order."""
    lines, blocks, i = (ROOT / page).read_text().splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, language = i, fence.group(1)
        i += 1
        body = []
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if language in ("bash", "python"):
            blocks.append((page, start + 1, language, "\n".join(body), _directive(lines, start)))
    return blocks


def _directive(lines: list[str], fence: int) -> tuple[str, str] | None:
    """The `<!-- readme: ... -->` line above a block (other HTML comments may stand between)."""
    j = fence - 1
    while j >= 0 and lines[j].startswith("<!--"):
        found = DIRECTIVE.match(lines[j])
        if found:
            return found.group(1), found.group(2)
        j -= 1
    return None


def commands(code: str) -> list[str]:
    """Logical command lines: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# ------------------------------------------------------------------ the working directory


def _tiny_tipsv2(out: Path, tokenizer, seed: int) -> None:
    from transformers import Tipsv2Model

    from conftest import tiny_tipsv2_config

    torch.manual_seed(seed)
    model = Tipsv2Model(tiny_tipsv2_config(vocab_size=len(tokenizer), depth=4))  # 4 blocks: the DPT head reads 4
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _photos(root: Path, count: int, captions: bool = True) -> None:
    rng = np.random.default_rng(len(str(root)))
    root.mkdir(parents=True)
    colours = ["red", "green", "blue", "yellow"]
    for i in range(count):
        colour = colours[i % 4]
        pixels = np.clip(np.array({"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
                                   "yellow": (235, 210, 40)}[colour]) + rng.integers(-30, 30, (48, 56, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{colour}{i}.jpg", quality=90)
        if captions:
            (root / f"{colour}{i}.txt").write_text(f"a {colour} photo")


def _class_folders(root: Path) -> None:
    for split in ("train", "val"):
        for colour in ("red", "green"):
            _photos(root / split / colour, 3 if split == "train" else 2, captions=False)


def _voc(root: Path) -> None:
    from test_eval_readers import _image, _labels, _mask

    voc = root / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, names in (("train", ["a", "b"]), ("val", ["c", "d"])):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names))
        for k, name in enumerate(names):
            _image(voc / "JPEGImages" / f"{name}.jpg", seed=k)
            _mask(voc / "SegmentationClass" / f"{name}.png", _labels([0, 1 + k, 15, 255]), mode="P")


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_tokenizer):
    """The README's and the docs' world, built once: everything their commands name that no block creates."""
    from students import build_student
    from test_caption import build_florence2, build_paligemma
    from test_eval_depth import _labeled_mat
    from test_eval_dense import _ade20k

    root = tmp_path_factory.mktemp("readme")
    for seed, name in enumerate(("tipsv2-g14", "tipsv2-l14", "tipsv2-b14")):
        _tiny_tipsv2(root / "google" / name, tiny_tokenizer, seed)
    torch.manual_seed(0)
    # 4 blocks, as the DPT head reads 4; the stand-in teacher's tokenizer, with a text tower of the student's width
    build_student("tipsv2-micro", teacher_width=32, tokenizer=tiny_tokenizer, image_size=32).save(root / "runs" / "b14" / "student")
    _photos(root / "photos", 8)
    _photos(root / "data" / "captioned", 6)
    _photos(root / "data" / "images", 4, captions=False)
    _class_folders(root / "data" / "imagenet")
    _ade20k(root / "data" / "ADEChallengeData2016")
    _voc(root / "data" / "VOCdevkit")
    _labeled_mat(root / "data")
    build_florence2(root / "models" / "florence-2-large")
    build_paligemma(root / "models" / "paligemma2-3b-mix-448")
    return root


@contextlib.contextmanager
def cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


# ------------------------------------------------------------------ running a block


SHELL = re.compile(r"[;|&<>$]|\bfor\b|\bdo\b")


def run_block(code: str, extra: list[str]) -> None:
    """Plain command lines (`&&` chains split, `pip install` steps dropped) run one by one; a block with real
    shell syntax (loops, pipes, background jobs, redirections) runs whole, in bash."""
    lines = [[step for step in re.split(r"\s*&&\s*", line) if not step.startswith("pip ")] for line in commands(code)]
    if any(SHELL.search(step) for steps in lines for step in steps):
        return run_bash("\n".join(" && ".join(steps) for steps in lines if steps), extra)
    for step in (step for steps in lines for step in steps):
        run_command(step, extra)


def run_command(line: str, extra: list[str]) -> None:
    """`tipsdistill ...` and `python -c ...` run in this process (no second import of torch), the rest in bash."""
    argv = shlex.split(line, comments=True)
    if argv[0] == "tipsdistill":
        assert main(argv[1:] + extra) == 0, line
    elif argv[:2] == ["python", "-c"]:
        exec(compile(argv[2], "<README python -c>", "exec"), {"__name__": "__main__"})
    else:
        run_bash(line, extra)


def run_bash(script: str, extra: list[str]) -> None:
    if extra:  # the shortening arguments go after every tipsdistill command
        script = re.sub(r"(tipsdistill\b[^;&|\n]*?)(\s*(?:&|;|$))",
                        lambda m: f"{m.group(1)} {shlex.join(extra)}{m.group(2)}", script, flags=re.M)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", f"set -e\n{script}\nwait"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{script}\n{done.stderr[-3000:]}"


BLOCKS = [block for page in pages() for block in page_blocks(page)]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{page} line {line}" for page, line, *_ in BLOCKS])
def test_readme_block_runs_as_written(block, home):
    page, line, language, code, directive = block
    if directive and directive[0] == "skip":
        pytest.skip(directive[1])
    extra = shlex.split(directive[1]) if directive and directive[0] == "with" else []
    with cwd(home):
        if language == "python":
            exec(compile(code, f"<{page} line {line}>", "exec"), {"__name__": "__main__"})
        else:
            run_block(code, extra)


def test_every_skip_names_a_reason_the_rules_allow():
    allowed = ("GPU", "network", "test command itself", "packaged teacher")
    for page, line, _, _, directive in BLOCKS:
        if directive and directive[0] == "skip":
            assert any(word in directive[1] for word in allowed), f"{page} line {line}: {directive[1]}"
