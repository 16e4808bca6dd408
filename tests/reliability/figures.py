"""`make figures` (reliability part): copy the figures the reliability tests measured into the docs.

The tests write .cache/figures/reliability.md (ignored); this replaces what stands between the
`reliability-figures` markers in docs/reliability.md with those sections. It changes a tracked file,
which is why only `make figures` runs it, never `make test` or `make soak`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.reliability import FIGURES, ROOT, read_figures

DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- reliability-figures:start -->", "<!-- reliability-figures:end -->"
# The sections the docs show, in this order (the small soak of `make test` is a smoke run).
SHOWN = (
    "Soak under faults (full)",
    "Customer.io outage",
    "Fuzzing: models and queue parsers",
    "Fuzzing: handlers",
    "schemathesis (OpenAPI)",
)


def render(sections: dict[str, str]) -> str:
    parts = [f"### {name}\n{sections[name].rstrip()}\n" for name in SHOWN if name in sections]
    return "\n".join(parts)


def update(doc: Path = DOC, figures: Path = FIGURES) -> list[str]:
    """Rewrite the marked block of `doc`; returns the sections that were missing (nothing is invented)."""
    sections = read_figures(figures)
    missing = [name for name in SHOWN if name not in sections]
    text = doc.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{doc}: no {START} ... {END} block")
    kept = _current(text[start + len(START) : end])
    merged = {**kept, **{name: body for name, body in sections.items() if name in SHOWN}}
    doc.write_text(text[: start + len(START)] + "\n" + render(merged) + text[end:])
    return missing


def _current(block: str) -> dict[str, str]:
    """The sections already in the docs, so that a figure not measured this time stays as it was."""
    found: dict[str, str] = {}
    name = None
    for line in block.splitlines(keepends=True):
        if line.startswith("### "):
            name = line[4:].strip()
            found[name] = ""
        elif name is not None:
            found[name] += line
    return found


def main() -> int:
    if not FIGURES.exists():
        # Not an error: `make figures` goes on to copy whatever else was measured (make bench's part).
        print(
            f"make figures: no reliability figures yet ({FIGURES.relative_to(ROOT)}): run make soak "
            "to measure them; docs/reliability.md left as it is"
        )
        return 0
    missing = update()
    print(f"make figures: {DOC.relative_to(ROOT)} updated from {FIGURES.relative_to(ROOT)}")
    if missing:
        print(f"  kept the previous figures for: {', '.join(missing)} (not in this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
