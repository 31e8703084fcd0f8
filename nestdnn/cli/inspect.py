"""`nestdnn inspect`: what a `.nest` file or a nestdnn checkpoint holds, as text or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show what a model file holds. A .nest file: its descendants (widths, params, bytes,"
        " MACs, validation accuracy) and its size against independent models. A checkpoint"
        " (e.g. vanilla.pt, loaded with weights_only=True): model config, size and metadata."
    )
    parser.add_argument("path", type=Path, help="a .nest file or a nestdnn checkpoint (.pt)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_inspect(args: argparse.Namespace) -> int:
    if args.path.suffix == ".nest":
        summary = nest_summary(args.path)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    else:
        info = checkpoint_summary(args.path)
        print(json.dumps(info, indent=2) if args.json else format_checkpoint(args.path, info))
    return 0


def checkpoint_summary(path: Path) -> dict[str, Any]:
    """A checkpoint's model config, params, MACs and metadata."""
    from nestdnn.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    return {
        **model.config.to_dict(),
        "params": model.count_params(),
        "macs": model.count_macs(),
        "meta": meta,
    }


def format_checkpoint(path: Path, info: dict[str, Any]) -> str:
    """The checkpoint summary as text: shape, size, widths, then one line per metadata key."""
    lines = [
        f"{path}: {info['arch']}, {info['in_channels']}x{info['input_size']}x"
        f"{info['input_size']} -> {info['num_classes']} classes",
        f"params {info['params']:,}  MACs {info['macs']:,}",
        "widths " + ", ".join(f"{g}={w}" for g, w in info["widths"].items()),
    ]
    lines += [f"{key}: {json.dumps(value)}" for key, value in info["meta"].items()]
    return "\n".join(lines)


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
