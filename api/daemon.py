"""The API's view of the daemon: the runtime plus tokens, metrics and re-plan logging."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from api.auth import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE,
    REGISTRATION_TOKEN_ENV,
    REGISTRATION_TOKEN_FILE,
    TOKENS_FILE,
    Authenticator,
    Registration,
    RegistrationPolicy,
    TokenStore,
    resolve_token,
)
from api.frames import FrameSpec
from api.metrics import ApiMetrics
from nestdnn.errors import NestError
from scheduler.daemon import (
    AppInfo,
    AppSpec,
    AppStatus,
    CatalogueEntry,
    ModelCatalogue,
    ModelUnavailable,
    Prediction,
    RejectedModel,
    Runtime,
    Snapshot,
    UnknownApp,
)

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ApiSettings:
    """Settings of the HTTP layer, from `nestdnn serve`'s options (the runtime has its own).

    Access: ``registration`` (``token``: creating an app needs the registration or admin
    token; ``open``: anyone may, at a priority of at most ``open_priority_cap``) and
    ``allowed_hosts`` (Host header names, any port; ``*`` allows any). Limits: request bodies
    (bytes, seconds to arrive, bytes of all requests in progress together), JSON frames,
    image pixels (``pixels_per_input_pixel`` times the model's H x W, never more than
    ``max_image_pixels``), concurrent decodes; and for the server below the app,
    connections, header bytes and seconds, keep-alive idle seconds (see `api.server`).
    """

    state_dir: Path
    registration: Registration = "token"
    open_priority_cap: float = 1.0
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    max_body_bytes: int = 8 << 20
    body_timeout_s: float = 30.0
    max_json_frame_bytes: int = 1 << 20
    max_image_pixels: int = 1024 * 1024
    pixels_per_input_pixel: int = 256
    decode_slots: int = 2
    max_connections: int = 256
    max_header_bytes: int = 64 << 10
    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    top_k: int = 5

    @property
    def body_bytes_in_flight(self) -> int:
        """The most body bytes all requests in progress may hold together: 8 bodies of the
        largest size (503 beyond)."""
        return 8 * self.max_body_bytes

    def image_pixels(self, height: int, width: int) -> int:
        """The most pixels a frame for a model of input H x W may have."""
        derived = self.pixels_per_input_pixel * height * width
        return max(height * width, min(derived, self.max_image_pixels))


class ReloadFailed(ModelUnavailable):
    """The models could not be reloaded (e.g. the models directory is gone); the models in
    force stay (503)."""


@dataclass(frozen=True)
class Reloaded:
    """What a reload changed: models by name, the files rejected now, the new plan."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    rejected: list[RejectedModel]
    snapshot: Snapshot


