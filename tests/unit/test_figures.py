"""Figures: the tests write them to an ignored file; only `make figures` copies them into the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import FIGURES, figures, read_figures, write_figures
from tests.reliability.figures import END, START, update
from tests.support import ROOT


def test_the_figures_file_is_ignored_by_git() -> None:
    # GIVEN where the reliability tests write, THEN it is under a folder .gitignore ignores
    relative = FIGURES.relative_to(ROOT)
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert relative.parts[0] == ".cache"
    assert ".cache/" in ignored


def test_write_figures_replaces_only_its_own_section(tmp_path: Path) -> None:
    # GIVEN a figures file with two sections
    figures = tmp_path / "figures.md"
    write_figures("Outage", ["- down 9 s"], path=figures)
    write_figures("Soak under faults (full)", ["- lost: 0"], path=figures)

    # WHEN one test writes its section again
    write_figures("Outage", ["- down 7 s"], path=figures)

    # THEN that section is replaced and the other kept
    sections = read_figures(figures)
    assert set(sections) == {"Outage", "Soak under faults (full)"}
    assert "- down 7 s" in sections["Outage"]
    assert "down 9 s" not in sections["Outage"]
    assert "- lost: 0" in sections["Soak under faults (full)"]


def test_make_figures_rewrites_only_the_marked_block(tmp_path: Path) -> None:
    # GIVEN a doc with prose around the block, holding an older outage and an older soak
    doc = tmp_path / "reliability.md"
    before, after = "# Reliability\n\nProse stays.\n\n", "\nTrailing prose stays.\n"
    old = "### Soak under faults (full)\n_run old_\n\n- lost: 0 (old)\n\n### Customer.io outage\n_run old_\n"
    doc.write_text(f"{before}{START}\n{old}{END}{after}")
    # ... and a run that measured only the outage (and the small soak, which the docs do not show)
    figures = tmp_path / "figures.md"
    write_figures("Customer.io outage", ["- down 7 s (new)"], path=figures)
    write_figures("Soak under faults (small)", ["- small"], path=figures)

    # WHEN make figures runs
    missing = update(doc, figures)

    # THEN the outage is the new one, the soak keeps its old figures, and the prose is untouched
    text = doc.read_text()
    assert text.startswith(before + START)
    assert text.endswith(END + after)
    assert "- down 7 s (new)" in text
    assert "- lost: 0 (old)" in text
    assert "- small" not in text
    assert "Soak under faults (full)" in missing


def test_make_figures_without_reliability_figures_goes_on_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN no reliability figures measured yet (a fresh clone that only ran make bench)
    absent = ROOT / ".cache" / "figures" / "absent-for-this-test.md"
    monkeypatch.setattr(figures, "FIGURES", absent)
    before = figures.DOC.read_text()

    # WHEN its part of make figures runs / THEN it succeeds (so the bench part still runs) and says
    # why nothing was copied, leaving the docs as they were
    assert figures.main() == 0
    assert "run make soak" in capsys.readouterr().out
    assert figures.DOC.read_text() == before
