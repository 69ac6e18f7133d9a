"""`tipsdistill caption` with tiny random-weight captioners built offline: Florence-2 (task prompts),
PaliGemma (prompt config) and a LLaVA chat model (chat template). Random weights write gibberish, so the
tests check structure, resume and errors, not caption quality."""
from __future__ import annotations

import json
import logging
import os
import shutil
import string

import pytest
import torch
from PIL import Image

from distill.cli import main
from distill.data import build_dataset

from conftest import CORPUS

KEYS = ("short", "medium", "long")
POSITIONS = 512  # room for the default --max-new-tokens 256 after the prompt
FAST = ["--max-new-tokens", "5", "--num-workers", "0", "--batch-size", "2"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                 "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def byte_level_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def gemma_tokenizer(**kwargs):
    """Byte-fallback vocabulary: every text encodes, without training."""
    from transformers import GemmaTokenizer

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{b:02X}>" for b in range(256)), "▁",
              *string.ascii_lowercase]
    return GemmaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], **kwargs)


def save(model, processor, out):
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_florence2(out):
    from transformers import (BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    vocab, merges = byte_level_vocab()
    tok = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    # 16 px, stride 4: 4x4 patch features + 1 pooled = 17 image tokens.
    images = CLIPImageProcessor(size={"height": 16, "width": 16}, do_center_crop=False, image_seq_length=17)
    text = dict(model_type="bart", vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=1, decoder_attention_heads=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
                max_position_embeddings=POSITIONS, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.eos_token_id)
    vision = dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                  embed_dim=[16], num_heads=[1], num_groups=[1], projection_dim=16, window_size=4, drop_path_rate=0.0)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tok.image_token_id)
    return save(Florence2ForConditionalGeneration(config), Florence2Processor(images, tok), out)


def build_paligemma(out):
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor)

    processor = PaliGemmaProcessor(SiglipImageProcessor(size={"height": 16, "width": 16}, image_seq_length=4),
                                   gemma_tokenizer())
    tok = processor.tokenizer
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=16, patch_size=8, vision_use_head=False)
    text = dict(model_type="gemma", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, vocab_size=len(tok), max_position_embeddings=POSITIONS,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=len(tok), projection_dim=16, hidden_size=16)
    return save(PaliGemmaForConditionalGeneration(config), processor, out)


