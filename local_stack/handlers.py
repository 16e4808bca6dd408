"""What the local stack's HTTP listeners (the API, the fake Customer.io, the sandbox page) share."""

from __future__ import annotations

import threading
from abc import ABCMeta, abstractmethod
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, no Nagle delay, no Python version in `Server`, and no access log."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return


class ServeEveryMethod(QuietHandler, metaclass=ABCMeta):
    """A handler that answers every method the same way: `_serve()` looks at `self.command`."""

    @abstractmethod
    def _serve(self) -> None:
        """Answer the request, whatever its method."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()


class Listening:
    """An HTTP server served on its own daemon thread, from `start()` until `stop()`."""

    _host: str
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def _listen(self, server: ThreadingHTTPServer, host: str, name: str) -> None:
        self._host = host
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=name, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a server never started
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
