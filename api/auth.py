"""Bearer tokens and who may do what; the FastAPI dependencies that check them.

Three kinds of token: one per app (only its hash is persisted), the admin token, and the
registration token (creates apps, nothing else). Registration needs the registration or the
admin token unless the daemon runs with ``--registration open``; then anyone may register, but
a priority above the open priority cap still needs one of them (see docs/api.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nestdnn.errors import NestError
from nestdnn.files import atomic_write, read_with_backup, write_with_backup
from scheduler.daemon import UnknownApp

log = logging.getLogger(__name__)

TOKENS_FILE = "api-tokens.json"
ADMIN_TOKEN_FILE = "admin-token"
ADMIN_TOKEN_ENV = "NESTDNN_ADMIN_TOKEN"
REGISTRATION_TOKEN_FILE = "registration-token"
REGISTRATION_TOKEN_ENV = "NESTDNN_REGISTRATION_TOKEN"
Registration = Literal["token", "open"]
REGISTRATION_MODES: tuple[Registration, ...] = ("token", "open")
_FORMAT = "nestdnn-api-tokens"


class PriorityAboveCap(NestError):
    """An untrusted caller asked for a priority above the open-registration cap."""


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The SHA-256 hex digest kept instead of the token (tokens are random, so no salt needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def resolve_token(state_dir: Path, env: str, filename: str, what: str) -> str:
    """A token from the environment variable ``env``, else a new one written to
    ``state_dir/filename`` (mode 0600) at every start."""
    from_env = os.environ.get(env, "")
    if from_env:
        log.info("%s token taken from %s", what, env)
        return from_env
    token = new_token()
    path = state_dir / filename
    atomic_write(path, token + "\n", mode=0o600)
    log.info("%s token generated and written to %s (mode 0600)", what, path)
    return token


class TokenStore:
    """App id -> token hash, persisted as JSON in the state dir, written twice (the file and
    its backup, each atomically, mode 0600). A hash is deleted only when its app is deleted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()

    def load(self) -> None:
        """Read the persisted hashes, from the backup when the file is damaged or missing (and
        repair it); none when neither copy exists. Both copies damaged: a NestError, and both
        stay in place (an empty store would refuse every app's token and overwrite them)."""
        hashes = read_with_backup(
            self.path,
            _parse_tokens,
            "app token file",
            if_removed="with no app tokens (the apps stay registered; the admin token acts on"
            " them)",
            mode=0o600,
        )
        with self._lock:
            self._hashes = hashes or {}

    def issue(self, app_id: str) -> str:
        """Create, remember (hashed) and return a token for an app."""
        token = new_token()
        with self._lock:
            self._hashes[app_id] = token_hash(token)
        self._save()
        return token

    def revoke(self, app_id: str) -> None:
        """Forget an app's token (the app was deleted)."""
        with self._lock:
            removed = self._hashes.pop(app_id, None) is not None
        if removed:
            self._save()

    def has(self, app_id: str) -> bool:
        """Whether a token hash is kept for this app."""
        with self._lock:
            return app_id in self._hashes

    def verify(self, app_id: str, token: str) -> bool:
        """Whether the token is this app's (constant-time comparison)."""
        with self._lock:
            expected = self._hashes.get(app_id, "")
        return bool(expected) and hmac.compare_digest(expected, token_hash(token))

    def app_of(self, token: str) -> str | None:
        """The app whose token this is, if any (each kept hash compared in constant time)."""
        digest = token_hash(token)
        with self._lock:
            hashes = list(self._hashes.items())
        return next((app for app, kept in hashes if hmac.compare_digest(kept, digest)), None)

    def _save(self) -> None:
        """Write the latest hashes (writers are serialised; each writes the newest state)."""
        with self._save_lock:
            with self._lock:
                body = {"format": _FORMAT, "version": 1, "apps": dict(self._hashes)}
            write_with_backup(self.path, json.dumps(body, indent=1, sort_keys=True), mode=0o600)


def _parse_tokens(raw: bytes) -> dict[str, str]:
    """The app id -> hash table of a token file; ValueError if it is not one."""
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("not a nestdnn token file")
    apps = data.get("apps")
    if not isinstance(apps, dict):
        raise ValueError("no table of apps")
    if not all(isinstance(v, str) and len(v) == 64 for v in apps.values()):
        raise ValueError("a token hash is not a SHA-256 hex digest")
    return {str(k): v for k, v in apps.items()}