def build_llava(out):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = gemma_tokenizer(extra_special_tokens={"image_token": "<image>"})
    # 16 px, patch 8, CLS kept ("full"): 5 image tokens.
    processor = LlavaProcessor(CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
                               tok, patch_size=8, vision_feature_select_strategy="full", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    vision = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=16, patch_size=8, projection_dim=16)
    text = dict(model_type="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=POSITIONS,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id,
                         vision_feature_select_strategy="full", vision_feature_layer=-1)
    return save(LlavaForConditionalGeneration(config), processor, out)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: thread hand-offs cost more than the matmuls (20x on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def captioners(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    torch.manual_seed(0)
    dirs = {name: build(root / name) for name, build in
            (("florence2", build_florence2), ("paligemma", build_paligemma), ("llava", build_llava))}
    # The same chat model without its template: a model type with no built-in prompts.
    dirs["plain"] = root / "plain"
    shutil.copytree(dirs["llava"], dirs["plain"], ignore=shutil.ignore_patterns("chat_template.jinja"))
    return {name: str(path) for name, path in dirs.items()}


@pytest.fixture
def photos(tmp_path):
    """8 images of varied sizes, two in a sub-folder; one has an alt-text sidecar."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = (torch.rand(24 + 4 * i, 40 - 2 * i, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / ("sub" if i >= 6 else "") / f"img{i}.png")
    (root / "img1.txt").write_text("a web alt-text\n")
    return root


def caption(photos, model, *extra, out=None):
    out = out or photos / "metadata.jsonl"
    return main(["caption", "--data", f"folder:{photos}", "--out", str(out), "--captioner", model, *FAST, *extra])


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_florence2_captions_read_back_by_folder_and_hf(captioners, photos, tmp_path, capsys):
    assert caption(photos, captioners["florence2"]) == 0
    assert "8 images captioned (short, medium, long), 0 already there" in capsys.readouterr().out
    rows = lines(photos / "metadata.jsonl")
    assert [row["file_name"] for row in rows] == [*(f"img{i}.png" for i in range(6)), "sub/img6.png", "sub/img7.png"]
    assert all(list(row) == ["file_name", *KEYS] and all(row[k] for k in KEYS) for row in rows)
    assert rows[1]["short"] == "a web alt-text"  # the data's own caption is kept
    expected = {row["file_name"]: {k: " ".join(row[k].split()) for k in KEYS} for row in rows}
    for spec, options in ((f"folder:{photos}", {}), (f"hf:{photos}", {"cache_dir": str(tmp_path / "cache")})):
        dataset = build_dataset(spec, **options)
        assert len(dataset) == 8
        read = {os.path.relpath(dataset.image_file(i), photos): dataset[i].captions for i in range(8)}
        assert read == expected, spec

    assert caption(photos, captioners["florence2"], "--overwrite-captions", out=tmp_path / "all.jsonl") == 0
    assert lines(tmp_path / "all.jsonl")[1]["short"] != "a web alt-text"
    assert lines(tmp_path / "all.jsonl")[0]["file_name"] == "photos/img0.png"  # relative to the output's folder


def test_rerun_after_interrupt_or_torn_line_equals_one_run(captioners, photos, tmp_path, monkeypatch, caplog):
    from distill.captioning import Captioner

    model, out = captioners["florence2"], photos / "metadata.jsonl"
    assert caption(photos, model, out=tmp_path / "straight.jsonl") == 0
    straight = (tmp_path / "straight.jsonl").read_text(encoding="utf-8").replace("photos/", "")

    real, calls = Captioner.caption, []

    def interrupted(self, images, prompt):  # Ctrl-C in the 2nd batch, after the 1st was written
        calls.append(prompt)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(self, images, prompt)

    monkeypatch.setattr(Captioner, "caption", interrupted)
    assert caption(photos, model) == 130
    monkeypatch.setattr(Captioner, "caption", real)
    assert len(lines(out)) == 2
    assert caption(photos, model) == 0
    assert out.read_text(encoding="utf-8") == straight
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~current_umask()

    # A kill mid-append leaves a torn last line: it is dropped and that image captioned again.
    whole = straight.encode()
    cut = whole.index(b"\n", whole.index(b"img4")) - 10
    out.write_bytes(whole[:cut])
    with caplog.at_level(logging.WARNING, logger="distill.captioning.output"):
        assert caption(photos, model) == 0
    assert "torn last line" in caplog.text
    assert out.read_text(encoding="utf-8") == straight
    assert caption(photos, model) == 0  # nothing left: no duplicates
    assert out.read_text(encoding="utf-8") == straight


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unreadable_images_are_skipped_and_counted(captioners, photos, capsys):
    (photos / "empty.png").write_bytes(b"")
    (photos / "sub" / "text.png").write_bytes(b"not an image")
    for written in (0, 8):  # a rerun tries them again
        assert caption(photos, captioners["florence2"], "--granularities", "short") == 0
        assert (f"{8 - written} images captioned (short), {written} already there, 2 unreadable images skipped "
                f"(empty_file 1, unreadable 1)") in capsys.readouterr().out
    assert len(lines(photos / "metadata.jsonl")) == 8


def test_shards_cover_every_image_once(captioners, photos):
    model = captioners["florence2"]
    assert caption(photos, model, "--granularities", "short") == 0
    for i in range(3):
        assert caption(photos, model, "--granularities", "short", "--shard", f"{i}/3", "--num-workers", f"{i}",
                       out=photos / f"captions-{i}.jsonl") == 0  # decoded in 0, 1 or 2 worker processes
    shards = [row for i in range(3) for row in lines(photos / f"captions-{i}.jsonl")]
    assert sorted(shards, key=lambda row: row["file_name"]) == lines(photos / "metadata.jsonl")
    assert [row["file_name"] for row in lines(photos / "captions-1.jsonl")] == ["img1.png", "img4.png", "sub/img7.png"]


def test_paligemma_prompt_config(captioners, photos, tmp_path):
    model = captioners["paligemma"]
    assert caption(photos, model, out=tmp_path / "default.jsonl") == 0
    # Built-in PaliGemma prompts: a caption (short) and a description (long), no medium.
    assert all(set(row) == {"file_name", "short", "long"} for row in lines(tmp_path / "default.jsonl"))

    (tmp_path / "prompts.yaml").write_text("medium: '<image>describe en, in two sentences'\n")
    assert caption(photos, model, "--prompts", str(tmp_path / "prompts.yaml"), "--granularities", "medium",
                   out=tmp_path / "file.jsonl") == 0
    assert caption(photos, model, "--prompts", "medium=<image>describe en, in two sentences", "--granularities",
                   "medium", out=tmp_path / "inline.jsonl") == 0
    assert (tmp_path / "file.jsonl").read_text() == (tmp_path / "inline.jsonl").read_text()
    rows = lines(tmp_path / "inline.jsonl")
    assert [set(row) for row in rows[:2]] == [{"file_name", "medium"}, {"file_name", "short", "medium"}]


def test_chat_model_prompts_go_through_its_template(captioners, photos, tmp_path):
    assert caption(photos, captioners["llava"], "--granularities", "medium,long", out=tmp_path / "c.jsonl") == 0
    assert all(set(row) == {"file_name", "medium", "long"} for row in lines(tmp_path / "c.jsonl")[2:])


def test_distill_from_generated_captions(captioners, photos, tiny_tipsv2_dir, tmp_path):
    assert caption(photos, captioners["florence2"]) == 0
    run = tmp_path / "run"
    assert main(["distill", "--recipe", "micro", f"teacher.spec={tiny_tipsv2_dir}", "student.name=tipsv2-nano",
                 "student.image_size=32", f"data.source=folder:{photos}", "data.options={}", "train.max_steps=2",
                 "train.batch_size=4", "train.log_every=1", "--out", str(run)]) == 0
    logged = lines(run / "metrics.jsonl")
    assert {"contrastive/cls1", "contrastive/cls2"} <= set(logged[0])
    assert all(torch.isfinite(torch.tensor(m["contrastive/cls1"])) for m in logged)


def test_errors_are_one_line(captioners, photos, tiny_tipsv2_dir, tmp_path, capsys):
    florence, out = captioners["florence2"], photos / "metadata.jsonl"

    def error(*args, model=florence, out=out) -> str:
        assert caption(photos, model, *args, out=out) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert "does not exist" in error(model=str(tmp_path / "no-model"))
    assert "is a tipsv2 model, not a captioner" in error(model=str(tiny_tipsv2_dir))
    assert "no config.json" in error(model=str(photos))
    assert "no built-in prompts" in error(model=captioners["plain"])
    assert "no medium prompt for a paligemma captioner" in error("--granularities", "medium",
                                                                 model=captioners["paligemma"])
    assert "--granularities 'short,tiny'" in error("--granularities", "short,tiny")
    assert "unknown granularity 'tiny'" in error("--prompts", "tiny=hello")
    assert "--batch-size 0" in error("--batch-size", "0")
    assert "--max-new-tokens 0" in error("--max-new-tokens", "0")
    assert "has 512 positions" in error("--max-new-tokens", "600")
    assert "--shard '2/2'" in error("--shard", "2/2")
    assert "is a directory" in error(out=photos)
    assert "expected a .jsonl file" in error(out=photos / "captions.csv")
    assert main(["caption", "--data", f"folder:{tmp_path / 'nowhere'}", "--out", str(out),
                 "--captioner", florence]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["caption", "--data", "scenes", "--out", str(out), "--captioner", florence]) == 2
    assert "reads image files from folder: or hf:" in capsys.readouterr().err
    assert main(["caption", "--data", f"hf:{photos}", "--out", str(out), "--captioner", florence,
                 "--data-option", f"cache_dir={tmp_path / 'cache'}"]) == 2
    assert "caption folder:" in capsys.readouterr().err
    assert not out.exists()

    # Lines already written are never lost: a foreign line or fewer granularities stop the run.
    assert caption(photos, florence, "--granularities", "short") == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert "without a medium caption" in error("--granularities", "short,medium")
    out.write_bytes(before + b"not json\n")
    assert "line 9 is not a caption record" in error()
    assert out.read_bytes() == before + b"not json\n"
