"""The fake Customer.io's workspace: the people it knows, their segments, and people search.

People arrive through the Pipelines API (identify; a track "User Deleted" removes them) and the Track
API (v1 identify/delete, v2 identify/delete/merge/suppress), and are found with the App API's
POST /v1/customers filters: ``attribute`` (``eq`` / ``exists``), ``segment``, ``and`` / ``or`` / ``not``.
Search pages through opaque ``start`` cursors that only this workspace hands out.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_PEOPLE", "FilterError", "Workspace", "check_filter"]

DEFAULT_PEOPLE: tuple[dict[str, Any], ...] = (
    {
        "id": "user-1",
        "email": "ada@example.com",
        "cio_id": "a1b2c3d4e5f60001",
        "attributes": {"plan": "pro", "country": "GB"},
        "segments": [1],
    },
    {
        "id": "user-2",
        "email": "grace@example.com",
        "cio_id": "a1b2c3d4e5f60002",
        "attributes": {"plan": "pro", "country": "US"},
        "segments": [1, 2],
    },
    {
        "id": "user-3",
        "email": "alan@example.com",
        "cio_id": "a1b2c3d4e5f60003",
        "attributes": {"plan": "pro", "country": "GB"},
        "segments": [],
    },
)
FILTER_KEYS = ("and", "or", "not", "segment", "attribute")
ATTRIBUTE_OPERATORS = ("eq", "exists")
MAX_CURSORS = 10_000


class FilterError(ValueError):
    """A people-search filter Customer.io would refuse (400)."""


def _one_key(node: Any, where: str) -> tuple[str, Any]:
    if not isinstance(node, dict):
        raise FilterError(f"{where} must be an object")
    keys = [key for key in node if key in FILTER_KEYS]
    unknown = [key for key in node if key not in FILTER_KEYS]
    if unknown:
        raise FilterError(
            f"{where} has an unknown property {unknown[0]!r} (use one of {', '.join(FILTER_KEYS)})"
        )
    if len(keys) != 1:
        raise FilterError(f"{where} must have exactly one of {', '.join(FILTER_KEYS)}, got {len(keys)}")
    return keys[0], node[keys[0]]


def check_filter(node: Any, where: str = "filter") -> None:
    """Raise FilterError unless ``node`` is a filter Customer.io accepts (one top-level property)."""
    key, value = _one_key(node, where)
    if key in ("and", "or"):
        if not isinstance(value, list) or not value:
            raise FilterError(f"{where}.{key} must be a non-empty array of conditions")
        for index, item in enumerate(value):
            check_filter(item, f"{where}.{key}[{index}]")
    elif key == "not":
        check_filter(value, f"{where}.not")
    elif key == "segment":
        if (
            not isinstance(value, dict)
            or isinstance(value.get("id"), bool)
            or not isinstance(value.get("id"), int)
        ):
            raise FilterError(f"{where}.segment.id must be an integer")
    else:
        if not isinstance(value, dict):
            raise FilterError(f"{where}.attribute must be an object")
        field, operator = value.get("field"), value.get("operator")
        if not isinstance(field, str) or not field:
            raise FilterError(f"{where}.attribute.field is required")
        if operator not in ATTRIBUTE_OPERATORS:
            raise FilterError(f"{where}.attribute.operator must be one of {', '.join(ATTRIBUTE_OPERATORS)}")
        if operator == "eq" and "value" not in value:
            raise FilterError(f"{where}.attribute.value is required with the eq operator")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value_of(person: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    if field in ("id", "email", "cio_id"):
        value = person.get(field)
        return value not in (None, ""), value
    attributes: Mapping[str, Any] = person.get("attributes") or {}
    return field in attributes and attributes[field] is not None, attributes.get(field)


def matches(person: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Evaluate a checked filter against one person."""
    key, value = next((k, v) for k, v in node.items() if k in FILTER_KEYS)
    if key == "and":
        return all(matches(person, item) for item in value)
    if key == "or":
        return any(matches(person, item) for item in value)
    if key == "not":
        return not matches(person, value)
    if key == "segment":
        return value["id"] in (person.get("segments") or [])
    present, actual = _value_of(person, value["field"])
    if value["operator"] == "exists":
        return present
    # Customer.io compares attribute values as text ("true" matches true, "3" matches 3).
    return present and _text(actual).lower() == _text(value["value"]).lower()


def _normal(person: Mapping[str, Any], cio_id: str) -> dict[str, Any]:
    return {
        "cio_id": str(person.get("cio_id") or cio_id),
        "id": person.get("id"),
        "email": person.get("email"),
        "attributes": dict(person.get("attributes") or {}),
        "segments": list(person.get("segments") or []),
    }


