"""Fresh-process costs: cold import of each function's handler module against a boto3 baseline, peak RSS."""

from __future__ import annotations

import json
import os

# Fresh interpreters for cold-start and memory probes.
import subprocess  # nosec B404
import sys
from pathlib import Path

from bench.child import MOTO_CREDENTIAL
from bench.context import Bench
from bench.results import TIMES, Section, Spread, at_most, paired, show, table

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"

BASELINE = """
import time
t0, c0 = time.perf_counter(), time.process_time()
import boto3
boto3.client("sqs"); boto3.client("secretsmanager"); boto3.client("dynamodb")
print(time.perf_counter() - t0, time.process_time() - c0)
"""

BOTO3 = """
import time
t0, c0 = time.perf_counter(), time.process_time()
import boto3
print(time.perf_counter() - t0, time.process_time() - c0)
"""

IMPORT_HANDLER = """
import sys, time
t0, c0 = time.perf_counter(), time.process_time()
import importlib.util
sys.path.append(sys.argv[1].rsplit("/", 1)[0])  # the task root, as in Lambda
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
print(time.perf_counter() - t0, time.process_time() - c0)
"""

# Peak RSS of a fresh process that imports the events handler and handles a 100-record batch twice
# (the first one is the cold invocation). AWS is the bench's moto server, in another process.
# On Linux ru_maxrss of a child counts the parent's RSS at fork/exec (Linux copies the high-water mark
# of the old address space), so this bench's own ~120 MB would show up; VmHWM is the peak of this
# process's own address space. ru_maxrss is used only where /proc is missing.
RSS = """
import importlib.util, json, resource, sys
def rss_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.path.append(sys.argv[1].rsplit("/", 1)[0])  # the task root, as in Lambda
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
sys.modules["app"] = app
spec.loader.exec_module(app)
after_import = rss_mb()
from bench.workload import events_batch
from tests.support import LambdaContext
import contextlib, io
event = events_batch(int(sys.argv[2]))
failures = []
for _ in range(2):
    with contextlib.redirect_stdout(io.StringIO()):
        answer = app.lambda_handler(event, LambdaContext())
    failures += answer["batchItemFailures"]
print(json.dumps({"after_import_mb": after_import, "peak_mb": rss_mb(), "failures": len(failures)}))
"""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The same small environment for every fresh process, like a Lambda container's."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "cio_relay"), str(ROOT)]),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": MOTO_CREDENTIAL,
        "AWS_SECRET_ACCESS_KEY": MOTO_CREDENTIAL,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "POWERTOOLS_SERVICE_NAME": "cio-relay",
        "POWERTOOLS_METRICS_NAMESPACE": "CioRelay",
        "NO_PROXY": "127.0.0.1,localhost",
        **(extra or {}),
    }


