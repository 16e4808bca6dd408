"""The benchmark's report: every section's tables, then all targets with PASS/FAIL. No timing in here.

`make bench` writes it to .cache/figures/ (ignored by git, never a tracked file); `make figures`
copies it into docs/performance.md between its bench markers (bench/figures.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.results import RANGE, Section, Target, show, table

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / ".cache" / "figures"
REPORT_FILE = RESULTS_DIR / "bench.md"
DATA_FILE = RESULTS_DIR / "bench.json"


@dataclass(frozen=True)
class Header:
    date: str
    machine: str
    versions: dict[str, str]
    latency_ms: float
    load_average: tuple[float, float] | None = None  # 1-minute load average at the start and the end
    seconds: float | None = None  # how long the run took


def all_targets(sections: Sequence[Section]) -> list[Target]:
    return [target for section in sections for target in section.targets]


def failed(sections: Sequence[Section]) -> list[Target]:
    return [target for target in all_targets(sections) if target.passed is False]


def target_rows(targets: Sequence[Target]) -> list[str]:
    rows = [
        [t.name, t.goal, show(t.spread, 3), str(t.spread.runs if t.spread else 0), f"**{t.verdict}**"]
        for t in targets
    ]
    return table(["target", "goal", RANGE, "runs", "result"], rows, numeric_from=2)


def render(header: Header, sections: Sequence[Section]) -> str:
    """The markdown report: machine and versions, each section, then every target."""
    versions = ", ".join(f"{name} {version}" for name, version in header.versions.items())
    load = ""
    if header.load_average:
        start, end = header.load_average
        load = f", 1-minute load average {start:.1f} at the start and {end:.1f} at the end"
    took = f" The run took {header.seconds:.0f} s." if header.seconds is not None else ""
    lines = [
        f"### Benchmark results ({header.date})",
        "",
        f"Machine: {header.machine}{load}. Versions: {versions}.{took}",
        f"Fake Customer.io on loopback in its own process, answering {header.latency_ms:g} ms after each "
        "request; AWS is a moto server in its own process. Every ratio is measured run by run between "
        f"contenders that took turns, and shown as the {RANGE}; a target is judged on the median.",
    ]
    notes: list[str] = []
    for section in sections:
        lines += ["", f"#### {section.title}", ""]
        lines += section.lines
        notes += section.notes
    lines += ["", "#### Targets", "", *target_rows(all_targets(sections))]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def data(header: Header, sections: Sequence[Section]) -> dict[str, object]:
    """The same run as JSON: every target with its spread, for scripts comparing runs."""
    return {
        "header": asdict(header),
        "targets": [
            {
                "section": section.title,
                "name": t.name,
                "goal": t.goal,
                "verdict": t.verdict,
                "spread": asdict(t.spread) if t.spread else None,
            }
            for section in sections
            for t in section.targets
        ],
        "notes": [note for section in sections for note in section.notes],
    }


def write(header: Header, sections: Sequence[Section], directory: Path = RESULTS_DIR) -> str:
    """Write bench.md and bench.json into `directory` (created if needed); returns the report."""
    report = render(header, sections)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / REPORT_FILE.name).write_text(report)
    (directory / DATA_FILE.name).write_text(json.dumps(data(header, sections), indent=2) + "\n")
    return report
