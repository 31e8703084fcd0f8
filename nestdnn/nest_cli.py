"""`nestdnn inspect MODEL.nest` and `nestdnn export`: argparse setup and runners for the CLI.

The CLI wires them as ``configure_inspect`` / ``run_inspect`` and ``configure_export`` /
``run_export``; runners return the exit code and raise NestError for bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nestdnn.errors import NestError

# ---------------------------------------------------------------------------------- inspect


def configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the descendants of a multi-capacity .nest file (widths, params, bytes, MACs,"
        " validation accuracy) and the file's size against K independent models. The whole"
        " file is validated first."
    )
    parser.add_argument("path", type=Path, help="a .nest file written by `nestdnn recover`")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_inspect(args: argparse.Namespace) -> int:
    summary = nest_summary(args.path)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def nest_summary(path: Path) -> dict[str, Any]:
    """The manifest's descendants plus the file size against independent descendants."""
    from nestdnn.nestfile import read_manifest

    manifest = read_manifest(path)
    descendants = [
        {**d.model_dump(), "total_width": sum(d.widths.values())} for d in manifest.descendants
    ]
    file_bytes = path.stat().st_size
    largest = max(d.bytes for d in manifest.descendants)
    accumulated = sum(d.bytes for d in manifest.descendants)
    return {
        "path": str(path),
        "format_version": manifest.format_version,
        "arch": manifest.arch.model_dump(),
        "dataset": manifest.dataset,
        "created": manifest.created,
        "descendants": descendants,
        "file_bytes": file_bytes,
        "largest_descendant_bytes": largest,
        "accumulated_bytes": accumulated,
        "overhead_over_largest": file_bytes / largest - 1,
        "saving_vs_accumulated": 1 - file_bytes / accumulated,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a text table and two size lines."""
    arch = summary["arch"]
    lines = [
        f"{summary['path']}: {arch['arch']}, {arch['in_channels']}x{arch['input_size']}x"
        f"{arch['input_size']} -> {arch['num_classes']} classes, dataset {summary['dataset']},"
        f" {len(summary['descendants'])} descendants (format v{summary['format_version']})",
        "",
        f"{'k':>2} {'widths':>8} {'params':>12} {'bytes':>13} {'MACs':>15} {'val acc':>8}"
        f" {'step':>5}",
    ]
    for d in summary["descendants"]:
        step = "-" if d["roadmap_step"] is None else str(d["roadmap_step"])
        lines.append(
            f"{d['index']:>2} {d['total_width']:>8,} {d['params']:>12,} {d['bytes']:>13,}"
            f" {d['macs']:>15,} {d['val_accuracy']:>8.2%} {step:>5}"
        )
    lines += [
        "",
        f"file {summary['file_bytes']:,} bytes = largest descendant"
        f" {summary['largest_descendant_bytes']:,} bytes"
        f" {summary['overhead_over_largest']:+.2%}",
        f"independent descendants (accumulated) {summary['accumulated_bytes']:,} bytes;"
        f" the file saves {summary['saving_vs_accumulated']:.1%}",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- export


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
