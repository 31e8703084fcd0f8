"""Run `nestdnn serve` as a child process on loopback: used by the demo and the benchmarks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from api.auth import ADMIN_TOKEN_ENV, REGISTRATION_TOKEN_ENV
from nestdnn.errors import NestError

log = logging.getLogger(__name__)


def nestdnn_command() -> list[str]:
    """The `nestdnn` console script of this interpreter (or `python -m nestdnn.cli`)."""
    script = Path(sys.executable).with_name("nestdnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nestdnn.cli"]


class ServeProcess:
    """A `nestdnn serve` child on 127.0.0.1 with the given admin (and registration) token; a
    context manager that stops it gracefully."""

    def __init__(
        self,
        models: Path,
        state_dir: Path,
        port: int,
        log_path: Path,
        *,
        admin_token: str,
        registration_token: str | None = None,
        extra_args: Sequence[str] = (),
        source: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        """``source``: another checkout of the project to run the daemon from (``python -m
        nestdnn.cli`` in that directory), e.g. to measure an older commit; ``command``: the
        `nestdnn` command of another installation (e.g. a device install's virtual
        environment). By default this interpreter's."""
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.admin_token = admin_token
        self.registration_token = registration_token
        self.source = source
        if command is None:
            command = (nestdnn_command() if source is None
                       else [sys.executable, "-m", "nestdnn.cli"])
        self.argv = [
            *command,
            "serve",
            "--models",
            str(models),
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            *extra_args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout_s: float = 120.0, poll_s: float = 0.2) -> ServeProcess:
        """Start the daemon and wait until /healthz answers, asking every ``poll_s`` seconds
        (lower it to time the start finely)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, ADMIN_TOKEN_ENV: self.admin_token}
        if self.registration_token:
            env[REGISTRATION_TOKEN_ENV] = self.registration_token
        with self.log_path.open("wb") as sink:
            self.process = subprocess.Popen(
                self.argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=self.source
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NestError(f"nestdnn serve exited at start: {self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(poll_s)
        self.stop()
        raise NestError(f"nestdnn serve did not answer within {timeout_s:.0f} s ({self.log_path})")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful: in-flight requests finish, state saved); SIGKILL after a timeout.
        The exit status (negative: the signal that ended it), None if never started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("nestdnn serve did not stop within %.0f s of SIGTERM; killed", timeout_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> int:
        """SIGKILL, as a crash or a power cut would end it (nothing saved on the way out);
        the exit status."""
        assert self.process is not None, "not started"
        self.process.kill()
        return self.process.wait()

    def _log_tail(self, lines: int = 3) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or f"no output (see {self.log_path})"

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
