"""The requirement files agree: `make run`'s quick install is a subset of the dev lock, pin for pin."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import ROOT

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)$")


def pins(path: Path) -> dict[str, str]:
    """name -> version of every requirement in a file and the files it includes with -r."""
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found.update(pins(path.parent / line[3:].strip()))
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: {line!r} is not pinned with =="
        found[match["name"].lower().replace("_", "-")] = match["version"]
    return found


def test_make_runs_packages_are_pinned_as_in_the_dev_lock() -> None:
    # GIVEN the quick install `make run` does and the whole dev lock
    run = pins(ROOT / "requirements-run.txt")
    dev = pins(ROOT / "requirements-dev.txt")

    # THEN every package of the quick install is in the dev lock, at the same version
    assert "moto" in run
    assert "aws-lambda-powertools" in run
    assert {name: version for name, version in run.items() if dev.get(name) != version} == {}