def _seconds(code: str, *args: str) -> tuple[float, float]:
    """(wall, CPU seconds) the probe printed."""
    # sys.executable running the probe code above.
    done = subprocess.run(  # nosec B603
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cold-start probe failed: {done.stderr.strip()[-500:]}")
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


# Each function's cold import is compared with what any function of its kind must import anyway: the
# relay functions with boto3 and the three clients they use, the authorizer with boto3 alone.
COLD_LIMITS = {"authorizer": ("boto3", 1.05)}
DEFAULT_LIMIT = ("boto3 + 3 clients", 1.15)
BASELINES = {"boto3 + 3 clients": BASELINE, "boto3": BOTO3}
RSS_LIMIT_MB = 100.0


def functions() -> list[str]:
    """Every function of the template with a handler module: functions/<name>/app.py."""
    return sorted(p.parent.name for p in FUNCTIONS.glob("*/app.py"))


def cold_imports(names: list[str], runs: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) milliseconds to import each handler module and each baseline in a fresh
    interpreter, one pair per round.

    Rounds interleave everything, so noise from other processes hits all alike; one warm-up round
    first (it also writes the .pyc files a deployed package would ship).
    """
    samples: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(1 + runs):
        timings = {key: _seconds(code) for key, code in BASELINES.items()}
        for name in names:
            timings[name] = _seconds(IMPORT_HANDLER, str(FUNCTIONS / name / "app.py"))
        if round_:
            for key, (wall, cpu) in timings.items():
                samples.setdefault(key, []).append((wall * 1000, cpu * 1000))
    return samples


def import_profile(function: str, top: int = 12, max_depth: int = 1) -> list[tuple[int, str]]:
    """The slowest imports (cumulative microseconds, module) of one handler, from `python -X importtime`."""
    # sys.executable running the probe code above.
    done = subprocess.run(  # nosec B603
        [sys.executable, "-X", "importtime", "-c", IMPORT_HANDLER, str(FUNCTIONS / function / "app.py")],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    rows: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip())) // 2  # one space after "|", then two per level
        if depth <= max_depth:
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def peak_rss(stack_env: dict[str, str], batch: int) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process after importing the events handler and after two batches.

    `stack_env` points it at the bench's moto server and fake Customer.io (see relay.relay_stack), so
    it reads the secret through Powertools parameters and boto3 as a deployed function does.
    """
    env = clean_env(stack_env)
    # sys.executable running the probe code above.
    done = subprocess.run(  # nosec B603
        [sys.executable, "-c", RSS, str(FUNCTIONS / "events" / "app.py"), str(batch)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"RSS probe failed: {done.stderr.strip()[-500:]}")
    data: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if data["failures"]:
        raise RuntimeError(f"RSS probe: the handler reported {data['failures']} failed records")
    return data


def measure(bench: Bench) -> Section:
    """Cold import of every function against its baseline, round by round, and peak RSS.

    The target is on CPU time: on a shared machine a fresh process's wall time also counts the time
    it waited for a core, which says nothing about the code (wall time is shown beside it).
    """
    section = Section("Cold start and memory (fresh processes)")
    names = functions()
    runs = bench.reps(9, 3)
    bench.say(f"cold imports ({', '.join(names)}) against the boto3 baselines, {runs} rounds")
    samples = cold_imports(names, runs)
    wall = {key: [w for w, _ in pairs] for key, pairs in samples.items()}
    cpu = {key: [c for _, c in pairs] for key, pairs in samples.items()}
    rows = [
        [f"baseline: {key}", show(Spread.of(cpu[key]), 0), show(Spread.of(wall[key]), 0), "", "", ""]
        for key in BASELINES
    ]
    for name in names:
        baseline, limit = COLD_LIMITS.get(name, DEFAULT_LIMIT)
        ratios = paired(cpu[name], cpu[baseline])
        rows.append(
            [
                f"import functions/{name}/app.py",
                show(Spread.of(cpu[name]), 0),
                show(Spread.of(wall[name]), 0),
                baseline,
                show(Spread.of(ratios), 2, TIMES),
                show(Spread.of(paired(wall[name], wall[baseline])), 2, TIMES),
            ]
        )
        target = at_most(f"cold import (CPU) of functions/{name}/app.py ÷ {baseline}", ratios, limit)
        section.targets.append(target)
        if target.passed is False:
            slowest = ", ".join(f"{module} {us / 1000:.0f} ms" for us, module in import_profile(name, 8))
            section.notes.append(f"slowest imports of functions/{name}/app.py (-X importtime): {slowest}")
    section.lines += table(
        ["fresh process", "CPU ms", "wall ms", "baseline", "CPU ratio", "wall ratio"], rows
    )
    bench.say("peak RSS of a fresh process handling a 100-record batch")
    rss = peak_rss(bench.env, 100)
    section.lines += [
        "",
        f"RSS after importing the events handler: {rss['after_import_mb']:.1f} MB; peak handling a "
        f"100-record batch twice: {rss['peak_mb']:.1f} MB.",
    ]
    section.targets.append(
        at_most("peak RSS handling a 100-record batch (MB)", [rss["peak_mb"]], RSS_LIMIT_MB, unit="")
    )
    return section
