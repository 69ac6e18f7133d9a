"""`tipsdistill export CHECKPOINT --format hf|timm|npz|onnx --out DIR [--quantize int8] [--with-heads] [--report R]
[--overwrite]`."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    from students.export import FORMATS
    from students.onnx_export import QUANTIZATIONS

    parser = subparsers.add_parser(
        "export", help="export a student checkpoint for transformers, timm, the official .npz layout or ONNX",
        description="Export a student checkpoint (a dir written by student.save) to a loadable format.")
    parser.add_argument("checkpoint", help="student checkpoint directory (model.safetensors + student.json)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="hf: AutoModel/AutoProcessor dir; timm: timm.create_model checkpoint; "
                             "npz: official google-deepmind/tips arrays; onnx: onnxruntime graphs (vision, "
                             "vision with the value trick, text), checked against PyTorch")
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="onnx only: int8 = onnxruntime dynamic quantisation of the graphs")
    parser.add_argument("--out", required=True, help="output directory (built in a temp dir, renamed at the end)")
    parser.add_argument("--with-heads", action="store_true",
                        help="also store the projection heads to each teacher's width (teacher_space_heads.*; "
                             "a student of several teachers: teacher_space_heads.NAME.* for each other one)")
    parser.add_argument("--report", action="append", default=[], metavar="REPORT_JSON",
                        help="`tipsdistill eval` report.json for the model card (repeatable; default: a "
                             "report.json inside or beside CHECKPOINT)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from distill.eval.report import card_sections, find_reports
    from students.export import export_student
    from teachers.student_checkpoint import read_manifest
    from common.lock import OutputLock

    check_not_a_run(Path(args.out))
    # Beside --out, which the export replaces by a rename.
    with OutputLock(args.out, beside=True):
        reports = find_reports(Path(args.checkpoint), read_manifest(args.checkpoint).get("metadata") or {},
                               [Path(r) for r in args.report])
        fingerprint = load_fingerprint(args.checkpoint) if reports else None
        result = export_student(args.checkpoint, args.format, args.out, with_heads=args.with_heads,
                                overwrite=args.overwrite, evaluation=card_sections(reports, fingerprint),
                                quantize=args.quantize)
    print(f"exported {args.checkpoint} as {result.format} to {result.out}: {', '.join(result.files)}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def check_not_a_run(out: Path) -> None:
    """--overwrite replaces --out whole: a training run there would lose its checkpoints and metrics."""
    from distill.run_dir import run_marker
    from common.errors import UserError

    marker = run_marker(out)
    if marker is not None:
        raise UserError(f"--out {out} is a training run directory (it holds {marker}); expected a directory for "
                        "the export alone, such as a new one inside the run")


def load_fingerprint(checkpoint: str) -> str:
    """The fingerprint evaluation records for this checkpoint (the teacher layer's, as `eval` loads it)."""
    from teachers import load_teacher

    return load_teacher(checkpoint).fingerprint