class Authenticator:
    """Decides who a bearer token belongs to and what an untrusted caller may ask for."""

    def __init__(
        self,
        store: TokenStore,
        admin_token: str,
        registration_token: str,
        app_exists: Callable[[str], bool],
        policy: RegistrationPolicy,
    ) -> None:
        self.store = store
        self.app_exists = app_exists
        self.policy = policy
        self._admin_hash = token_hash(admin_token)
        self._registration_hash = token_hash(registration_token)

    def is_admin(self, token: str) -> bool:
        """Whether the token is the admin token (constant-time comparison)."""
        return hmac.compare_digest(self._admin_hash, token_hash(token))

    def may_register(self, token: str) -> bool:
        """Whether the token is the registration or the admin token (constant-time)."""
        digest = token_hash(token)
        registrar = hmac.compare_digest(self._registration_hash, digest)
        return hmac.compare_digest(self._admin_hash, digest) or registrar


@dataclass(frozen=True)
class RegistrationPolicy:
    """Who may register apps, and the highest priority an untrusted caller may set."""

    mode: Registration = "token"
    open_priority_cap: float = 1.0

    def check_priority(self, priority: float | None, *, trusted: bool) -> None:
        """Refuse (`PriorityAboveCap`) a priority above the cap from an untrusted caller in
        open mode (trusted: the registration or admin token at registration, the admin token
        afterwards)."""
        if self.mode == "open" and not trusted and (priority or 0.0) > self.open_priority_cap:
            raise PriorityAboveCap(
                f"priority {priority:g} is above {self.open_priority_cap:g}, the most an app "
                "may claim without the registration or admin token (--registration open)"
            )


@dataclass(frozen=True)
class Caller:
    """Who acts on an app: its own token, or the admin token."""

    app_id: str
    admin: bool


app_bearer = HTTPBearer(
    scheme_name="AppToken",
    auto_error=False,
    description="The token returned when the app was registered (the admin token also works).",
)
registration_bearer = HTTPBearer(
    scheme_name="RegistrationToken",
    auto_error=False,
    description=f"The daemon's registration token ({REGISTRATION_TOKEN_ENV} or "
    f"STATE_DIR/{REGISTRATION_TOKEN_FILE}; the admin token also works). Optional with "
    "--registration open, but needed there for a priority above the open cap.",
)
admin_bearer = HTTPBearer(
    scheme_name="AdminToken",
    auto_error=False,
    description=f"The daemon's admin token ({ADMIN_TOKEN_ENV} or STATE_DIR/{ADMIN_TOKEN_FILE}).",
)


def _authenticator(request: Request) -> Authenticator:
    return request.app.state.daemon.auth


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status_code=401,
            detail="missing bearer token (header 'Authorization: Bearer TOKEN')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def bearer_credentials(authorization: str | None) -> HTTPAuthorizationCredentials | None:
    """The credentials of an ``Authorization`` header value, read as FastAPI's `HTTPBearer`
    reads them (scheme ``Bearer`` in any case, the token stripped), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=token)


def check_app_token(
    auth: Authenticator, app_id: str, credentials: HTTPAuthorizationCredentials | None
) -> Caller:
    """The caller if the credentials are that app's token or the admin token; else 401 (no
    token) or 403 (another token) as an HTTPException, or `UnknownApp` (404)."""
    token = _token(credentials)
    if auth.store.verify(app_id, token):
        return Caller(app_id, admin=False)
    if auth.is_admin(token):
        return Caller(app_id, admin=True)
    if not auth.app_exists(app_id):
        raise UnknownApp(f"no app with id {app_id!r}")
    raise HTTPException(status_code=403, detail=f"this token does not belong to app {app_id!r}")


async def require_app_token(
    app_id: str,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(app_bearer)],
) -> Caller:
    """Dependency: the caller holds this app's token (or the admin token)."""
    return check_app_token(_authenticator(request), app_id, credentials)


async def require_registrar(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(registration_bearer)],
) -> bool:
    """Dependency: the caller may register apps; returns whether it is trusted (holds the
    registration or admin token). No token: 401, unless registration is open."""
    auth = _authenticator(request)
    if credentials is None or not credentials.credentials:
        if auth.policy.mode == "open":
            return False
        raise HTTPException(
            status_code=401,
            detail="registering an app needs the registration token or the admin token (header"
            " 'Authorization: Bearer TOKEN'; the daemon runs with --registration token)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not auth.may_register(credentials.credentials):
        raise HTTPException(
            status_code=403, detail="this token cannot register apps: send the registration token"
        )
    return True


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)],
) -> None:
    """Dependency: the caller holds the admin token."""
    if not _authenticator(request).is_admin(_token(credentials)):
        raise HTTPException(status_code=403, detail="this endpoint needs the admin token")


AppCaller = Annotated[Caller, Depends(require_app_token)]
Trusted = Annotated[bool, Depends(require_registrar)]
