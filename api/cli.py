"""`nestdnn serve`: load the models, start the runtime and serve the REST API with uvicorn."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import os
import re
import resource
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from api.app import create_app
from api.auth import REGISTRATION_MODES
from api.daemon import LOOPBACK_NAMES, ApiSettings, Daemon
from api.server import ConnectionGuard, guarded_protocol
from nestdnn.errors import NestError
from profiles.schema import BACKENDS, DEFAULT_BACKEND
from scheduler.daemon import OVERFLOWS, ModelCatalogue, Runtime, RuntimeSettings
from scheduler.problem import METHODS, POLICIES

log = logging.getLogger(__name__)

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
GRACEFUL_SHUTDOWN_S = 30
BACKLOG = 128
FD_RESERVE = 64
"""File descriptors kept for everything but client connections (model files, state, logs)."""
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def parse_size(text: str) -> int:
    """Bytes from '64MB' (SI, 10^6), '512KiB' / '512K' (binary, 2^10) or a plain number."""
    match = _SIZE.match(text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a number with an optional unit, e.g. 64MB, 512KiB, 1G"
        )
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/nestdnn, else ~/.local/state/nestdnn."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "nestdnn"


def configure_serve(parser: argparse.ArgumentParser) -> None:
    """Add the options of `nestdnn serve`."""
    parser.add_argument(
        "--models",
        type=Path,
        required=True,
        help="directory of NAME.nest + NAME.profile.json pairs",
    )
    parser.add_argument(
        "--memory-budget",
        type=parse_size,
        default="64MiB",
        metavar="SIZE",
        help="model memory budget, e.g. 64MB (SI) or 64MiB",
    )
    parser.add_argument(
        "--policy", choices=POLICIES, default="min-total-cost", help="scheduling objective"
    )
    parser.add_argument("--method", choices=METHODS, default="exact", help="solver")
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of latency excess")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="inference backend: onnxruntime (fastest here, no torch needed), torch (eager,"
        " in-place upgrades; needs the train extra) or tflite (needs the export extra)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="apps, token hashes, the admin and registration tokens are kept here",
    )
    parser.add_argument("--queue-size", type=int, default=4, help="frames queued per app")
    parser.add_argument(
        "--overflow",
        choices=OVERFLOWS,
        default="drop-oldest",
        help="full queue: drop the oldest frame, or refuse the new one",
    )
    parser.add_argument("--threads", type=int, default=1, help="inference threads")
    parser.add_argument(
        "--max-body",
        type=parse_size,
        default="8MiB",
        metavar="SIZE",
        help="largest request body accepted (413 above)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--registration",
        choices=REGISTRATION_MODES,
        default="token",
        help="token (default): creating an app needs the registration token "
        "(STATE_DIR/registration-token or $NESTDNN_REGISTRATION_TOKEN) or the admin token; "
        "open: any local process may, at a priority of at most --open-priority-cap",
    )
    parser.add_argument(
        "--open-priority-cap",
        type=float,
        default=1.0,
        help="highest priority an app may claim without a token (--registration open)",
    )
    parser.add_argument(
        "--allowed-hosts",
        default="",
        metavar="NAMES",
        help="comma-separated Host header names answered besides the loopback names and "
        "--host ('*': any; refused hosts get 421, the DNS-rebinding guard)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=default_max_connections(),
        help="open connections at most; beyond, the longest-idle one is closed (256, or the"
        f" descriptor limit minus {FD_RESERVE} if lower)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=ApiSettings.max_image_pixels,
        help="absolute cap on a frame's pixels; the cap per model is "
        f"{ApiSettings.pixels_per_input_pixel} times its input H x W if lower",
    )
    parser.add_argument(
        "--decode-slots",
        type=int,
        default=ApiSettings.decode_slots,
        help="image and large-frame decodes run at once at most (each may take a few MB)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=ApiSettings.header_timeout_s,
        metavar="SECONDS",
        help="a connection that does not complete a request's headers in time is closed",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=ApiSettings.body_timeout_s,
        metavar="SECONDS",
        help="a request body that does not arrive in time gets 408",
    )


def default_max_connections() -> int:
    """256, or fewer when the process's descriptor limit leaves less than that."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(8, min(256, soft - FD_RESERVE))


