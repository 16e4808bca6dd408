"""An SDK worker, run inside that SDK's own venv (stdlib + the SDK only), one JSON line per message.

stdin, first line: {"sdk": "customerio" | "cdp-sync" | "cdp-batch", "url", "events", keys...}
stdout, first line: {"version": ...}
then for each stdin line {"count": n}: one run over the first n events -> {"wall": s, "cpu": s}
(the bench interleaves these runs with cio-relay's, so both see the same machine load).

Not imported by the bench itself: the two SDKs both ship customerio/__init__.py, so each lives in
its own venv and this file is run there as a script.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

Event = dict[str, Any]


class Loop(ABC):
    """make() builds a client (not timed); send() is the timed part; done() cleans up (not timed)."""

    version = ""

    @abstractmethod
    def make(self) -> Any: ...

    @abstractmethod
    def send(self, client: Any, events: list[Event]) -> None: ...

    def done(self, client: Any) -> None:
        return None


class CustomerIOLoop(Loop):
    """The `customerio` package's Track client: one HTTP request per call, as its docs show."""

    def __init__(self, config: dict[str, Any]) -> None:
        from customerio.track import CustomerIO  # noqa: PLC0415 - only this SDK's venv has it

        self.version = metadata.version("customerio")
        self._client = CustomerIO(config["site_id"], config["track_key"])
        # The Track client always builds an https:// base URL; the local fake speaks plain HTTP.
        self._client.base_url = config["url"].rstrip("/") + "/api/v1"

    def make(self) -> Any:
        return self._client

    def send(self, client: Any, events: list[Event]) -> None:
        for event in events:
            if event["type"] == "identify":
                client.identify(event["userId"], **event["traits"])
            else:
                client.track(event["userId"], event["event"], data=event["properties"])


class CDPLoop(Loop):
    """`customerio-cdp-analytics`. sync_mode=True posts each call as its own request. The default mode
    queues calls for a consumer thread that posts up to upload_size (100) per /v1/batch request, and
    flush() waits until the queue is drained, as a Lambda function must before it returns."""

    def __init__(self, config: dict[str, Any], *, sync_mode: bool) -> None:
        from customerio.analytics import Client  # noqa: PLC0415 - only this SDK's venv has it

        self.version = metadata.version("customerio-cdp-analytics")
        self._client_class: Any = Client
        self._options = {
            "write_key": config["write_key"],
            "host": config["url"].rstrip("/"),
            "sync_mode": sync_mode,
        }
        self._shared = self._factory() if sync_mode else None

    def _factory(self) -> Any:
        return self._client_class(**self._options)

    def make(self) -> Any:
        # Batching mode: a fresh client (and consumer thread) per run, so every run starts at the
        # same point of the consumer's upload_interval cycle.
        return self._shared or self._factory()

    def send(self, client: Any, events: list[Event]) -> None:
        for event in events:
            if event["type"] == "identify":
                client.identify(event["userId"], event["traits"], timestamp=event["timestamp_dt"])
            else:
                client.track(
                    event["userId"], event["event"], event["properties"], timestamp=event["timestamp_dt"]
                )
        client.flush()

    def done(self, client: Any) -> None:
        if client is not self._shared:
            client.shutdown()


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)  # the CDP SDK calls datetime.utcnow()
    config: dict[str, Any] = json.loads(sys.stdin.readline())
    events: list[Event] = config["events"]
    for event in events:
        event["timestamp_dt"] = datetime.fromtimestamp(event["unix_time"], tz=UTC)
    sdk = config["sdk"]
    loop: Loop = (
        CustomerIOLoop(config) if sdk == "customerio" else CDPLoop(config, sync_mode=sdk == "cdp-sync")
    )
    print(json.dumps({"version": loop.version}), flush=True)
    for line in sys.stdin:
        batch = events[: json.loads(line)["count"]]
        client = loop.make()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        loop.send(client, batch)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        loop.done(client)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
