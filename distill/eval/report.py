"""What an evaluation leaves behind: report.json, a side-by-side markdown table, and PNGs.

Every file is written to a temp name and renamed, so an interrupted run never leaves a torn file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from distill.eval.metrics import IGNORE_INDEX, LOWER_IS_BETTER
from tipscore.atomic import write_atomic
from tipscore.errors import UserError

# Metrics that are lists/dicts (per-class IoU) stay in report.json but not in the table.
_TABLE_SKIPS = (dict, list)


def json_safe(value):
    """NaN (a metric with nothing to measure, e.g. no object pixels) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _best(label: str, numbers: list) -> float:
    """Depth errors (`rmse`, `rmse@448`) are best when lowest, every other metric when highest."""
    return min(numbers) if label.partition("@")[0] in LOWER_IS_BETTER else max(numbers)


def _table(header: str, names: list[str], rows: dict[str, list]) -> list[str]:
    """Markdown rows, one column per model; with several models the best value of a row is bold, when one model
    alone reaches it (a tie bolds nothing)."""
    lines = [f"| {header} | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    for label, values in rows.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        best = _best(label, numbers) if len(names) > 1 and numbers else None
        if best is not None and numbers.count(best) > 1:
            best = None
        cells = [f"**{_cell(v)}**" if best is not None and v == best else _cell(v) for v in values]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def _by_metric(keys) -> list[str]:
    """`miou@224, acc@224, miou@448, acc@448` -> `miou@224, miou@448, acc@224, acc@448`: one row per resolution
    under each metric, in the order the metrics and resolutions first appear."""
    keys = list(dict.fromkeys(keys))
    bases = list(dict.fromkeys(k.partition("@")[0] for k in keys))
    return sorted(keys, key=lambda k: bases.index(k.partition("@")[0]))


def markdown_table(report: dict) -> str:
    """Scalar metrics side by side (bold: the highest, the lowest for depth errors), then the baselines."""
    names = list(report["models"])
    scores = [report["models"][n] for n in names]
    metrics = [m for m in _by_metric(k for v in scores for k in v)
               if not any(isinstance(v.get(m), _TABLE_SKIPS) for v in scores)]
    lines = _table("metric", names, {m: [v.get(m) for v in scores] for m in metrics})
    baselines = {k: v for k, v in report.get("baselines", {}).items() if not isinstance(v, _TABLE_SKIPS)}
    if baselines:
        lines += ["", "baselines: " + ", ".join(f"{k} {_cell(v)}" for k, v in baselines.items())]
    lines += _bootstrap_lines(report.get("bootstrap"))
    return "\n".join(lines)


def _bootstrap_lines(bootstrap: dict | None) -> list[str]:
    """The paired differences' 95% intervals: whether a gap between two columns is more than sampling error."""
    if not bootstrap or not bootstrap.get("differences"):
        return []
    parts = [f"{pair} {metric} {d['difference']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
             for pair, metrics in bootstrap["differences"].items() for metric, d in metrics.items()]
    return ["", f"differences, 95% bootstrap intervals over {bootstrap['images']} images: " + "; ".join(parts)]


def per_class_tables(report: dict) -> str:
    """Dict-valued metrics (per-class IoU) as one row per class; for report.md, too long for the terminal."""
    names = list(report["models"])
    scores = [report["models"][n] for n in names]
    blocks = []
    for metric in _by_metric(k for v in scores for k, x in v.items() if isinstance(x, dict)):
        classes = list(dict.fromkeys(c for v in scores for c in v.get(metric, {})))
        rows = {c: [v.get(metric, {}).get(c) for v in scores] for c in classes}
        blocks.append("\n".join(_table(metric, names, rows)))
    return "\n\n".join(blocks)


REPORT = "report.json"


def _is_eval_report(report) -> bool:
    return isinstance(report, dict) and isinstance(report.get("models"), dict) and "task" in report


def find_reports(checkpoint: Path, metadata: dict, explicit: list[Path] = ()) -> list[dict]:
    """`tipsdistill eval` reports for a model card: `explicit` paths (must be valid), else metadata `eval`
    (one report or a list), else a `report.json` inside or beside the checkpoint (skipped if not one)."""
    reports = []
    for path in explicit:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--report {path} is not a readable JSON file ({exc})") from None
        if not _is_eval_report(report):
            raise UserError(f"--report {path} is not a `tipsdistill eval` report.json (no task/models)")
        reports.append(report)
    if reports:
        return reports
    recorded = metadata.get("eval")
    recorded = recorded if isinstance(recorded, list) else [recorded]
    if any(_is_eval_report(r) for r in recorded):
        return [r for r in recorded if _is_eval_report(r)]
    for path in (checkpoint / REPORT, checkpoint.parent / REPORT):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _is_eval_report(report):
            return [report]
    return []


def card_sections(reports: list[dict], fingerprint: str | None) -> list[str]:
    """Markdown sections for a model card, each saying which column is the exported model (found by its
    fingerprint among the report's sources)."""
    sections = []
    for report in reports:
        column = next((name for name, source in report.get("sources", {}).items()
                       if fingerprint and source.get("fingerprint") == fingerprint), None)
        which = (f"This model is the column `{column}`." if column else
                 "This model is none of the columns (the report was made with other weights).")
        sections.append(f"### {report['task']} on {report.get('dataset', '?')}\n\n{which}\n\n{markdown_table(report)}")
    return sections


def write_report(out_dir: Path, report: dict) -> str:
    """report.json + report.md; returns the summary table (without the per-class tables)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = f"{report['task']} on {report['dataset']}\n\n{markdown_table(report)}\n"
    details = per_class_tables(report)
    write_text(out_dir / "report.md", table + (f"\n{details}\n" if details else ""))
    write_json(out_dir / "report.json", report)  # last: its presence means the run finished
    return table


def _viewable(image: Image.Image, min_height: int = 192) -> Image.Image:
    """Small inputs (the built-in scenes are 64 px) are enlarged by an integer factor, nearest-neighbour."""
    factor = -(-min_height // image.height)
    return image if factor <= 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def depth_panel(image: Image.Image, depth: np.ndarray, pred: np.ndarray, max_depth: float) -> Image.Image:
    """image | ground truth | prediction, grey levels linear in depth (near bright, `max_depth` and beyond
    dark), pixels without a measurement black."""
    rgb = np.asarray(image.convert("RGB").resize(depth.shape[::-1]), dtype=np.float32)

    def grey(d: np.ndarray) -> np.ndarray:
        level = np.where(d > 0, 40 + 215 * (1 - np.clip(d / max_depth, 0, 1)), 0)
        return np.repeat(level[..., None], 3, axis=-1)

    return _viewable(Image.fromarray(np.concatenate([rgb, grey(depth), grey(pred)], axis=1).astype(np.uint8)))


def palette(num_classes: int, known: np.ndarray | None = None) -> np.ndarray:
    """(C + 1, 3) uint8 colours: the dataset's own (`known`, (C, 3)) when it has them, else deterministic
    random ones; the extra last row is black for ignored pixels."""
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, (num_classes + 1, 3)).astype(np.uint8)
    if known is not None:
        colours[:num_classes] = known
    colours[-1] = 0
    return colours


def label_png(label: np.ndarray, num_classes: int, known: np.ndarray | None = None) -> Image.Image:
    """A palette PNG whose pixel values are the class indices (readable back with np.asarray)."""
    image = Image.fromarray(label.astype(np.uint8))
    flat = np.zeros((256, 3), np.uint8)
    flat[:num_classes] = palette(num_classes, known)[:num_classes]
    image.putpalette(flat.reshape(-1).tolist())  # L -> P, indices unchanged
    return image


def _colourise(label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    index = np.where(label == IGNORE_INDEX, len(colours) - 1, label)
    return colours[index]


def overlay_panel(image: Image.Image, label: np.ndarray, pred: np.ndarray, class_names: list[str],
                  known: np.ndarray | None = None) -> Image.Image:
    """image | ground truth over image | prediction over image (ignored pixels black in the middle panel),
    above a legend of the classes either map shows."""
    rgb = np.asarray(image.convert("RGB").resize(label.shape[::-1]), dtype=np.float32)
    colours = palette(len(class_names), known)
    panels = [rgb] + [0.45 * rgb + 0.55 * _colourise(m, colours) for m in (label, pred)]
    top = _viewable(Image.fromarray(np.concatenate(panels, axis=1).clip(0, 255).astype(np.uint8)))
    shown = sorted(set(np.unique(label).tolist()) | set(np.unique(pred).tolist()))
    entries = [(class_names[k], tuple(colours[k].tolist())) for k in shown if k != IGNORE_INDEX]
    if IGNORE_INDEX in shown:
        entries.append(("ignored", (0, 0, 0)))
    key = legend(top.width, entries)
    canvas = Image.new("RGB", (top.width, top.height + key.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(key, (0, top.height))
    return canvas


def legend(width: int, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """A white strip `width` wide: a colour swatch and the name of each entry, wrapped onto more rows as needed."""
    font, pad, box = ImageFont.load_default(), 6, 12
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, y = [], pad, pad
    for name, colour in entries:
        cell = box + 4 + math.ceil(measure.textlength(name, font=font)) + 2 * pad
        if x + cell > width and x > pad:
            x, y = pad, y + box + pad
        placed.append((x, y, name, colour))
        x += cell
    strip = Image.new("RGB", (width, y + box + pad), "white")
    draw = ImageDraw.Draw(strip)
    for x, y, name, colour in placed:
        draw.rectangle((x, y, x + box, y + box), fill=colour, outline=(0, 0, 0))
        draw.text((x + box + 4, y), name, fill=(0, 0, 0), font=font)
    return strip


def pca_panel(image: Image.Image, patches: torch.Tensor) -> Image.Image:
    """image | first 3 principal components of the (h, w, D) patch features as RGB, nearest-upsampled."""
    h, w, d = patches.shape
    x = patches.reshape(-1, d).float().cpu()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = x @ v[:3].T
    comps = torch.cat([comps, torch.zeros(comps.shape[0], 3 - comps.shape[1])], 1) if comps.shape[1] < 3 else comps
    low, high = comps.min(0).values, comps.max(0).values
    rgb = ((comps - low) / (high - low).clamp_min(1e-8) * 255).reshape(h, w, 3).numpy().astype(np.uint8)
    pca = Image.fromarray(rgb).resize(image.size, Image.NEAREST)
    canvas = Image.new("RGB", (image.width * 2, image.height))
    canvas.paste(image.convert("RGB"), (0, 0))
    canvas.paste(pca, (image.width, 0))
    return _viewable(canvas)
