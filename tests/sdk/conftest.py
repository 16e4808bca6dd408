"""The official clients, installed once and kept: each Python SDK in its own venv, the Node ones via npm.

Installs go to .cache/sdk/ (ignored by git), one folder per requirements or lock file, named by the
file's hash: a changed pin installs afresh, an unchanged one is reused across runs (and shared by
pytest-xdist workers, one installing while the others wait on a file lock). Python SDKs need their
own venvs because customerio and customerio-cdp-analytics both ship customerio/__init__.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import pip_install

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".cache" / "sdk"
PYTHON_SDKS = ("cdp", "segment", "customerio")
INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class Installed:
    """Where one client lives, or why it cannot run here; and how long this run spent installing it."""

    name: str
    path: Path | None
    skip_reason: str | None
    seconds: float

    def require(self) -> Path:
        if self.path is None:
            pytest.skip(self.skip_reason or f"{self.name} is not installed")
        return self.path


def digest(*files: Path) -> str:
    h = hashlib.sha256()
    for file in files:
        h.update(file.read_bytes())
    return h.hexdigest()[:16]


@contextmanager
def locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(command: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if done.returncode != 0:
        lines = [
            line
            for line in (done.stderr + done.stdout).splitlines()
            if not line.startswith("WARNING: Location")
        ]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n" + "\n".join(lines[-20:]))


def python_sdk(name: str) -> Installed:
    """python -m venv + tests/sdk/requirements-<name>.txt installed (uv, else pip), unless already done."""
    started = time.monotonic()
    requirements = HERE / f"requirements-{name}.txt"
    venv = CACHE / f"{name}-{digest(requirements)}"
    python = venv / "bin" / "python"
    with locked(name):
        if not (venv / ".installed").exists():
            run([sys.executable, "-m", "venv", "--clear", str(venv)])
            failed = pip_install(python, [requirements])
            if failed:
                raise RuntimeError(failed)
            (venv / ".installed").write_text(requirements.read_text())
    return Installed(name, python, None, time.monotonic() - started)


def node_sdks() -> Installed:
    """npm ci of tests/sdk/node/package-lock.json into its own cache folder, unless already done."""
    started = time.monotonic()
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return Installed(
            "node", None, "node/npm is not installed on this machine: the Node SDK tests need it", 0.0
        )
    source = HERE / "node"
    target = CACHE / f"node-{digest(source / 'package.json', source / 'package-lock.json')}"
    with locked("node"):
        if not (target / ".installed").exists():
            target.mkdir(parents=True, exist_ok=True)
            for name in ("package.json", "package-lock.json"):
                shutil.copy2(source / name, target / name)
            run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"], cwd=target)
            (target / ".installed").write_text("")
    return Installed("node", target / "node_modules", None, time.monotonic() - started)


@pytest.fixture(scope="session")
def sdks() -> dict[str, Installed]:
    """Every client, installed in parallel the first time (and found again at once afterwards)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {name: pool.submit(python_sdk, name) for name in PYTHON_SDKS}
        jobs["node"] = pool.submit(node_sdks)
        installed = {name: job.result() for name, job in jobs.items()}
    spent = ", ".join(f"{i.name} {i.seconds:.1f} s" for i in installed.values())
    print(f"\ntests/sdk: clients ready ({spent})", file=sys.stderr)
    return installed


def node_environment(modules: Path) -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(modules)}