class Workspace:
    """People by cio_id, thread-safe. ``seed`` is what :meth:`reset` goes back to."""

    def __init__(self, seed: Iterable[Mapping[str, Any]] = DEFAULT_PEOPLE) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._seed: list[dict[str, Any]] = []
        self._people: dict[str, dict[str, Any]] = {}
        self._cursors: OrderedDict[str, int] = OrderedDict()
        self.deleted: list[dict[str, Any]] = []
        self.set_people(seed)

    # -- state ------------------------------------------------------------------------------------

    def set_people(self, people: Iterable[Mapping[str, Any]]) -> None:
        """Replace everyone (this becomes the seed that reset() restores)."""
        normal = [_normal(person, self._new_cio_id()) for person in people]
        with self._lock:
            self._seed = [dict(person, attributes=dict(person["attributes"])) for person in normal]
            self._restore()

    def reset(self) -> None:
        with self._lock:
            self._restore()

    def _restore(self) -> None:
        self._people = {
            p["cio_id"]: dict(p, attributes=dict(p["attributes"]), segments=list(p["segments"]))
            for p in self._seed
        }
        self._cursors.clear()
        self.deleted = []

    def _new_cio_id(self) -> str:
        return f"f{next(self._numbers):015x}"

    def people(self) -> list[dict[str, Any]]:
        """Everyone, oldest first (copies)."""
        with self._lock:
            return [
                dict(p, attributes=dict(p["attributes"]), segments=list(p["segments"]))
                for p in self._people.values()
            ]

    def find(self, kind: str, value: Any) -> dict[str, Any] | None:
        """The person whose ``kind`` (id, email, cio_id) is ``value`` (a copy), or None."""
        with self._lock:
            found = self._find(kind, value)
            return dict(found, attributes=dict(found["attributes"])) if found else None

    def _find(self, kind: str, value: Any) -> dict[str, Any] | None:
        if value is None or value == "":
            return None
        wanted = str(value).lower() if kind == "email" else str(value)
        for person in self._people.values():
            actual = person.get(kind)
            if actual is None:
                continue
            if (str(actual).lower() if kind == "email" else str(actual)) == wanted:
                return person
        return None

    # -- changes ------------------------------------------------------------------------------------

    def identify(self, kind: str, value: Any, attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create or update the person ``kind``=``value``; ``email``/``id`` attributes set identifiers."""
        attributes = dict(attributes or {})
        with self._lock:
            person = self._find(kind, value)
            if person is None and kind != "cio_id":
                other = "email" if kind == "id" else "id"
                person = self._find(other, attributes.get(other))
            if person is None:
                cio_id = str(value) if kind == "cio_id" else self._new_cio_id()
                person = {"cio_id": cio_id, "id": None, "email": None, "attributes": {}, "segments": []}
                self._people[cio_id] = person
            if kind in ("id", "email"):
                person[kind] = str(value)
            for key in ("id", "email"):
                if isinstance(attributes.get(key), str | int) and not isinstance(attributes.get(key), bool):
                    person[key] = str(attributes[key])
            person["attributes"].update(
                {key: item for key, item in attributes.items() if key not in ("id", "email", "cio_id")}
            )
            return dict(person)

    def delete(self, kind: str, value: Any) -> bool:
        """Remove the person; True when someone was removed."""
        with self._lock:
            person = self._find(kind, value)
            if person is None:
                return False
            del self._people[person["cio_id"]]
            self.deleted.append(person)
            return True

    def merge(self, primary: tuple[str, Any], secondary: tuple[str, Any]) -> bool:
        """Merge secondary into primary (primary's attributes win), then delete secondary."""
        with self._lock:
            keep, gone = self._find(*primary), self._find(*secondary)
            if keep is None or gone is None or keep is gone:
                return False
            keep["attributes"] = {**gone["attributes"], **keep["attributes"]}
            keep["segments"] = sorted({*keep["segments"], *gone["segments"]})
            del self._people[gone["cio_id"]]
            self.deleted.append(gone)
            return True

    def set_segment(self, segment_id: int, kind: str, values: Iterable[Any], member: bool) -> None:
        with self._lock:
            for value in values:
                person = self._find(kind, value)
                if person is None:
                    continue
                segments = set(person["segments"])
                segments.add(segment_id) if member else segments.discard(segment_id)
                person["segments"] = sorted(segments)

    # -- search -------------------------------------------------------------------------------------

    def search(self, node: Mapping[str, Any], start: str, limit: int) -> dict[str, Any]:
        """One page of POST /v1/customers; raises FilterError for a bad filter or cursor."""
        check_filter(node)
        with self._lock:
            if start:
                if start not in self._cursors:
                    raise FilterError("start is not a valid pagination token")
                offset = self._cursors[start]
            else:
                offset = 0
            found = [p for p in self._people.values() if matches(p, node)]
            page = found[offset : offset + limit]
            following = ""
            if offset + limit < len(found):
                following = secrets.token_urlsafe(12)
                self._cursors[following] = offset + limit
                while len(self._cursors) > MAX_CURSORS:
                    self._cursors.popitem(last=False)
        return {
            "identifiers": [{"email": p["email"], "id": p["id"], "cio_id": p["cio_id"]} for p in page],
            "ids": [p["id"] if p["id"] is not None else "" for p in page],
            "next": following,
        }
