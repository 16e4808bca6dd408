"""The official SDKs, each in its own venv (both ship customerio/__init__.py), run as subprocesses."""

from __future__ import annotations

import hashlib
import json
import os

# The SDK venvs and workers are subprocesses.
import subprocess  # nosec B404
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.fake import PIPELINES_KEY, SITE_ID, TRACK_KEY
from bench.workload import events

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
LOOP_SCRIPT = HERE / "sdk_loop.py"


@dataclass(frozen=True)
class SDK:
    name: str  # customerio | cdp
    requirements: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


SDKS = {
    "customerio": SDK(
        "customerio", HERE / "requirements-sdk-customerio.txt", ROOT / ".venv-bench-customerio"
    ),
    "cdp": SDK("cdp", HERE / "requirements-sdk-cdp.txt", ROOT / ".venv-bench-cdp"),
}


def ensure_venv(sdk: SDK) -> str | None:
    """Create the venv and pip install its pinned requirements (skipped when unchanged).

    Returns None when ready, or why it is not (printed in the report instead of that SDK's rows).
    """
    digest = hashlib.sha256(sdk.requirements.read_bytes()).hexdigest()
    stamp = sdk.venv / ".bench-installed"
    if sdk.python.exists() and stamp.exists() and stamp.read_text() == digest:
        return None
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(sdk.venv)],
        [str(sdk.python), "-m", "pip", "install", "--quiet", "-r", str(sdk.requirements)],
    ]
    for step in steps:
        # python -m venv, then pip install -r <the pinned file>.
        done = subprocess.run(  # nosec B603
            step, capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            return f"could not install {sdk.requirements.name}: {(done.stderr or done.stdout).strip()[-300:]}"
    stamp.write_text(digest)
    return None


class Worker:
    """One SDK mode in a subprocess of its venv; run(n) times one run over n events (see sdk_loop.py)."""

    def __init__(self, sdk: SDK, mode: str, fake_url: str, max_events: int) -> None:
        self.mode = mode
        self._command = [str(sdk.python), "-I", str(LOOP_SCRIPT)]
        self._config = {
            "sdk": mode,
            "url": fake_url,
            "events": events(max_events),
            "site_id": SITE_ID,
            "track_key": TRACK_KEY,
            "write_key": PIPELINES_KEY,
        }
        self.version = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Worker:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        # The SDK venv's python running sdk_loop.py.
        self._proc = subprocess.Popen(  # nosec B603
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE
        )
        self.version = str(self._exchange(self._config)["version"])
        return self

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._proc is None or self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError(f"the {self.mode} worker is not running")
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.mode} worker stopped (exit status {self._proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, count: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the worker process) of one run over `count` events."""
        answer = self._exchange({"count": count})
        return float(answer["wall"]), float(answer["cpu"])

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is None:
            return
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