class Daemon:
    """Everything the routers need, shared through ``app.state.daemon``."""

    def __init__(self, runtime: Runtime, settings: ApiSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics = ApiMetrics(runtime.snapshot)
        self.tokens = TokenStore(settings.state_dir / TOKENS_FILE)
        self.auth: Authenticator | None = None
        self.registration = RegistrationPolicy(settings.registration, settings.open_priority_cap)
        self.decodes = asyncio.Semaphore(settings.decode_slots)
        self.started = time.monotonic()
        self._running = False

    @property
    def catalogue(self) -> ModelCatalogue:
        """The models served now (a reload replaces the runtime's catalogue)."""
        return self.runtime.catalogue

    @property
    def running(self) -> bool:
        """Whether the runtime has started and not stopped (the daemon can infer)."""
        return self._running

    def start(self) -> None:
        """Load the app token hashes, then start the runtime (restoring apps); a NestError
        when either cannot be read. Starting again does nothing (`nestdnn serve` starts the
        daemon before the HTTP server, whose lifespan calls this too)."""
        if self._running:
            return
        state_dir = self.settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authenticator(
            self.tokens,
            resolve_token(state_dir, ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE, "admin"),
            resolve_token(
                state_dir, REGISTRATION_TOKEN_ENV, REGISTRATION_TOKEN_FILE, "registration"
            ),
            self.app_exists,
            self.registration,
        )
        self.tokens.load()
        self.runtime.start()
        self._running = True
        apps = self.runtime.snapshot().apps
        self._warn_tokenless([app.id for app in apps])
        log.info("serving %d models, %d apps restored", len(self.catalogue.entries), len(apps))
        self.log_plan("start", None)

    def _warn_tokenless(self, app_ids: list[str]) -> None:
        """Name the registered apps that have no token hash: registered when the daemon
        stopped before answering, or the token files were removed (only the admin token acts
        on them)."""
        tokenless = [app_id for app_id in app_ids if not self.tokens.has(app_id)]
        if tokenless:
            log.warning(
                "%d registered apps have no token (their registration was never answered, or"
                " the token files were removed); only the admin token acts on them: %s",
                len(tokenless),
                ", ".join(tokenless),
            )

    def stop(self) -> None:
        """Let in-flight jobs finish and persist the runtime's state (once)."""
        if not self._running:
            return
        self._running = False
        self.runtime.stop()
        log.info("runtime stopped, state saved")

    def reload(self, source: str) -> Reloaded:
        """Rescan the models directory (`Runtime.reload`) and re-plan; ``source`` (e.g.
        "SIGHUP", "admin") is logged. `ReloadFailed` when the models cannot be read."""
        before = {name: entry.sha256 for name, entry in self.catalogue.entries.items()}
        try:
            snap = self.runtime.reload()
        except NestError as exc:
            raise ReloadFailed(f"reload failed: {exc}") from exc
        after = {name: entry.sha256 for name, entry in self.catalogue.entries.items()}
        reloaded = Reloaded(
            added=sorted(set(after) - set(before)),
            changed=sorted(n for n in set(after) & set(before) if after[n] != before[n]),
            removed=sorted(set(before) - set(after)),
            rejected=list(self.catalogue.rejected),
            snapshot=snap,
        )
        log.info(
            "models reloaded (%s): added [%s], changed [%s], removed [%s], %d rejected",
            source,
            ", ".join(reloaded.added),
            ", ".join(reloaded.changed),
            ", ".join(reloaded.removed),
            len(reloaded.rejected),
        )
        self.log_plan("reload", None, snap)
        return reloaded

    def app_exists(self, app_id: str) -> bool:
        """Whether an app with this id is registered."""
        try:
            self.runtime.info(app_id)
        except UnknownApp:
            return False
        return True

    def register(self, spec: AppSpec) -> tuple[AppInfo, str]:
        """Register an app with the runtime and issue its token."""
        info = self.runtime.register(spec)
        token = self.tokens.issue(info.id)
        self.log_plan("register", info.id)
        return info, token

    def update(self, app_id: str, **changes: float | None) -> AppInfo:
        """Change an app's priority or targets (re-plans)."""
        info = self.runtime.update(app_id, **changes)
        self.log_plan("update", app_id)
        return info

    def unregister(self, app_id: str) -> None:
        """Remove an app, its token and its latency series (re-plans)."""
        self.runtime.unregister(app_id)
        self.tokens.revoke(app_id)
        self.metrics.forget_app(app_id)
        self.log_plan("unregister", app_id)

    def set_policy(self, **changes: object) -> Snapshot:
        """Change the policy, alpha or budget (re-plans)."""
        snap = self.runtime.set_policy(**changes)
        self.log_plan("set_policy", None, snap)
        return snap

    def status(self, app_id: str) -> AppStatus:
        """One app's live status."""
        for app in self.runtime.snapshot().apps:
            if app.id == app_id:
                return app
        raise UnknownApp(f"no app with id {app_id!r}")

    def entry(self, app_id: str) -> CatalogueEntry:
        """The catalogue entry of an app's model."""
        return self.runtime.entry(app_id)

    def frame_spec(self, entry: CatalogueEntry) -> FrameSpec:
        """What frames for this model must look like."""
        c, h, w = entry.input_shape
        pixels = self.settings.image_pixels(h, w)
        return FrameSpec(c, h, w, tuple(entry.mean), tuple(entry.std), max_pixels=pixels)

    def submit(self, app_id: str, frame: np.ndarray) -> Future[Prediction]:
        """Queue one normalised (C, H, W) float32 frame for an app."""
        return self.runtime.submit(app_id, frame)

    def log_plan(self, event: str, app_id: str | None, snap: Snapshot | None = None) -> None:
        """Log the plan now applied, in one line, and count the re-plan."""
        snap = snap or self.runtime.snapshot()
        if event != "start":
            self.metrics.replans.labels(event).inc()
        plan = ", ".join(f"{a.id}:{a.model}:d{a.descendant}@{a.share:.2f}" for a in snap.apps)
        objective = "n/a" if snap.objective is None else f"{snap.objective:.4f}"
        log.info(
            "re-plan event=%s app=%s policy=%s alpha=%g objective=%s feasible=%s bytes=%d/%d "
            "plan=[%s]",
            event,
            app_id or "-",
            snap.policy,
            snap.alpha,
            objective,
            snap.feasible,
            snap.accounted_bytes,
            snap.memory_budget_bytes,
            plan,
        )
