"""How the CLI prints: one line per check, marks the terminal can show, URLs without secrets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Check:
    """One doctor line: what was checked, whether it passed, and how to fix it when it did not."""

    ok: bool
    what: str
    fix: str | None = None

    def line(self, marks: tuple[str, str] = ("✓", "✗")) -> str:
        text = f"{marks[0] if self.ok else marks[1]} {self.what}"
        return f"{text} — fix: {self.fix}" if self.fix and not self.ok else text


def _marks(out: TextIO) -> tuple[str, str]:
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        "✓✗—".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ("OK  ", "FAIL")
    return ("✓", "✗")


def _safe_url(url: str) -> str:
    """The URL without user info or query (either could carry a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
