"""A small synchronous client of the daemon's REST API, for apps, tests and the demo.

    client = DaemonClient("http://127.0.0.1:8000")
    app = client.register("fmnist-vgg16", target_latency_ms=50)
    result = client.infer(app.id, frame)          # np.ndarray (C, H, W) or an image path
    client.unregister(app.id)

The client remembers each registered app's token; pass ``token=`` to act on an app
registered elsewhere, ``registration_token=`` (or ``admin_token=``) to register apps when the
daemon runs with ``--registration token`` (its default), ``admin_token=`` for `set_schedule`.
Errors are RFC 9457 problem details: `ApiError` has their status, detail and whole body.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ApiError(Exception):
    """A 4xx/5xx answer: the status, the server's message and the whole body."""

    def __init__(self, status: int, detail: str, body: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


@dataclass(frozen=True)
class Registration:
    """A registered app: its id and token and the plan's first assignment."""

    id: str
    token: str
    descendant: int
    share: float
    info: dict[str, Any]


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy encoding of one array."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class DaemonClient:
    """Talks to one daemon; ``http`` may be any httpx.Client (e.g. FastAPI's TestClient)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 30.0,
        admin_token: str | None = None,
        registration_token: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.admin_token = admin_token
        self.registration_token = registration_token
        self.tokens: dict[str, str] = {}

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- apps

    def register(
        self,
        model: str,
        *,
        target_latency_ms: float | None = None,
        fps: float | None = None,
        priority: float = 1.0,
        min_accuracy: float | None = None,
        name: str | None = None,
    ) -> Registration:
        """Register an app (with the registration or admin token, if given) and remember
        its token."""
        body = {
            "model": model,
            "target_latency_ms": target_latency_ms,
            "fps": fps,
            "priority": priority,
            "min_accuracy": min_accuracy,
            "name": name,
        }
        data = self._call(
            "POST",
            "/v1/apps",
            json={k: v for k, v in body.items() if v is not None},
            token=self.registration_token or self.admin_token,
        )
        self.tokens[data["id"]] = data["token"]
        return Registration(data["id"], data["token"], data["descendant"], data["share"], data)

    def apps(self) -> list[dict[str, Any]]:
        """Every registered app with its live counters."""
        return self._call("GET", "/v1/apps")

    def app(self, app_id: str) -> dict[str, Any]:
        """One app with its live counters."""
        return self._call("GET", f"/v1/apps/{app_id}")

    def update(self, app_id: str, *, token: str | None = None, **changes: float) -> dict[str, Any]:
        """Change priority, target_latency_ms or fps."""
        return self._call(
            "PATCH", f"/v1/apps/{app_id}", json=changes, token=self._token(app_id, token)
        )

    def unregister(self, app_id: str, *, token: str | None = None) -> None:
        """Unregister an app and forget its token."""
        self._call("DELETE", f"/v1/apps/{app_id}", token=self._token(app_id, token))
        self.tokens.pop(app_id, None)

    def infer(
        self,
        app_id: str,
        frame: np.ndarray | str | Path,
        *,
        top_k: int | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Run one frame: an array (sent as .npy) or a PNG/JPEG file path."""
        if isinstance(frame, np.ndarray):
            content, kind = npy_bytes(frame), "application/x-npy"
        else:
            path = Path(frame)
            kind = _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
            content = path.read_bytes()
        params = {} if top_k is None else {"top_k": top_k}
        return self._call(
            "POST",
            f"/v1/apps/{app_id}/infer",
            content=content,
            params=params,
            headers={"content-type": kind},
            token=self._token(app_id, token),
        )

    # ---------------------------------------------------------------- daemon

    def schedule(self) -> dict[str, Any]:
        """Policy, alpha, budget, objective and the per-app plan."""
        return self._call("GET", "/v1/schedule")

    def set_schedule(
        self,
        *,
        policy: str | None = None,
        method: str | None = None,
        alpha: float | None = None,
        memory_budget_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Change policy, method, alpha or budget (needs the admin token)."""
        body = {
            "policy": policy,
            "method": method,
            "alpha": alpha,
            "memory_budget_bytes": memory_budget_bytes,
        }
        return self._call(
            "PUT",
            "/v1/schedule",
            token=self.admin_token,
            json={k: v for k, v in body.items() if v is not None},
        )

    def reload(self) -> dict[str, Any]:
        """Rescan the models directory (needs the admin token): what changed, and the plan."""
        return self._call("POST", "/v1/admin/reload", token=self.admin_token)

    def models(self) -> dict[str, Any]:
        """Servable models and rejected files."""
        return self._call("GET", "/v1/models")

    def model(self, name: str) -> dict[str, Any]:
        """One model and its descendant table."""
        return self._call("GET", f"/v1/models/{name}")

    def health(self) -> dict[str, Any]:
        """Liveness."""
        return self._call("GET", "/healthz")

    def metrics(self) -> str:
        """Prometheus text."""
        response = self.http.get("/metrics")
        self._check(response)
        return response.text

    # ---------------------------------------------------------------- internals

    def _token(self, app_id: str, token: str | None) -> str | None:
        return token or self.tokens.get(app_id) or self.admin_token

    def _call(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["authorization"] = f"Bearer {token}"
        response = self.http.request(method, path, headers=headers, **kwargs)
        self._check(response)
        return None if response.status_code == 204 else response.json()

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            body = detail = response.text
        raise ApiError(response.status_code, str(detail), body)
