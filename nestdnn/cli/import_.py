"""`nestdnn import`: a torchvision model's fine-tuned weights as a checkpoint to prune."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from nestdnn.errors import NestError


def configure_import(parser: argparse.ArgumentParser) -> None:
    from nestdnn.importers import IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_MODELS

    sources = "|".join(TORCHVISION_MODELS)
    parser.description = (
        "Import a torchvision model's state_dict, saved to a local file, as a nestdnn"
        " checkpoint: OUT/vanilla.pt (what 'nestdnn prune --model' takes) and OUT/import.json."
        " The classes are read from the classifier; the imported model computes exactly what"
        " torchvision's does. Nothing is downloaded, and no pickled code is ever run: the file"
        " is read with weights_only=True, or as safetensors."
    )
    parser.add_argument("source", help=f"torchvision:{{{sources}}}")
    parser.add_argument(
        "--weights",
        required=True,
        type=Path,
        help="the state_dict: torch.save(model.state_dict(), 'FILE.pt') or a .safetensors file",
    )
    parser.add_argument(
        "--input-size", type=int, default=224, help="the square input size the model was tuned at"
    )
    parser.add_argument(
        "--mean",
        type=_floats,
        default=IMAGENET_MEAN,
        help="per-channel mean the inputs were normalised with (comma-separated)",
    )
    parser.add_argument(
        "--std", type=_floats, default=IMAGENET_STD, help="per-channel std, likewise"
    )
    names = parser.add_mutually_exclusive_group()
    names.add_argument(
        "--class-names",
        type=_names,
        help="comma-separated, in the classifier's order (for an image folder: the class"
        " folders' names, sorted, as torchvision's ImageFolder orders them)",
    )
    names.add_argument("--class-names-file", type=Path, help="one class name per line")
    parser.add_argument("--out", required=True, type=Path, help="output directory")


def run_import(args: argparse.Namespace) -> int:
    from nestdnn.checkpoint import save_checkpoint
    from nestdnn.files import atomic_write
    from nestdnn.importers import Normalization, import_torchvision

    class_names = args.class_names
    if args.class_names_file is not None:
        class_names = read_class_names(args.class_names_file)
    model, meta = import_torchvision(
        args.source,
        args.weights,
        input_size=args.input_size,
        normalization=Normalization(tuple(args.mean), tuple(args.std)),
        class_names=class_names,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(args.out / "vanilla.pt", model, **meta)
    params, macs = model.count_params(), model.count_macs()
    report = {
        "command": shlex.join(["nestdnn", *args.argv]),
        "weights": str(args.weights),
        "model": model.config.to_dict(),
        **meta,
        "params": params,
        "macs": macs,
    }
    atomic_write(args.out / "import.json", json.dumps(report, indent=2) + "\n")
    config = model.config
    print(
        f"{meta['source']} -> {config.arch}: {config.num_classes} classes,"
        f" {config.in_channels}x{config.input_size}x{config.input_size} inputs,"
        f" {params / 1e6:.3f} M params, {macs / 1e6:.1f} M MACs -> {checkpoint}"
    )
    return 0


def read_class_names(path: Path) -> list[str]:
    """One class name per non-blank line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise NestError(f"cannot read class names from {path}: {e}") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]