def api_settings(args: argparse.Namespace) -> ApiSettings:
    """The HTTP layer's settings from `nestdnn serve`'s options."""
    for name in ("max_connections", "max_image_pixels", "decode_slots"):
        if getattr(args, name) < 1:
            raise NestError(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.header_timeout, args.body_timeout, args.open_priority_cap) <= 0:
        raise NestError("--header-timeout, --body-timeout and --open-priority-cap must be > 0")
    extra = [name.strip() for name in args.allowed_hosts.split(",") if name.strip()]
    bound = [] if args.host in WILDCARD_HOSTS else [args.host]
    return ApiSettings(
        state_dir=args.state_dir,
        registration=args.registration,
        open_priority_cap=args.open_priority_cap,
        allowed_hosts=(*LOOPBACK_NAMES, *bound, *extra),
        max_body_bytes=args.max_body,
        body_timeout_s=args.body_timeout,
        max_image_pixels=args.max_image_pixels,
        decode_slots=args.decode_slots,
        max_connections=args.max_connections,
        header_timeout_s=args.header_timeout,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a NestError that says clearly why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise NestError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise NestError(
                f"port {port} on {host} is already in use (another nestdnn serve?);"
                " stop it or pick another --port"
            ) from None
        raise NestError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on %s, not loopback: other machines can reach the API", host)
    return sock


def fast_paths() -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn picks ("auto"): uvloop and httptools when
    installed (dependencies of nestdnn; each costs the event loop, and so the inference
    worker waiting for the GIL, less CPU per request), else asyncio and h11."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def load_catalogue(models: Path) -> ModelCatalogue:
    """The servable models of a directory (bad pairs are logged); a NestError when none."""
    catalogue = ModelCatalogue.load(models)
    if not catalogue.entries:
        raise NestError(f"no servable model in {models} (NAME.nest + NAME.profile.json pairs)")
    return catalogue


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; in-flight requests finish and the state is saved on the way out.

    The runtime starts (catalogue, token hashes, restored apps) before the HTTP server, so a
    start-up failure is one line and exit 2, never a server that exits with a traceback."""
    settings = api_settings(args)
    catalogue = load_catalogue(args.models)
    sock = bind(args.host, args.port)
    try:
        app = create_app(Runtime(catalogue, runtime_settings(args)), settings)
        daemon: Daemon = app.state.daemon
        daemon.start()
        try:
            reload_on_sighup(daemon)
            serve(app, daemon, sock, args, settings)
        finally:
            daemon.stop()
    finally:
        sock.close()
    return 0


def runtime_settings(args: argparse.Namespace) -> RuntimeSettings:
    """The runtime's settings from `nestdnn serve`'s options."""
    return RuntimeSettings(
        memory_budget_bytes=args.memory_budget,
        policy=args.policy,
        method=args.method,
        alpha=args.alpha,
        backend=args.backend,
        state_dir=args.state_dir,
        queue_size=args.queue_size,
        threads=args.threads,
        overflow=args.overflow,
    )


def reload_on_sighup(daemon: Daemon) -> None:
    """SIGHUP reloads the models, in a thread of its own (the handler runs on the thread of
    the event loop, which must not wait for a reload); a failed reload is logged."""

    def reload() -> None:
        try:
            daemon.reload("SIGHUP")
        except NestError as exc:
            log.error("%s", exc)

    def handle(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=reload, name="nestdnn-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, handle)


def serve(
    app: FastAPI,
    daemon: Daemon,
    sock: socket.socket,
    args: argparse.Namespace,
    settings: ApiSettings,
) -> None:
    """Run uvicorn on the bound socket until SIGINT or SIGTERM."""
    metrics = daemon.metrics
    guard = ConnectionGuard(
        settings.max_connections,
        settings.header_timeout_s,
        settings.max_header_bytes,
        on_close=lambda reason: metrics.connections_closed.labels(reason).inc(),
    )
    config = uvicorn.Config(
        app,
        http=guarded_protocol(AutoHTTPProtocol, guard),
        ws="none",
        log_config=None,
        access_log=args.access_log,
        backlog=BACKLOG,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        server_header=False,
    )
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    log.info(
        "nestdnn serve on http://%s:%d (budget %d bytes, policy %s, backend %s, models %s;"
        " registration %s, at most %d connections; event loop %s, HTTP parser %s)",
        host,
        port,
        args.memory_budget,
        args.policy,
        args.backend,
        ", ".join(sorted(daemon.catalogue.entries)),
        settings.registration,
        settings.max_connections,
        *fast_paths(),
    )
    server.run(sockets=[sock])
    if not server.started:
        raise NestError("the daemon failed to start; see the log above")
