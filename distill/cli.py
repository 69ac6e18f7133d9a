"""`tipsdistill` command line: one sub-command per module in `distill.commands`.

Each command module exposes `add_parser(subparsers)` (which sets `func=run` on its parser) and
`run(args) -> int`. User mistakes raise `common.errors.UserError`; they are printed as one line
with a non-zero exit status and no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from transformers.utils import logging as transformers_logging

from distill.config import check_overrides_unique
from common.errors import UserError

COMMANDS = ("distill", "pretrain", "eval", "export", "cache", "caption")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tipsdistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"distill.commands.{name}").add_parser(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse matches a `nargs="*"` positional once, so `KEY=VALUE` overrides written after an option
    (`--out runs/x --resume max_steps=100`) would be refused: they join the command's overrides instead."""
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # transformers' "Loading weights" bars, one per model loaded, would bury the toolkit's own log lines.
    transformers_logging.disable_progress_bar()
    parser = build_parser()
    # The main job: `tipsdistill distill` with no arguments runs the embedded default.
    args = parse(parser, argv or ["distill"])
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        check_overrides_unique(getattr(args, "overrides", []))
        return int(args.func(args) or 0)
    except UserError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # Printed once the failed command's frames are freed (with `exc`): what they close on the way out, such as a
    # progress bar, then shows before the error line instead of after it.
    print(f"error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
