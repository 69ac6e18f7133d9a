"""One writer per output, one-line errors for bad input and a full disk, nothing left behind after a kill."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file, save_file

from distill.cli import main
from distill.data import build_dataset
from distill.data.clean import BadSample, decode_image
from distill.run_dir import CHECKPOINTS, METRICS
from common.atomic import TMP_PREFIX, atomic_directory, write_atomic
from common.errors import UserError
from common.lock import LOCK_NAME, OutputLock
from test_engine_train import TINY, metrics, overriding

COMMANDS = ("distill", "pretrain", "cache", "eval", "export", "caption")
BESIDE = {"export", "caption"}  # a directory replaced by a rename, a file: locked beside
CLI = [sys.executable, "-c", "import sys; from distill.cli import main; sys.exit(main())"]


def distill_args(teacher, *overrides: str) -> list[str]:
    return ["distill", "--recipe", "micro", f"teacher.spec={teacher}",
            *overriding([*TINY, "batch_size=8"], *overrides)]


def command(name: str, teacher, root: Path) -> tuple[list[str], Path]:
    """`name` with arguments that pass parsing, and its output in `root`."""
    out = root / ("metadata.jsonl" if name == "caption" else "out")
    argv = {
        "distill": distill_args(teacher),
        "pretrain": ["pretrain"],
        "cache": ["cache", "--teacher", str(teacher), "--data", "scenes", "--augmentations", "1"],
        "eval": ["eval", "--model", f"t={teacher}", "--task", "zeroshot-seg", "--dataset", "scenes"],
        "export": ["export", str(teacher), "--format", "hf"],
        "caption": ["caption", "--data", "scenes", "--captioner", str(teacher)],
    }[name]
    return [*argv, "--out", str(out)], out


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith((TMP_PREFIX, ".tmp")))


# ---------------------------------------------------------------- one process per output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_an_output_in_use_naming_the_holder(name, tiny_tipsv2_dir, tmp_path, capsys):
    argv, out = command(name, tiny_tipsv2_dir, tmp_path)
    with OutputLock(out, beside=name in BESIDE):
        assert main(argv) == 2
    line = error_line(capsys)
    assert f"in use by tipsdistill pid {os.getpid()} on {socket.gethostname()} (started " in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # released, and the directory it made removed


def test_a_live_holder_is_refused_and_a_killed_one_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.lock import OutputLock; "
                               "OutputLock(sys.argv[1]).acquire(); print(flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        with pytest.raises(UserError, match=f"in use by tipsdistill pid {holder.pid} on {socket.gethostname()}"):
            OutputLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with OutputLock(out):
        assert f"taking over the stale lock of tipsdistill pid {holder.pid}" in caplog.text
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert list(out.iterdir()) == []


def test_a_lock_left_on_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 7, "host": "elsewhere", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(UserError, match=f"pid 7 on elsewhere .* delete {re.escape(str(tmp_path / LOCK_NAME))}"):
        OutputLock(tmp_path).acquire()


# ---------------------------------------------------------------- outputs that cannot be written


@pytest.fixture
def read_only(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    # root ignores permission bits; the immutable attribute stops it.
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no way to make a directory read-only")
    yield directory
    subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_names_a_read_only_output(name, tiny_tipsv2_dir, read_only, capsys):
    argv, out = command(name, tiny_tipsv2_dir, read_only)
    assert main(argv) == 2
    line = error_line(capsys)
    assert f"cannot write {out}: " in line and ("Permission denied" in line or "not permitted" in line)


@pytest.mark.parametrize("name", ["distill", "pretrain", "cache", "eval"])
def test_an_output_that_is_a_file_is_refused_before_any_work(name, tiny_tipsv2_dir, tmp_path, capsys):
    argv, out = command(name, tiny_tipsv2_dir, tmp_path)
    out.write_text("mine")
    assert main(argv) == 2
    assert f"output {out} exists and is not a directory" in error_line(capsys)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save
    Exception("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
])
def test_a_full_disk_names_the_file_and_keeps_its_old_content(tmp_path, failure):
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def write(tmp: Path):
        tmp.write_text("half")
        raise failure

    with pytest.raises(UserError, match=f"cannot write {target}: "):
        write_atomic(target, write)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    export = tmp_path / "export"
    with pytest.raises(UserError, match=f"cannot write {export}: "):  # the output, not the temp inside it
        with atomic_directory(export) as tmp:
            write_atomic(tmp / "weights.npz", write)
    assert not export.exists() and leftovers(tmp_path) == []


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one(tiny_tipsv2_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*distill_args(tiny_tipsv2_dir, "max_steps=3", "checkpoint_every=1"), "--out", str(out)]
    save_state = Accelerator.save_state

    def full_disk_at_step_2(self, output_dir, **kwargs):
        if output_dir.endswith("step_00000002"):
            (Path(output_dir) / "optimizer.bin").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_disk_at_step_2)
    assert main(argv) == 2
    assert f"cannot write {out / CHECKPOINTS / 'step_00000002'}: the write stopped short" in error_line(capsys)
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == ["step_00000001"]
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0  # from the checkpoint that survived
    assert [m["step"] for m in metrics(out)] == [1, 2, 3] and leftovers(out) == []


def test_a_full_disk_as_the_tensorboard_tracker_starts_is_one_line(tiny_tipsv2_dir, tmp_path, monkeypatch, capsys):
    from accelerate.tracking import TensorBoardTracker

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "__init__", full_disk)
    out = tmp_path / "run"
    assert main([*distill_args(tiny_tipsv2_dir, "max_steps=1"), "--out", str(out)]) == 2
    assert f"cannot write {out / 'logs'}: No space left on device" in error_line(capsys)


def test_a_full_disk_as_caption_closes_its_output_is_one_line(tmp_path, monkeypatch):
    import builtins

    from distill.captioning import job

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    out = tmp_path / "captions.jsonl"
    dataset = job.open_images(f"folder:{tmp_path}", {}, out)
    settings = job.CaptionSettings()
    work = job.plan(dataset, out, {}, ("short",), settings)

    class Captioner:
        def caption(self, images, prompt):
            return ["a black square"] * len(images)

    class WriteBackFails:  # the file system reports the lost write when the file is closed
        def __init__(self, *args):
            self.file = builtins.open(*args)
            self.name, self.write, self.flush, self.fileno = (self.file.name, self.file.write, self.file.flush,
                                                              self.file.fileno)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(job, "open", WriteBackFails, raising=False)
    with pytest.raises(UserError, match=f"cannot write {re.escape(str(out))}: No space left on device"):
        job.caption_images(dataset, work, Captioner(), {"short": "<CAPTION>"}, out, settings)


# ---------------------------------------------------------------- damage and kills


def test_resume_falls_back_from_a_truncated_checkpoint_and_drops_a_torn_metrics_line(tiny_tipsv2_dir, tmp_path,
                                                                                     capsys, caplog):
    args = ("max_steps=4", "checkpoint_every=1", "keep_checkpoints=3")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*distill_args(tiny_tipsv2_dir, *args), "--out", str(straight)]) == 0
    assert main([*distill_args(tiny_tipsv2_dir, *args), "--out", str(split), "--stop-at", "3"]) == 0
    weights = split / CHECKPOINTS / "step_00000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with open(split / METRICS, "a") as f:
        f.write('{"step": 4, "lo')  # torn by a kill
    # What a kill during the final student save and during a checkpoint leaves.
    (split / f"{TMP_PREFIX}student.0123abcd").mkdir()
    (split / CHECKPOINTS / f"{TMP_PREFIX}step_00000004").mkdir()
    assert main(["distill", "--out", str(split), "--resume"]) == 0
    assert "step_00000003 is damaged (model.safetensors has 1000 bytes" in caplog.text
    assert "dropped 1 line(s) that do not parse (line 4)" in caplog.text
    a, b = (load_file(run / "student" / "model.safetensors") for run in (straight, split))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in metrics(split)] == [m["loss"] for m in metrics(straight)]
    assert sorted(p.name for p in (split / CHECKPOINTS).iterdir()) == ["step_00000002", "step_00000003",
                                                                      "step_00000004"]
    assert leftovers(split) == [] and not (split / LOCK_NAME).exists()


def test_resume_refuses_a_checkpoint_whose_state_is_a_pickle_and_falls_back(tiny_tipsv2_dir, tmp_path, caplog):
    import pickle

    out = tmp_path / "run"
    args = distill_args(tiny_tipsv2_dir, "max_steps=3", "checkpoint_every=1", "keep_checkpoints=3")
    assert main([*args, "--out", str(out), "--stop-at", "2"]) == 0
    checkpoint = out / CHECKPOINTS / "step_00000002"
    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps({"state": print}))  # a pickle naming a callable
    sizes = json.loads((checkpoint / "sizes.json").read_text())
    (checkpoint / "sizes.json").write_text(json.dumps({**sizes, "optimizer.bin": (checkpoint / "optimizer.bin")
                                                       .stat().st_size}))
    caplog.set_level("INFO", logger="distill.run_dir")
    assert main(["distill", "--out", str(out), "--resume"]) == 0
    assert "step_00000002 is damaged (optimizer.bin is not a torch.save file of plain tensors" in caplog.text
    assert "resumed from " + str(out / CHECKPOINTS / "step_00000001") in caplog.text
    assert [m["step"] for m in metrics(out)] == [1, 2, 3]


def test_a_kill_right_after_a_checkpoint_rename_keeps_keep_checkpoints(tiny_tipsv2_dir, tmp_path, caplog):
    out = tmp_path / "run"
    argv = [*distill_args(tiny_tipsv2_dir, "max_steps=3", "checkpoint_every=1", "keep_checkpoints=1"),
            "--out", str(out)]
    killed = subprocess.run([*CLI, *argv], capture_output=True,
                            env={**os.environ, "TIPSDISTILL_CRASH_AT": "checkpoint-renamed:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == ["step_00000002", "step_00000003"]
    assert main(["distill", "--out", str(out), "--resume"]) == 0
    assert "taking over the stale lock" in caplog.text
    assert sorted(p.name for p in (out / CHECKPOINTS).iterdir()) == ["step_00000003"]
    assert (out / "student" / "model.safetensors").is_file() and not (out / LOCK_NAME).exists()


def test_an_export_killed_between_its_renames_gets_the_old_one_back(tiny_tokenizer, tmp_path, caplog):
    import students

    students.build_student("tipsv2-micro", tokenizer=tiny_tokenizer).save(tmp_path / "student")
    out = tmp_path / "timm"
    out.mkdir()
    (out / "old.txt").write_text("the previous export")
    argv = ["export", str(tmp_path / "student"), "--format", "timm", "--out", str(out), "--overwrite"]
    killed = subprocess.run([*CLI, *argv], capture_output=True,
                            env={**os.environ, "TIPSDISTILL_CRASH_AT": "output-moved-aside:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not out.exists()
    with OutputLock(out, beside=True):
        assert (out / "old.txt").read_text() == "the previous export"
        assert f"{out}: restored the previous output from {tmp_path / TMP_PREFIX}timm." in caplog.text
    assert leftovers(tmp_path) == []
    assert main(argv) == 0 and (out / "model.safetensors").is_file() and not (out / "old.txt").exists()


def test_killed_writers_temps_go_and_the_users_own_files_stay(tmp_path):
    target = tmp_path / "out" / "shard.safetensors"
    target.parent.mkdir()

    def write(tmp: Path):
        # Anything a writer puts beside its file (safetensors' own temp) lands in this tool's temp dir.
        assert tmp.parent.parent == target.parent and tmp.parent.name.startswith(TMP_PREFIX + target.name)
        save_file({"x": torch.zeros(2)}, tmp)

    write_atomic(target, write)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    run = tmp_path / "out"
    for stale in (f"{TMP_PREFIX}shard.safetensors.0123abcd/.tmpAb12Cd", f"sub/{TMP_PREFIX}step_00000002/x",
                  f"inner/{TMP_PREFIX}live.89abcdef/x", ".tmp-mine", "notes.tmp"):
        (run / stale).parent.mkdir(parents=True, exist_ok=True)
        (run / stale).write_text("x")
    (run / "inner" / LOCK_NAME).write_text("")  # another output inside this one: its holder tidies it
    with OutputLock(run):
        assert leftovers(run) == [".tmp-mine", f"inner/{TMP_PREFIX}live.89abcdef"]
    # Beside an output replaced by a rename: only that output's own temps.
    for name in (f"{TMP_PREFIX}hf.0123abcd", f"{TMP_PREFIX}hf.v2.0123abcd"):
        (tmp_path / name).mkdir()
    with OutputLock(tmp_path / "hf", beside=True):
        assert sorted(p.name for p in tmp_path.glob(TMP_PREFIX + "*")) == [f"{TMP_PREFIX}hf.v2.0123abcd"]


@pytest.mark.parametrize("damage", ["truncated", "pickled"])
def test_eval_of_a_model_folder_with_damaged_or_pickled_weights_is_one_line(damage, tiny_tipsv2_dir, tmp_path,
                                                                            capsys):
    import pickle
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_tipsv2_dir, model)
    weights = model / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
        (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": print}))
    assert main(["eval", "--model", f"m={model}", "--task", "zeroshot-seg", "--dataset", "scenes", "--out",
                 str(tmp_path / "eval")]) == 2
    line = error_line(capsys)
    assert str(model) in line and ("could not load the weights" if damage == "truncated" else "pickled") in line


def test_captions_keep_a_whole_last_record_without_its_newline_and_drop_a_torn_one(tmp_path, caplog):
    from distill.captioning.output import append_rows, read_written

    out = tmp_path / "metadata.jsonl"
    out.write_text('{"file_name": "a.png", "short": "a cat"}\n{"file_name": "b.png", "short": "a dog"}')
    assert read_written(out) == {"a.png": {"short"}, "b.png": {"short"}} and "torn" not in caplog.text
    with open(out, "ab") as file:
        append_rows(file, [{"file_name": "c.png", "short": "a cow"}])
    assert [json.loads(line)["file_name"] for line in out.read_text().splitlines()] == ["a.png", "b.png", "c.png"]
    with open(out, "a") as file:
        file.write('{"file_name": "d.png", "sh')
    assert set(read_written(out)) == {"a.png", "b.png", "c.png"} and "torn last line" in caplog.text
    assert out.read_text().endswith('"a cow"}\n')


# ---------------------------------------------------------------- bad input


def test_images_over_the_pixel_budget_are_skipped_from_their_header(tmp_path, monkeypatch):
    for name, size in (("a.png", (10, 10)), ("b.png", (30, 30)), ("c.png", (12, 12))):
        Image.new("RGB", size, "red").save(tmp_path / name)
    dataset = build_dataset(f"folder:{tmp_path}", max_image_pixels=200)
    events = [event for i in range(len(dataset)) for event in dataset[i].events]
    assert events == [("skipped/decompression_bomb", "b.png")]
    with pytest.raises(UserError, match="max_image_pixels=0"):
        build_dataset(f"folder:{tmp_path}", max_image_pixels=0)

    # The default budget is PIL's own limit, enforced also below twice it (where PIL only warns), from the
    # header: a truncated file over the budget is a bomb, not a truncated image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    over = (tmp_path / "b.png").read_bytes()
    (tmp_path / "d.png").unlink(missing_ok=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "d.png")  # over twice the limit: PIL's own error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for source in (over, over[:60], tmp_path / "d.png"):
            with pytest.raises(BadSample, match="decompression_bomb"):
                decode_image(source)
        assert decode_image(tmp_path / "a.png")[0].size == (10, 10)


@pytest.mark.parametrize("name, content, words", [
    ("metadata.csv", b"file_name,text\na.png,a cat\nb.png,a dog, and a cat\n",
     "metadata.csv line 3 has 3 fields, the header 2: quote fields"),
    ("metadata.csv", b"file_name,text\na.png,caf\xe9\n", "metadata.csv is not UTF-8 (byte 0xe9 on line 2)"),
    ("metadata.jsonl", b'{"file_name": "a.png"}\n{"file_name": "b.png", "text": "caf\xe9"}\n',
     "metadata.jsonl is not UTF-8 (byte 0xe9 on line 2)"),
])
def test_a_broken_caption_index_is_a_one_line_error(name, content, words, tiny_tipsv2_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for image in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(data / image)
    (data / name).write_bytes(content)
    assert main(["cache", "--teacher", str(tiny_tipsv2_dir), "--data", f"folder:{data}", "--out",
                 str(tmp_path / "cache"), "--augmentations", "1"]) == 2
    assert words in error_line(capsys)


@pytest.mark.parametrize("override, words", [
    ("teacher.image_size=36", "teacher view size 36 (teacher.image_size or a resolution phase) is not a multiple"),
    # A phase's teacher view is what the teacher sees, whatever its image_size (that sets the first phase's view).
    (("teacher.image_size=32", "train.resolution_phases=[{from_step: 1, student_size: 32, teacher_size: 36}]"),
     "teacher view size 36 (teacher.image_size or a resolution phase) is not a multiple"),
    ("seed=-1", "'seed'"),
    ("optim.lr=.nan", "'optim.lr'"),
])
def test_bad_recipe_values_fail_before_anything_is_written(override, words, tiny_tipsv2_dir, tmp_path, capsys):
    overrides = override if isinstance(override, tuple) else (override,)
    assert main([*distill_args(tiny_tipsv2_dir, *overrides), "--out", str(tmp_path / "run")]) == 2
    assert words in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_cache_reports_the_items_it_skipped(tiny_tipsv2_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for image in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(data / image)
    (data / "c.png").write_bytes(b"")
    assert main(["cache", "--teacher", str(tiny_tipsv2_dir), "--data", f"folder:{data}", "--out",
                 str(tmp_path / "cache"), "--augmentations", "1"]) == 0
    assert "data: 3 samples drawn; skipped 1 (empty_file 1: c.png)" in capsys.readouterr().out


def test_index_paths_outside_the_data_root_are_skipped_unless_allowed(tiny_tipsv2_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for image in (data / "a.png", tmp_path / "x.png"):
        Image.new("RGB", (8, 8), "red").save(image)
    names = ["a.png", "../x.png", str(tmp_path / "x.png"), "../../../../../../../../etc/passwd"]
    (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": name}) + "\n" for name in names))
    dataset = build_dataset(f"folder:{data}")
    events = [event for i in range(len(dataset)) for event, _ in dataset[i].events]
    assert events == ["skipped/outside_root"] * 3
    allowed = build_dataset(f"folder:{data}", allow_outside_root=True)
    assert [event for i in range(3) for event in allowed[i].events] == []
    assert main(["cache", "--teacher", str(tiny_tipsv2_dir), "--data", f"folder:{data}", "--out",
                 str(tmp_path / "cache"), "--augmentations", "1"]) == 0
    assert "skipped 2 (outside_root 2: ../x.png, " in capsys.readouterr().out  # x.png named twice, one file


@pytest.mark.parametrize("name", ["distill", "pretrain", "cache"])
def test_a_recipe_key_given_twice_is_refused_naming_it(name, tmp_path, capsys):
    # What the shell makes of an unquoted `data.source=folder:{a,b}`; and one key under two spellings.
    for twice, key in ((["data.source=folder:a", "data.source=folder:b"], "data.source"),
                       (["max_steps=2", "train.max_steps=3"], "train.max_steps")):
        extra = ["--augmentations", "1"] if name == "cache" else []
        assert main([name, "--recipe", "micro", *twice, *extra, "--out", str(tmp_path / "out")]) == 2
        assert f"recipe key '{key}' is given twice ({twice[0]!r}, {twice[1]!r})" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cache_refuses_a_zero_batch_and_a_directory_that_is_not_a_cache(tiny_tipsv2_dir, tmp_path, capsys):
    argv = ["cache", "--teacher", str(tiny_tipsv2_dir), "--data", "scenes", "--data-option", "length=2",
            "--augmentations", "1", "--out", str(tmp_path)]
    assert main([*argv, "--batch-size", "0"]) == 2
    assert "--batch-size 0 must be at least 1" in error_line(capsys)
    for name in ("notes.txt", ".tmp-mine"):
        (tmp_path / name).write_text("mine")
    assert main(argv) == 2
    assert f"--out {tmp_path} is a non-empty directory without a cache" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-mine", "notes.txt"]


def test_export_refuses_an_out_that_holds_the_checkpoint_or_a_run(tiny_tokenizer, tmp_path, capsys):
    import students

    run, other = tmp_path / "run", tmp_path / "other-run"
    students.build_student("tipsv2-micro", tokenizer=tiny_tokenizer).save(run / "student")
    (run / CHECKPOINTS / "step_00000001").mkdir(parents=True)
    for directory in (run, other):
        directory.mkdir(exist_ok=True)
        (directory / METRICS).write_text('{"step": 1, "loss": 1.0}\n')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out, words in ((run / "student", "is or holds the checkpoint"), (run, "is a training run directory"),
                       (tmp_path, "is or holds the checkpoint"),
                       (other, f"--out {other} is a training run directory (it holds {METRICS})")):
        assert main(["export", str(run / "student"), "--format", "timm", "--out", str(out), "--overwrite"]) == 2
        assert words in error_line(capsys)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert main(["export", str(run / "student"), "--format", "timm", "--out", str(run / "timm")]) == 0
