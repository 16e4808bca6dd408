"""Security suite helpers: every place a value could escape to, and every shape a key could take there."""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def base64_fingerprints(secret: str) -> list[str]:
    """Substrings that any base64 (standard or URL-safe) text containing `secret` must contain.

    base64 turns each 3-byte group into 4 characters, so a secret inside a longer blob (for example
    "Basic " + base64("<key>:")) encodes one of three ways, depending on its offset modulo 3. For each
    offset, the groups made only of the secret's own bytes encode the same way in any blob.
    """
    raw = secret.encode()
    prints: list[str] = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        first = -(-offset // 3)  # the first group made only of the secret's bytes
        last = (offset + len(raw)) // 3  # groups before this one end inside the secret
        inner = encoded[4 * first : 4 * last]
        if len(inner) >= 8:
            prints.append(inner)
            prints.append(inner.replace("+", "-").replace("/", "_"))
    return prints


def leak_forms(secret: str) -> list[str]:
    """The secret raw, JSON-escaped, and as any base64 text that contains it."""
    return [secret, json.dumps(secret)[1:-1], *base64_fingerprints(secret)]


def find_leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """Which secrets appear in `text`, in any of their forms (empty when none does)."""
    return [secret for secret in secrets if any(form in text for form in leak_forms(secret))]


class CaptureAll(logging.Handler):
    """Every log record of the process, rendered the way it would be written (message, extras, traceback)."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(level=level)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        rendered = [record.getMessage(), repr(extras)]
        if record.exc_info and record.exc_info[1] is not None:
            rendered.append("".join(traceback.format_exception(record.exc_info[1])))
        if self.formatter is not None:
            rendered.append(self.format(record))
        self.lines.append(" ".join(rendered))

    def text(self, min_level: int = logging.NOTSET) -> str:
        return "\n".join(
            line for record, line in zip(self.records, self.lines, strict=True) if record.levelno >= min_level
        )


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


@contextmanager
def all_logs(*, root_level: int = logging.INFO) -> Iterator[CaptureAll]:
    """Capture the layer's logger at every level (with its own JSON formatter) and every other logger
    at `root_level` and above (third-party DEBUG output is not what a deployed function emits)."""
    from cio_relay.observability import logger  # noqa: PLC0415 - imported once the test set its env

    layer = logging.getLogger(logger.name)
    capture = CaptureAll()
    capture.setFormatter(logger.registered_formatter)
    root = CaptureAll(level=root_level)
    root_logger = logging.getLogger()
    saved_levels = (layer.level, root_logger.level)
    layer.setLevel(logging.DEBUG)
    root_logger.setLevel(min(root_level, root_logger.level or root_level))
    layer.addHandler(capture)
    root_logger.addHandler(root)
    try:
        yield capture
    finally:
        layer.removeHandler(capture)
        root_logger.removeHandler(root)
        layer.setLevel(saved_levels[0])
        root_logger.setLevel(saved_levels[1])
        capture.records.extend(root.records)
        capture.lines.extend(root.lines)


@dataclass
class Exposure:
    """Everything a caller, an operator or a log reader could see after an operation."""

    texts: list[str] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, BaseException):
                self.texts.append("".join(traceback.format_exception(value)))
                self.texts.append(repr(value))
            elif isinstance(value, str | bytes):
                self.texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
            else:
                self.texts.append(json.dumps(value, default=repr))

    def text(self) -> str:
        return "\n".join(self.texts)
