"""Local servers the bench runs in child processes, so their CPU time and GIL are not the client's."""

from __future__ import annotations

import json
import logging
import os

# Only ever runs this interpreter on the bench's own modules.
import subprocess  # nosec B404
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
MOTO_CREDENTIAL = "testing"  # moto takes any AWS credentials; these are its usual dummies


class ChildServer:
    """`python -m <module> <args>`: it prints {"url": ...} once ready and exits when its stdin closes."""

    def __init__(self, module: str, args: Sequence[str] = ()) -> None:
        self._command = [sys.executable, "-m", module, *args]
        self.url = ""
        self.info: dict[str, str] = {}
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "cio_relay"), str(ROOT)])}
        # A fixed command: sys.executable -m bench.<module>.
        self._proc = subprocess.Popen(  # nosec B603
            self._command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            raise RuntimeError(f"{' '.join(self._command[1:])} did not start")
        self.info = {str(key): str(value) for key, value in json.loads(line).items()}
        self.url = self.info["url"]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is None:
            return
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class MotoProcess(ChildServer):
    """A moto server (SQS, Secrets Manager, DynamoDB, ...) on loopback: `python -m bench.child`.

    In its own process, so that DynamoDB's work for the idempotency records is not billed to the
    handler being measured (in-process moto would add several milliseconds of Python per send), while
    each call still costs the handler a real HTTP round trip, as DynamoDB does.
    """

    def __init__(self) -> None:
        super().__init__("bench.child")


def serve_moto() -> None:
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - only the child process needs moto
    from werkzeug.serving import WSGIRequestHandler  # noqa: PLC0415 - moto's HTTP server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # Werkzeug writes an answer's headers and body separately; with Nagle's algorithm on, the body can
    # wait for the client's delayed ACK. AWS answers promptly, and so should the stand-in.
    WSGIRequestHandler.disable_nagle_algorithm = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(json.dumps({"url": f"http://{host}:{port}"}), flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    serve_moto()
