"""Reliability suite helpers: hypothesis strategies for hostile input, and the figures writer.

The soak, outage and fuzz tests write what they measured to .cache/figures/reliability.md, an
ignored file: `make test` and `make soak` leave the clone clean. `make figures` copies those figures
into docs/reliability.md on purpose (tests/reliability/figures.py). Each test owns one section; a run
replaces the sections it produced and keeps the others, so running one test alone never erases
another test's figures.
"""

from __future__ import annotations

import fcntl
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent.parent
FIGURES = ROOT / ".cache" / "figures" / "reliability.md"
_FIGURES_LOCK = threading.Lock()
_SECTION = re.compile(r"^## (?P<name>.+?)\n(?P<body>.*?)(?=^## |\Z)", re.S | re.M)
_HEADER = (
    "# Reliability figures\n\n"
    "Written by the tests in tests/reliability/ (each run replaces the sections it measured);\n"
    "`make figures` copies them into docs/reliability.md.\n\n"
)


def read_figures(path: Path = FIGURES) -> dict[str, str]:
    """Section name -> its body (stamp and lines) from a figures file; {} when there is none."""
    text = path.read_text() if path.exists() else ""
    return {m["name"]: m["body"] for m in _SECTION.finditer(text)}


def write_figures(section: str, lines: list[str], path: Path = FIGURES) -> None:
    """Replace `section` of the figures file with `lines` (stamped with the run's UTC time), and print it."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([f"_run {stamp}_", "", *lines]) + "\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest-xdist) are processes: a file lock, as well as the lock for threads.
    with _FIGURES_LOCK, path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sections = read_figures(path)
        sections[section] = body
        path.write_text(_HEADER + "".join(f"## {name}\n{sections[name]}" for name in sorted(sections)))
    print(f"\n## {section}\n{body}")


# ---- hostile input --------------------------------------------------------------------------

EDGE_NUMBERS = st.sampled_from(
    [
        0,
        -0.0,
        -1,
        2**31 - 1,
        2**31,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        5e-324,
        0.1,
    ]
)
NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\t\n",
        "null",
        "é",
        "😀",
        "\u202e",
        "\ufeff",
        "a" * 1025,
        "<script>alert(1)</script>",
        "'; DROP TABLE people; --",
        "{{message_data.x}}",
        "%s%n",
        "../../etc/passwd",
    ]
)
# A lone surrogate is valid in a JSON string ("\ud800") but cannot be encoded as UTF-8.
SURROGATES = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3)
TEXT = st.text(max_size=40) | NASTY_TEXT | SURROGATES
SCALARS = st.none() | st.booleans() | st.integers() | EDGE_NUMBERS | st.floats() | TEXT
KEYS = st.text(max_size=12) | st.sampled_from(["", "type", "userId", "batch", "__proto__", "$set"])
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)
JSON_OBJECT = st.dictionaries(KEYS, JSON, max_size=4)
IDS = st.text(min_size=1, max_size=30) | st.integers() | EDGE_NUMBERS | NASTY_TEXT | JSON


def dumps(value: Any) -> str:
    """JSON text as a producer would write it; NaN/Infinity stay (Python's json accepts them)."""
    return json.dumps(value)


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# Raw bodies no JSON library would write: deep nesting, huge integers, huge strings, not-JSON at all.
RAW_NASTIES = st.one_of(
    st.builds(_nested, st.integers(50, 20_000), st.sampled_from(["list", "object"])),
    st.builds(
        lambda depth, kind: '{"type":"identify","userId":"u","traits":{"x":' + _nested(depth, kind) + "}}",
        st.integers(50, 20_000),
        st.sampled_from(["list", "object"]),
    ),
    st.builds(
        lambda depth, kind: (
            '{"batch":[{"type":"page","userId":"u"}],"context":{"x":' + _nested(depth, kind) + "}}"
        ),
        st.integers(50, 2_000),
        st.sampled_from(["list", "object"]),
    ),
    st.builds(lambda n: '{"type":"identify","userId":' + "9" * n + "}", st.integers(4_000, 6_000)),
    st.builds(
        lambda n: '{"type":"identify","userId":"u","traits":{"x":"' + "x" * n + '"}}',
        st.integers(32_600, 33_000),
    ),
    st.sampled_from(
        [
            "",
            " ",
            "null",
            "[]",
            "{}",
            '"text"',
            "NaN",
            '{"userId": NaN, "type": "identify"}',
            '{"type":"identify","userId":"u","traits":{"x":Infinity}}',
            '{"type":"identify","userId":"\\ud800"}',
            '{"type":"identify","userId":"u","traits":{"\\udfff":1}}',
            '{"type":"identify","userId":"u"',
            '{"type":"identify","userId":"u"}}',
            '{"type":"identify","type":"track","userId":"u"}',
            "\x00",
        ]
    ),
    st.text(max_size=60),
)

CALL_TYPES = st.sampled_from(["identify", "track", "page", "screen", "group", "alias"]) | TEXT | JSON
CALLS = st.fixed_dictionaries(
    {"type": CALL_TYPES},
    optional={
        "userId": IDS,
        "anonymousId": IDS,
        "event": TEXT | JSON,
        "name": TEXT | JSON,
        "groupId": IDS,
        "previousId": IDS,
        "messageId": TEXT | JSON,
        "timestamp": TEXT | JSON,
        "traits": JSON_OBJECT | JSON,
        "properties": JSON_OBJECT | JSON,
        "context": JSON_OBJECT | JSON,
        "integrations": JSON_OBJECT | JSON,
    },
)
BATCHES = st.fixed_dictionaries(
    {"batch": st.lists(CALLS, max_size=5) | JSON},
    optional={"context": JSON_OBJECT | JSON, "integrations": JSON},
)
ADDRESSES = (
    st.sampled_from(["a@example.com", "x@y.z", "Ann <ann@example.com>", "", "@", "no-at-sign"])
    | st.integers(0, 20).map(lambda n: ", ".join(f"r{i}@example.com" for i in range(n)))
    | TEXT
    | JSON
)
EMAILS = st.fixed_dictionaries(
    {},
    optional={
        "to": ADDRESSES,
        "identifiers": st.fixed_dictionaries({}, optional={"id": IDS, "email": ADDRESSES, "cio_id": IDS})
        | JSON,
        "transactional_message_id": st.integers() | TEXT | JSON,
        "message_data": JSON_OBJECT | JSON,
        "from": ADDRESSES,
        "subject": TEXT | JSON,
        "body": TEXT | JSON,
        "cc": ADDRESSES,
        "bcc": ADDRESSES,
        "headers": JSON_OBJECT | TEXT | JSON,
        "attachments": st.dictionaries(TEXT, st.sampled_from(["aGk=", "not base64!", ""]) | JSON, max_size=2)
        | JSON,
        "send_at": st.integers() | EDGE_NUMBERS | JSON,
        "tracked": JSON,
        "language": TEXT | JSON,
    },
)

# Valid shapes with hostile (but encodable) content, so the fuzzers also reach the delivery path.
SAFE_SCALARS = (
    st.none() | st.booleans() | st.integers() | EDGE_NUMBERS | st.floats() | st.text(max_size=40) | NASTY_TEXT
)
SAFE_JSON_OBJECT = st.dictionaries(
    st.text(max_size=12),
    st.recursive(
        SAFE_SCALARS,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
        max_leaves=16,
    ),
    max_size=4,
)
VALID_CALLS = st.builds(
    lambda kind, user, extra, event: {
        "type": kind,
        "userId": user,
        **({"event": event} if kind == "track" else {}),
        **({"groupId": user} if kind == "group" else {}),
        **({"previousId": f"prev-{user}"} if kind == "alias" else {}),
        **({"traits": extra} if kind in ("identify", "group") else {"properties": extra}),
    },
    st.sampled_from(["identify", "track", "page", "screen", "group", "alias"]),
    st.text(min_size=1, max_size=40).filter(str.strip),
    SAFE_JSON_OBJECT,
    st.text(min_size=1, max_size=40),
)
VALID_EMAILS = st.builds(
    lambda person, data, template: {
        "to": "someone@example.com",
        "identifiers": {"id": person},
        "transactional_message_id": template,
        "message_data": data,
    },
    st.text(min_size=1, max_size=40).filter(str.strip),
    SAFE_JSON_OBJECT,
    st.integers(1, 2**31) | st.text(min_size=1, max_size=20).filter(str.strip),
)
