"""bandit (the pinned one from requirements-dev) finds nothing in the project's code.

Scanned: the layer and the functions (what is deployed), and local_stack and bench (what
developers run). Each finding bandit reports is either fixed or listed below with the reason it is a
false positive; a new finding, or an old one that moved to other code, fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SCANNED = ["layers/cio_relay/cio_relay", "functions", "local_stack", "cio_relay_cli", "bench"]
# (file, bandit test id, text of the flagged line) -> why it is not a vulnerability.
ACCEPTED: dict[tuple[str, str, str], str] = {
    (
        "cio_relay_cli/doctor.py",
        "B105",
        "SECRET_SHAPE = ",
    ): "a placeholder showing the secret's JSON shape, every value is '...'",
    (
        "cio_relay_cli/connector.py",
        "B105",
        '"CUSTOMERIO_SECRET_ID": "it names the Secrets Manager secret that holds the credentials",',
    ): "a variable's name and its description",
    ("local_stack/stack.py", "B105", '"CUSTOMERIO_APP_TOKEN": "app_api_key",'): "a JSON key name",
    ("local_stack/stack.py", "B105", '"CUSTOMERIO_TRACK_TOKEN": "track_api_key",'): "a JSON key name",
    ("local_stack/stack.py", "B105", 'self.secret_arn = ""'): "an ARN, empty until the secret exists",
    (
        "local_stack/stack.py",
        "B105",
        '"AWS_SECRET_ACCESS_KEY": "local",',
    ): "moto's throw-away credentials",
    (
        "local_stack/stack.py",
        "B101",
        "assert self.runtime is not None",
    ): "local tooling, never deployed",
    ("local_stack/sandbox.py", "B311", "self._rng = random.Random("): "picks chaos faults, not secrets",
    ("local_stack/customerio.py", "B311", "rng=random.Random(seed),"): "picks chaos faults, not secrets",
    ("local_stack/template.py", "B506", "yaml.load(path.read_text(), Loader=CfnLoader)"): (
        "CfnLoader is a yaml.SafeLoader subclass"
    ),
}


def bandit_findings() -> tuple[list[dict[str, object]], dict[str, object]]:
    completed = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", *SCANNED, "-f", "json", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(completed.stdout)
    assert not report["errors"], report["errors"]
    return report["results"], report["metrics"]["_totals"]


def flagged_line(result: dict[str, object]) -> str:
    lines = (ROOT / str(result["filename"])).read_text().splitlines()
    return lines[int(str(result["line_number"])) - 1].strip()


def test_bandit_finds_nothing_but_the_reviewed_false_positives() -> None:
    # GIVEN the project's code; WHEN bandit scans it
    results, totals = bandit_findings()

    # THEN it really scanned it (thousands of lines) ...
    assert int(str(totals["loc"])) > 3_000
    # ... and every finding is a reviewed false positive
    unexpected = []
    for result in results:
        line = flagged_line(result)
        known = any(
            str(result["filename"]) == path and result["test_id"] == test and text in line
            for path, test, text in ACCEPTED
        )
        if not known:
            unexpected.append(f"{result['filename']}:{result['line_number']} {result['test_id']} {line}")
    assert unexpected == [], "new bandit findings:\n" + "\n".join(unexpected)


def test_deployed_code_has_no_high_or_medium_finding() -> None:
    # GIVEN what is deployed (the layer and the functions); THEN bandit reports nothing above LOW there
    results, _ = bandit_findings()
    deployed = [
        r
        for r in results
        if str(r["filename"]).startswith(("layers/", "functions/")) and r["issue_severity"] != "LOW"
    ]
    assert deployed == []
    assert Path(ROOT / "layers/cio_relay/cio_relay").is_dir()
