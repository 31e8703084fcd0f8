"""`nestdnn train`: train a vanilla model and record how to reload its data split."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nestdnn.data import DataSpec
    from nestdnn.distributed import Rank

log = logging.getLogger(__name__)


def configure_train(parser: argparse.ArgumentParser) -> None:
    from nestdnn.data import (
        DATASETS,
        DEFAULT_SYNTHETIC_SAMPLES,
        DEFAULT_VAL_FRACTION,
        FASHION_MNIST_DIR,
        LOADERS,
        MEMORY_LIMIT_BYTES,
    )
    from nestdnn.distributed import add_compute_options
    from nestdnn.models import ARCHS

    parser.description = (
        "Train a vanilla model. Writes OUT/vanilla.pt (config + state_dict, loadable with"
        " weights_only=True), OUT/train.json (accuracy, params, MACs, time) and a resumable"
        " OUT/train_state.pt after every epoch: rerunning the same command after an"
        " interruption continues from the last finished epoch. Under torchrun (or with"
        " --nproc N) the processes share every batch and only rank 0 writes."
    )
    model = parser.add_argument_group("model")
    model.add_argument("--arch", required=True, help=f"one of: {', '.join(ARCHS)}")
    model.add_argument(
        "--width-mult", type=float, default=1.0, help="scale every channel group's full width"
    )
    model.add_argument(
        "--widths",
        type=_parse_widths,
        help="per-group widths overriding --width-mult, as JSON ('{\"features.0\": 16}')"
        " or 'group=width,...'",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    data.add_argument(
        "--data-dir",
        help=f"where the data set lives (fashion-mnist default: {FASHION_MNIST_DIR};"
        " cifar10: the directory holding cifar-10-batches-bin; imagefolder: the root)",
    )
    data.add_argument(
        "--classes",
        type=_parse_classes,
        help="keep only these classes (comma-separated names or indices), relabelled in order,"
        " e.g. 'Sandal,Sneaker,Ankle boot'",
    )
    data.add_argument(
        "--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="held out from train"
    )
    data.add_argument("--input-size", type=int, help="resize images to this square size")
    data.add_argument(
        "--loader",
        choices=LOADERS,
        default="auto",
        help="hold the data in memory, or stream an image folder (decoded per batch by"
        f" --workers processes); auto streams an image folder over"
        f" {MEMORY_LIMIT_BYTES >> 30} GiB as float32 tensors. Later stages follow the record",
    )
    data.add_argument(
        "--synthetic-classes", type=int, default=10, help="synthetic data: number of classes"
    )
    data.add_argument(
        "--synthetic-channels", type=int, default=3, help="synthetic data: image channels"
    )
    data.add_argument(
        "--synthetic-samples",
        type=int,
        default=DEFAULT_SYNTHETIC_SAMPLES,
        help="synthetic data: training samples (test: a fifth of it)",
    )
    opt = parser.add_argument_group("training")
    opt.add_argument("--epochs", type=float, default=10.0, help="fractions allowed, e.g. 0.5")
    opt.add_argument("--batch-size", type=int, default=128, help="training batch size")
    opt.add_argument("--lr", type=float, default=0.05, help="initial SGD learning rate")
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    opt.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    opt.add_argument(
        "--schedule", default="cosine", help="learning-rate schedule: cosine or constant"
    )
    opt.add_argument(
        "--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing"
    )
    opt.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random crop with padding and horizontal flip",
    )
    opt.add_argument("--seed", type=int, default=0, help="model init, data order and split")
    opt.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    opt.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars for epochs and steps (default: when stderr is a terminal)",
    )
    add_compute_options(parser)
    parser.add_argument("--out", required=True, type=Path, help="output directory")


def run_train(args: argparse.Namespace) -> int:
    from nestdnn.distributed import run_stage

    return run_stage(args, lambda device, rank: _train(args, device, rank))


def _train(args: argparse.Namespace, device: torch.device, rank: Rank) -> int:
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from nestdnn.checkpoint import save_checkpoint
    from nestdnn.data import data_meta
    from nestdnn.models import build_model, default_widths
    from nestdnn.training import TrainConfig, evaluate, train

    started = time.perf_counter()
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        seed=args.seed,
        threads=args.threads,
        progress=args.progress,
        checkpoint_path=str(args.out / "train_state.pt"),
        device=str(device),
        amp=args.amp,
    )
    config.validate()
    spec = data_spec(args)
    splits = spec.load(workers=args.workers)
    widths = None
    if args.widths is not None:
        widths = default_widths(args.arch, splits.input_size, args.width_mult) | args.widths
    torch.manual_seed(args.seed)
    model = build_model(
        args.arch,
        in_channels=splits.in_channels,
        num_classes=splits.num_classes,
        input_size=splits.input_size,
        width_mult=args.width_mult,
        widths=widths,
    )
    params, macs = model.count_params(), model.count_macs()
    log.info("%s: %.3f M params, %.2f M MACs", args.arch, params / 1e6, macs / 1e6)
    if rank.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
    with logging_redirect_tqdm():
        result = train(model, splits, config)
    test_accuracy = evaluate(model, splits.test, config.eval_batch_size)
    if not rank.is_main:
        return 0
    # enough to reload the same split later (pruning must not see the validation data)
    data = data_meta(spec, splits)
    accuracy = {"val_accuracy": result.val_accuracy, "test_accuracy": test_accuracy}
    checkpoint = save_checkpoint(args.out / "vanilla.pt", model, **data, **accuracy)
    report = {
        "command": shlex.join(["nestdnn", *args.argv]),
        "model": model.config.to_dict(),
        **data,
        **accuracy,
        "params": params,
        "macs": macs,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "device": result.device,
        "amp": result.amp,
        "processes": result.processes,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_config": asdict(config),
        "history": [asdict(s) for s in result.history],
    }
    write_json(args.out / "train.json", report)
    print(
        f"test accuracy {test_accuracy:.2%} (val {_percent(result.val_accuracy)}),"
        f" {params / 1e6:.3f} M params, {macs / 1e6:.2f} M MACs,"
        f" trained {result.seconds:.0f} s -> {checkpoint}"
    )
    return 0


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The data set and split the command line asks for (the split seed is --seed); an image
    folder streams if --loader says so, or by size (see `wants_streaming`)."""
    from nestdnn.data import DataSpec, SyntheticConfig, wants_streaming

    synthetic = None
    if args.dataset == "synthetic":
        synthetic = SyntheticConfig.sized(
            args.synthetic_samples,
            num_classes=args.synthetic_classes,
            in_channels=args.synthetic_channels,
            input_size=args.input_size or SyntheticConfig.input_size,
        )
    large = wants_streaming(args.dataset, args.data_dir, args.input_size)
    return DataSpec(
        name=args.dataset,
        data_dir=args.data_dir or None,
        classes=tuple(args.classes) if args.classes is not None else None,
        input_size=args.input_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        synthetic=synthetic,
        streaming=args.loader == "stream" or (args.loader == "auto" and large),
    )


def _parse_widths(text: str) -> dict[str, int]:
    """'{"g": 16}' or 'g=16,h=32' -> {"g": 16, "h": 32}."""
    try:
        if text.lstrip().startswith("{"):
            widths = json.loads(text)
        else:
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            widths = {name.strip(): int(value) for name, value in pairs}
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"cannot parse widths {text!r}: {e}") from e
    if not isinstance(widths, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in widths.items()
    ):
        raise argparse.ArgumentTypeError(f"widths must map group names to integers: {text!r}")
    return widths


def _parse_classes(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def write_json(path: Path, data: Any) -> None:
    """Write indented JSON atomically."""
    from nestdnn.files import atomic_write

    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, text)
