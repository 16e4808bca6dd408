"""The official SDKs, each in its own venv (both ship customerio/__init__.py), run as subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.fake import PIPELINES_KEY, SITE_ID, TRACK_KEY, FakeProcess
from bench.results import Run, median_run
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
        done = subprocess.run(step, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            return f"could not install {sdk.requirements.name}: {(done.stderr or done.stdout).strip()[-300:]}"
    stamp.write_text(digest)
    return None


def run_loop(
    sdk: SDK, mode: str, fake: FakeProcess, count: int, reps: int, warmup: int = 1
) -> tuple[Run, str]:
    """Run one SDK loop `warmup + reps` times over `count` events; returns its median Run and version."""
    config = {
        "sdk": mode,
        "url": fake.url,
        "events": events(count),
        "reps": reps,
        "warmup": warmup,
        "site_id": SITE_ID,
        "track_key": TRACK_KEY,
        "write_key": PIPELINES_KEY,
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    fake.reset()
    done = subprocess.run(
        [str(sdk.python), "-I", str(LOOP_SCRIPT)],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=HERE,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} loop failed: {done.stderr.strip()[-500:]}")
    answer = json.loads(done.stdout)
    total = count * (warmup + reps)
    stats = fake.stats()
    if stats["errors"] or stats["events"] != total:
        raise RuntimeError(f"{mode}: the fake Customer.io saw {stats}, expected {total} events")
    samples = [(r["wall"], r["cpu"]) for r in answer["runs"]]
    return median_run(f"{mode} {count}", count, samples, stats["requests"] / total), str(answer["version"])
