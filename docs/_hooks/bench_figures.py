"""The pages show the bench's committed figures where the bench writes them (`bench/results/*.png`), so each figure has
one copy. The pages link them as `../bench/results/NAME.png`, which GitHub resolves; that lies outside `docs/`, where
mkdocs looks, so this hook adds the folder to the site as `results/` and points the links there."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

BENCH = Path(__file__).resolve().parents[2] / "bench"
LINK, SITE_LINK = "](../bench/results/", "](results/"


def on_files(files, config):
    for figure in sorted((BENCH / "results").glob("*.png")):
        files.append(File(f"results/{figure.name}", str(BENCH), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(LINK, SITE_LINK)
