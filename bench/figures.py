"""`make figures`, bench part: copy the last `make bench` report into docs/performance.md, on purpose.

python -m bench.figures [--doc docs/performance.md]: replaces what stands between the bench markers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report import REPORT_FILE, ROOT

DOC = ROOT / "docs" / "performance.md"
START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def between_markers(text: str, report: str) -> str | None:
    """`text` with `report` between its bench markers, or None when it has no such pair."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[: start + len(START)] + "\n" + report.rstrip("\n") + "\n" + text[end:]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def copy_figures(report_file: Path = REPORT_FILE, doc: Path = DOC, *, missing_ok: bool = True) -> str:
    """Copy the report into the doc; returns what happened. Raises SystemExit with a reason if it cannot.

    No report yet (`make bench` never ran here) leaves the doc as it is, unless `missing_ok` is False.
    """
    if not report_file.exists():
        if missing_ok:
            return (
                f"{_shown(doc)}: bench figures not updated ({_shown(report_file)} missing: run `make bench`)"
            )
        raise SystemExit(f"{_shown(report_file)} does not exist: run `make bench` first")
    if not doc.exists():
        raise SystemExit(f"{doc} does not exist")
    updated = between_markers(doc.read_text(), report_file.read_text())
    if updated is None:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    if updated == doc.read_text():
        return f"{_shown(doc)}: bench figures already current"
    doc.write_text(updated)
    return f"{_shown(doc)}: bench figures copied from {_shown(report_file)}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--strict", action="store_true", help="fail when make bench has not run")
    args = parser.parse_args()
    print(copy_figures(doc=args.doc, missing_ok=not args.strict), file=sys.stderr)


if __name__ == "__main__":
    main()
