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
from common.atomic import write_atomic
from common.errors import UserError

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


def _cost_cell(value) -> str:
    """Micro models cost hundredths of a GFLOP and of a million parameters: 3 significant digits below 1."""
    if isinstance(value, float) and 0 < abs(value) < 1:
        return f"{value:.3g}"
    return _cell(value)


def _best(label: str, numbers: list) -> float:
    """Depth errors (`rmse`, `rmse@448`) are best when lowest, every other metric when highest."""
    return min(numbers) if label.partition("@")[0] in LOWER_IS_BETTER else max(numbers)


def _cheapest(label: str, numbers: list) -> float | None:
    """Cost rows: the most images/s, the fewest parameters, GFLOPs and MiB; the input side is no contest."""
    if label.startswith("input"):
        return None
    return max(numbers) if label.startswith("images/s") else min(numbers)


def _rows(names: list[str], rows: dict[str, list], best=_best, cell=_cell) -> list[str]:
    """Markdown rows, one column per model; with several models the best value of a row (`best(label, numbers)`)
    is bold, when one model alone reaches it (a tie bolds nothing)."""
    lines = []
    for label, values in rows.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        top = best(label, numbers) if len(names) > 1 and numbers else None
        if top is not None and numbers.count(top) > 1:
            top = None
        cells = [f"**{cell(v)}**" if top is not None and v == top else cell(v) for v in values]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def _table(header: str, names: list[str], rows: dict[str, list]) -> list[str]:
    return [f"| {header} | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"] + _rows(names, rows)


def _millions(count: int | None) -> float | None:
    return None if count is None else count / 1e6


def cost_rows(names: list[str], costs: dict) -> dict[str, list]:
    """The cost of each model as table rows; the input side gets a row of its own only when models differ."""
    measured = [costs.get(name, {}) for name in names]
    sides = {c.get("resolution") for c in measured}
    at = f" @{sides.pop()}" if len(sides) == 1 else ""
    rows = {"vision params (M)": [_millions(c.get("vision_params")) for c in measured],
            "text params (M)": [_millions(c.get("text_params")) for c in measured]}
    if not at:
        rows["input side (px)"] = [c.get("resolution") for c in measured]
    batch = next((c["batch_size"] for c in measured if "batch_size" in c), "?")
    rows[f"GFLOPs/image{at}"] = [c.get("gflops_per_image") for c in measured]
    rows[f"images/s @batch {batch}"] = [c.get("images_per_s") for c in measured]
    rows["peak MiB"] = [c.get("peak_memory_mib") for c in measured]
    return rows


def _cost_note(costs: dict) -> str:
    first = next(iter(costs.values()))
    method = next((c["peak_memory_method"] for c in costs.values() if c.get("peak_memory_method")), None)
    outside = [name for name, c in costs.items() if c.get("gflops_per_image") is None and c.get("images_per_s")]
    return (f"cost: {first['device']}, {first['threads']} threads, batch {first['batch_size']}; "
            f"peak memory: {method or 'not measured'}"
            + (f"; {', '.join(outside)}: FLOPs and memory not counted (run outside torch)" if outside else ""))


def _by_metric(keys) -> list[str]:
    """`miou@224, acc@224, miou@448, acc@448` -> `miou@224, miou@448, acc@224, acc@448`: one row per resolution
    under each metric, in the order the metrics and resolutions first appear."""
    keys = list(dict.fromkeys(keys))
    bases = list(dict.fromkeys(k.partition("@")[0] for k in keys))
    return sorted(keys, key=lambda k: bases.index(k.partition("@")[0]))


def _scalar_metrics(report: dict) -> list[str]:
    scores = list(report["models"].values())
    return [m for m in _by_metric(k for v in scores for k in v)
            if not any(isinstance(v.get(m), _TABLE_SKIPS) for v in scores)]


def markdown_table(report: dict) -> str:
    """Scalar metrics side by side (bold: the highest, the lowest for depth errors), the cost rows under them
    when measured (bold: the cheapest, the fastest), then the baselines and how the cost was measured."""
    names = list(report["models"])
    scores = [report["models"][n] for n in names]
    lines = _table("metric", names, {m: [v.get(m) for v in scores] for m in _scalar_metrics(report)})
    costs = report.get("cost")
    if costs:
        lines += _rows(names, cost_rows(names, costs), _cheapest, _cost_cell)
    baselines = {k: v for k, v in report.get("baselines", {}).items() if not isinstance(v, _TABLE_SKIPS)}
    if baselines:
        lines += ["", "baselines: " + ", ".join(f"{k} {_cell(v)}" for k, v in baselines.items())]
    if costs:
        lines += ["", _cost_note(costs)]
    lines += _bootstrap_lines(report.get("bootstrap"))
    return "\n".join(lines)


def _bootstrap_lines(bootstrap: dict | None) -> list[str]:
    """The paired differences' 95% intervals: whether a gap between two columns is more than sampling error."""
    if not bootstrap or not bootstrap.get("differences"):
        return []
    parts = [f"{pair} {metric} {d['difference']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
             for pair, metrics in bootstrap["differences"].items() for metric, d in metrics.items()
             if None not in (d["difference"], *d["ci95"])]  # a metric with nothing to score (NaN) has no interval
    if not parts:
        return []
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


def tradeoff_points(report: dict) -> tuple[str, list[tuple[str, float, float]]]:
    """(the task's main metric: its first scalar one, e.g. miou; [(model, images/s, metric)]), the metric taken
    at the resolution the cost was measured at (`miou@448`) when several were evaluated."""
    metrics = _scalar_metrics(report)
    main = metrics[0].partition("@")[0] if metrics else ""
    points = []
    for name, scores in report["models"].items():
        cost = report.get("cost", {}).get(name, {})
        value = scores.get(f"{main}@{cost.get('resolution')}", scores.get(main))
        if isinstance(value, (int, float)) and isinstance(cost.get("images_per_s"), (int, float)):
            points.append((name, cost["images_per_s"], value))
    return main, points


QUALITY_VS_THROUGHPUT = "quality_vs_throughput.png"


def write_tradeoff_png(path: Path, report: dict) -> None:
    """The main metric against images/s, one labelled point per model, when two or more have both.
    matplotlib is optional (the `test` and `bench` extras): without it there is no plot."""
    metric, points = tradeoff_points(report)
    if len(points) < 2:
        return
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state to disturb
    except ImportError:
        return
    cost = report["cost"][points[0][0]]
    figure = Figure(figsize=(5, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter([x for _, x, _ in points], [y for _, _, y in points])
    for name, x, y in points:
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel(f"images/s (batch {cost['batch_size']}, {cost['device']}, {cost['threads']} threads)")
    axes.set_ylabel(metric)
    axes.set_title(f"{report['task']} on {report['dataset']}", fontsize="medium")
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def write_report(out_dir: Path, report: dict) -> str:
    """report.json + report.md (+ the quality-vs-throughput plot); returns the summary table (without the
    per-class tables)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = f"{report['task']} on {report['dataset']}\n\n{markdown_table(report)}\n"
    details = per_class_tables(report)
    write_text(out_dir / "report.md", table + (f"\n{details}\n" if details else ""))
    write_tradeoff_png(out_dir / QUALITY_VS_THROUGHPUT, report)
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
