"""The `nestdnn` command: one subcommand per stage; the only package that imports every stage.

Every command has a module exposing `configure_<command>(parser)` and `run_<command>(args) ->
int`: the stage packages' `cli` modules (pruning, recovery, profiles, scheduler, api), and
for the core's own commands the modules of this package (train, import, inspect, export,
demo). A command's module is imported only when that command is chosen, so `nestdnn --help`
stays fast. A NestError anywhere ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nestdnn.errors import NestError

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its one-line summary and the module implementing it."""

    name: str
    summary: str
    module: str  # where configure_<name> / run_<name> live


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help, unless the default is None or False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default != argparse.SUPPRESS:
            text += " (default: %(default)s)"
        return text


COMMANDS = (
    Command("train", "train a vanilla model on a data set", "nestdnn.cli.train"),
    Command("import", "import a torchvision model's fine-tuned weights", "nestdnn.cli.import_"),
    Command("prune", "TRR filter pruning: seed model and roadmap", "pruning.cli"),
    Command("recover", "freeze-&-grow: build the multi-capacity model", "recovery.cli"),
    Command("inspect", "show what a .nest file or a checkpoint holds", "nestdnn.cli.inspect"),
    Command("profile", "profile every descendant: accuracy, memory, MACs, latency", "profiles.cli"),
    Command("export", "export descendants to TFLite, ONNX or checkpoints", "nestdnn.cli.export"),
    Command("schedule", "solve a schedule for a set of apps", "scheduler.cli"),
    Command("trace", "write a random app trace to simulate", "scheduler.cli"),
    Command("simulate", "replay an app trace through the scheduler", "scheduler.cli"),
    Command("serve", "run the scheduler daemon and its REST API", "api.cli"),
    Command("demo", "run the whole pipeline end to end", "nestdnn.cli.demo"),
)


EXTRAS: dict[str, str] = {
    "torch": "train", "torchvision": "train", "tqdm": "train", "matplotlib": "train",
    "litert_torch": "export", "tflite_runtime": "tflite", "ai_edge_litert": "tflite",
}
"""Top-level packages of the optional installs, and the extra that brings each: the device
install (`pip install nestdnn`) serves models; training stages need `nestdnn[train]`."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nestdnn` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, handlers = build_parser(_chosen_command(argv))
    except ModuleNotFoundError as e:
        return _fail(_missing_extra(e, _chosen_command(argv)))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv
    _setup_logging(args.verbose - args.quiet)
    try:
        return handlers[args.command](args)
    except NestError as e:
        return _fail(str(e))
    except ModuleNotFoundError as e:
        return _fail(_missing_extra(e, args.command))
    except OSError as e:  # unwritable output, full disk, ...: the user's environment
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except KeyboardInterrupt:
        print("nestdnn: interrupted", file=sys.stderr)
        return 130


def build_parser(command: str | None) -> tuple[argparse.ArgumentParser, dict[str, Run]]:
    """The top-level parser; only `command`'s stage is imported and configured."""
    parser = argparse.ArgumentParser(
        prog="nestdnn",
        description="Multi-capacity models and a resource-aware scheduler for"
        " multi-tenant on-device vision (after NestDNN, MobiCom 2018).",
        epilog="Run 'nestdnn COMMAND --help' for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers: dict[str, Run] = {}
    for cmd in COMMANDS:
        sub_parser = sub.add_parser(
            cmd.name,
            help=cmd.summary,
            description=cmd.summary[0].upper() + cmd.summary[1:] + ".",
            formatter_class=HelpFormatter,
        )
        if cmd.name != command:
            continue
        configure, run = _load_stage(cmd)
        configure(sub_parser)
        handlers[cmd.name] = run
    return parser, handlers


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (top-level options take no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _load_stage(cmd: Command) -> tuple[Configure, Run]:
    """`configure_<name>` and `run_<name>` from the command's module (imported now)."""
    module = importlib.import_module(cmd.module)
    return getattr(module, f"configure_{cmd.name}"), getattr(module, f"run_{cmd.name}")


def _missing_extra(error: ModuleNotFoundError, command: str | None) -> str:
    """The one-line answer to a package that is not installed: the extra that brings it, or
    the error itself (re-raised) when it is not an optional package of ours."""
    package = (error.name or "").split(".")[0]
    extra = EXTRAS.get(package)
    if extra is None:
        raise error
    return (f"'nestdnn {command}' needs {package}, which this install lacks:"
            f" pip install 'nestdnn[{extra}]'")


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger().setLevel(level)


def _fail(message: str) -> int:
    print(f"nestdnn: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
