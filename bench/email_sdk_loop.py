"""The `customerio` package's App API client sending transactional emails, one request per send.

Run inside .venv-bench-customerio (stdlib + the SDK only), like sdk_loop.py:
stdin, first line: {"url", "app_key", "bodies": [...]} -> stdout {"version": ...}
then for each {"count": n}: APIClient.send_email over the first n bodies -> {"wall": s, "cpu": s}
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata


def main() -> None:
    from customerio import APIClient, SendEmailRequest  # noqa: PLC0415 - only this SDK's venv has it

    config = json.loads(sys.stdin.readline())
    client = APIClient(config["app_key"], url=config["url"].rstrip("/"))
    bodies = config["bodies"]
    print(json.dumps({"version": metadata.version("customerio")}), flush=True)
    for line in sys.stdin:
        batch = bodies[: json.loads(line)["count"]]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for body in batch:
            client.send_email(SendEmailRequest(**body))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
