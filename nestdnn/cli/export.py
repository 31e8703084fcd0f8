"""`nestdnn export`: descendants of a `.nest` file as standalone TFLite, ONNX or checkpoints.

Runners return the exit code and raise NestError for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nestdnn.errors import NestError


def configure_export(parser: argparse.ArgumentParser) -> None:
    from nestdnn.export import EXPORT_FORMATS

    parser.description = (
        "Export descendants of a .nest file as standalone models: tflite (litert-torch, the"
        " optional extra 'export'), onnx (opset 17, dynamic batch), pt (a nestdnn checkpoint)"
        " or safetensors (state_dict + config)."
    )
    parser.add_argument("path", type=Path, help="the .nest file")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--descendant", "-k", type=int, help="the descendant to export (0 = smallest)"
    )
    which.add_argument("--all", action="store_true", help="export every descendant")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="output format")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output file; with --all a directory receiving STEM.dK.SUFFIX files",
    )


def run_export(args: argparse.Namespace) -> int:
    from nestdnn.export import export_all, export_descendant

    if not args.path.is_file():
        raise NestError(f"{args.path}: no such .nest file")
    if args.all:
        written = export_all(args.path, args.format, args.out)
    else:
        written = [export_descendant(args.path, args.descendant, args.format, args.out)]
    for path in written:
        print(path)
    return 0
