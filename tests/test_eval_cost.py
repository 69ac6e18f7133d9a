"""Cost beside quality: parameter counts, GFLOPs, throughput and peak memory in every evaluation report."""
import json

import pytest
import torch
from torch import nn

import teachers
from distill.cli import main
from distill.eval.cost import model_cost, parameter_count, text_modules
from distill.eval.report import markdown_table
from common.types import ImageTokens

COST_KEYS = {"vision_params", "text_params", "gflops_per_image", "images_per_s", "peak_memory_mib", "batch_size",
             "resolution", "device", "threads", "peak_memory_method"}
COST_ROWS = ("| vision params (M) |", "| text params (M) |", "| GFLOPs/image @32 |", "| images/s @batch 8 |",
             "| peak MiB |")


def vit_params(width: int, depth: int, patch: int, image: int, registers: int) -> int:
    """A TIPSv2 vision tower by hand: embeddings (cls, mask, positions, registers, patch conv), blocks (2 norms,
    q/k/v/o, 2 layer scales, MLP x4), final norm."""
    d, tokens = width, (image // patch) ** 2
    embeddings = d + d + (tokens + 1) * d + registers * d + 3 * patch * patch * d + d
    block = 2 * 2 * d + 4 * (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return embeddings + depth * block + 2 * d


def text_params(width: int, depth: int, vocab: int) -> int:
    """A TIPSv2 text tower by hand: token embeddings, blocks (q/k/v/o, 2 norms, MLP x4), final norm."""
    d = width
    block = 4 * (d * d + d) + 2 * 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + depth * block + 2 * d


def vit_flops(width: int, depth: int, patch: int, image: int, registers: int) -> int:
    """One image through the ViT: patch conv, then per block q/k/v/o, attention (QK^T and AV) and the MLP."""
    d, n = width, (image // patch) ** 2
    t = n + 1 + registers
    block = 4 * 2 * t * d * d + 2 * 2 * t * t * d + 2 * 2 * t * d * 4 * d
    return 2 * n * d * 3 * patch * patch + depth * block


@pytest.fixture(scope="module")
def teacher(tiny_tipsv2_dir):
    return teachers.load_teacher(str(tiny_tipsv2_dir))


def test_parameter_counts_equal_a_hand_count(teacher, tiny_tokenizer):
    from students import build_student

    registers = teacher.num_registers
    cost = model_cost(teacher, 32, "cpu", batch_size=2)
    assert cost["vision_params"] == vit_params(32, 2, 8, 32, registers)
    assert cost["text_params"] == text_params(32, 2, len(tiny_tokenizer))
    # micro: width 96, 4 blocks; through its projection heads (3 x Linear(96, 32)) in teacher space
    student = build_student("tipsv2-micro", teacher_width=32, text=False, image_size=32)
    micro = vit_params(96, 4, 8, 32, student.num_registers)
    assert model_cost(student, 32, "cpu", batch_size=1)["vision_params"] == micro
    in_teacher_space = model_cost(student.teacher_space(), 32, "cpu", batch_size=1)
    assert in_teacher_space["vision_params"] == micro + 3 * (96 * 32 + 32)
    assert in_teacher_space["text_params"] == 0  # neither a text tower nor encode_text in teacher space


def test_unknown_modules_count_nothing():
    class Opaque(nn.Module):  # an encoder whose modules have no name the sources use
        has_text = True

        def __init__(self):
            super().__init__()
            self.layers = nn.Linear(2, 2)

    assert parameter_count(text_modules(Opaque())) is None


class LinearPatches(nn.Module):
    """4 px patches through one Linear(48, 10): 2 * 48 * 10 FLOPs per patch."""

    patch_size, image_size = 4, 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(48, 10)

    def encode_image(self, pixels, value_trick=False):
        b, _, h, w = pixels.shape
        patches = pixels.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(b, h // 4, w // 4, 48)
        tokens = self.proj(patches)
        return ImageTokens(tokens.mean((1, 2)), tokens[:, :0, 0], tokens)


def test_gflops_equal_a_hand_count():
    assert model_cost(LinearPatches(), 16, "cpu", batch_size=1)["gflops_per_image"] == pytest.approx(
        2 * 48 * 10 * 16 / 1e9)


def test_vit_gflops_count_attention_and_grow_about_fourfold_with_twice_the_side(teacher):
    registers = teacher.num_registers
    at32, at64 = (model_cost(teacher, side, "cpu", batch_size=1)["gflops_per_image"] for side in (32, 64))
    assert at32 == pytest.approx(vit_flops(32, 2, 8, 32, registers) / 1e9)  # attention counted on CPU too
    assert at64 == pytest.approx(vit_flops(32, 2, 8, 64, registers) / 1e9)
    assert 3.5 < at64 / at32 < 5  # 4x the patches; the attention grows faster, the extra tokens do not


class Allocating(nn.Module):
    """Holds a 1 MiB intermediate during its forward."""

    patch_size, image_size = 4, 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(48, 10)

    def encode_image(self, pixels, value_trick=False):
        scratch = torch.ones(2**18)  # 1 MiB of float32
        return ImageTokens(scratch[:1].expand(len(pixels), 1), pixels[:, :0, 0, :1], pixels[..., :1].permute(0, 2, 3, 1))


def test_cpu_peak_memory_sees_the_forward_allocations_and_the_weights():
    cost = model_cost(Allocating(), 16, "cpu", batch_size=2)
    resident = (48 * 10 + 10) * 4 + 2 * 3 * 16 * 16 * 4
    assert cost["peak_memory_mib"] >= 1 + resident / 2**20
    assert "profiler" in cost["peak_memory_method"] and cost["device"] == "cpu" and cost["batch_size"] == 2


def _report(costs: dict) -> dict:
    return {"task": "t", "dataset": "d", "models": {"a": {"miou": 50.0}, "b": {"miou": 40.0}}, "baselines": {},
            "cost": costs}


def test_cost_rows_bold_the_cheapest_and_the_fastest():
    common = {"resolution": 32, "batch_size": 8, "device": "cpu", "threads": 1, "peak_memory_method": "m"}
    table = markdown_table(_report({
        "a": {**common, "vision_params": 2_000_000, "text_params": 0, "gflops_per_image": 2.0, "images_per_s": 10.0,
              "peak_memory_mib": 30.0},
        "b": {**common, "vision_params": 1_000_000, "text_params": 0, "gflops_per_image": 0.5, "images_per_s": 40.0,
              "peak_memory_mib": 20.0}}))
    assert "| miou | **50.00** | 40.00 |" in table
    assert "| vision params (M) | 2.00 | **1.00** |" in table
    assert "| text params (M) | 0.00 | 0.00 |" in table  # a tie bolds nothing
    assert "| GFLOPs/image @32 | 2.00 | **0.5** |" in table
    assert "| images/s @batch 8 | 10.00 | **40.00** |" in table
    assert "| peak MiB | 30.00 | **20.00** |" in table
    assert "cost: cpu, 1 threads, batch 8; peak memory: m" in table


def _eval(tmp_path, teacher_dir, student_dir, *extra) -> int:
    return main(["eval", "--model", f"teacher={teacher_dir}", "--model", f"student={student_dir}",
                 "--task", "zeroshot-seg", "--dataset", "scenes:length=2", "--out", str(tmp_path),
                 "--short-side", "64", "--window", "32", "--stride", "32", "--overlays", "0", *extra])


@pytest.fixture(scope="module")
def nano_dir(tmp_path_factory, tiny_tokenizer):
    from students import build_student

    directory = tmp_path_factory.mktemp("students") / "nano"
    build_student("tipsv2-nano", teacher_width=32, tokenizer=tiny_tokenizer).save(directory)
    return directory


def test_every_report_has_the_cost_of_every_model(tmp_path, tiny_tipsv2_dir, nano_dir, capsys):
    assert _eval(tmp_path, tiny_tipsv2_dir, nano_dir) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["cost"]) == {"teacher", "student"}
    for cost in report["cost"].values():
        assert COST_KEYS <= set(cost) and cost["resolution"] == 32 and cost["batch_size"] == 8
        assert cost["vision_params"] > 0 and cost["gflops_per_image"] > 0 and cost["peak_memory_mib"] > 0
    printed, markdown = capsys.readouterr().out, (tmp_path / "report.md").read_text()
    for row in COST_ROWS:
        assert row in printed and row in markdown
    pytest.importorskip("matplotlib")
    assert (tmp_path / "quality_vs_throughput.png").stat().st_size > 0


def test_no_cost_leaves_the_cost_out(tmp_path, tiny_tipsv2_dir, nano_dir, capsys):
    assert _eval(tmp_path, tiny_tipsv2_dir, nano_dir, "--no-cost") == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "cost" not in report and "miou" in report["models"]["student"]
    assert not any(row in capsys.readouterr().out for row in COST_ROWS)
    assert not (tmp_path / "quality_vs_throughput.png").exists()


def test_no_cost_is_a_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--model", "m=x", "--task", "knn", "--dataset", "folder:x", "--out", str(tmp_path),
              "--no-cost=yes"])
    assert "--no-cost: ignored explicit argument 'yes'" in capsys.readouterr().err
