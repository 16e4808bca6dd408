"""`python -m local_stack` (`make run`): the whole relay on 127.0.0.1, no Docker, Ctrl-C to stop."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from local_stack.customerio import CHAOS_KINDS
from local_stack.sandbox import parse_chaos_path
from local_stack.stack import ROOT, LocalStack, Options
from local_stack.template import TemplateError


def _pair(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _chaos_path(text: str) -> tuple[str, float]:
    try:
        path, rate = parse_chaos_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("a chaos rate is between 0 and 1")
    return path, rate


def _rate(text: str) -> float:
    rate = float(text)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("a chaos rate is between 0 and 1")
    return rate


# SIGINT and SIGTERM as bits of /proc/<pid>/status's signal masks.
_STOP_SIGNALS = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))


class ParentWatch:
    """Stops `make run` when make itself is interrupted (`kill -INT <make's pid>`), as Ctrl-C would.

    Ctrl-C reaches every process in the terminal's foreground group; a signal sent to make's pid
    reaches make only. GNU make does not pass SIGINT on: it blocks the signal while it waits for its
    children to end, so this process would run forever and make with it. The watch reads make's
    blocked-signal mask (Linux /proc) and also notices when make is gone. Only when started by make.
    """

    def __init__(self) -> None:
        self.parent = os.getppid()
        self._strikes = 0
        self.active = self._name(self.parent) in ("make", "gmake")

    @staticmethod
    def _name(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
                return comm.read().strip()
        except OSError:
            return ""

    def _blocks_stop_signal(self) -> bool:
        try:
            with open(f"/proc/{self.parent}/status", encoding="utf-8") as status:
                for line in status:
                    if line.startswith("SigBlk:"):
                        return bool(int(line.split()[1], 16) & _STOP_SIGNALS)
        except (OSError, ValueError):
            return False
        return False

    def parent_stopped(self) -> str | None:
        """Why to stop (make was interrupted, or is gone), else None. Two readings in a row count."""
        if not self.active:
            return None
        if os.getppid() != self.parent:
            return "make is gone"
        self._strikes = self._strikes + 1 if self._blocks_stop_signal() else 0
        return "make was interrupted" if self._strikes >= 2 else None


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="make run ARGS=... (python -m local_stack)",
        description="cio-relay without Docker: moto for SQS/Secrets Manager/DynamoDB, the real handlers "
        "behind a local API Gateway and SQS pollers, and a Customer.io sandbox with a web page.",
    )
    parser.add_argument("--port", type=int, default=3000, help="API port (0 = any free port)")
    parser.add_argument("--sandbox-port", type=int, default=3001, help="sandbox page port (0 = any)")
    parser.add_argument("--moto-port", type=int, default=0, help="moto port (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--api-key", help="the x-api-key callers must send (default: a random one)")
    parser.add_argument(
        "--real",
        action="store_true",
        help="send to your real Customer.io workspace, with the credentials in CUSTOMERIO_PIPELINES_API_KEY "
        "(or CUSTOMERIO_SITE_ID + CUSTOMERIO_TRACK_TOKEN) and CUSTOMERIO_APP_TOKEN; without it every call "
        "goes to the local sandbox and CUSTOMERIO_* variables are ignored",
    )
    parser.add_argument("--chaos", type=_rate, default=0.0, help="sandbox failure rate on every path (0-1)")
    parser.add_argument(
        "--chaos-path",
        type=_chaos_path,
        action="append",
        default=[],
        metavar="PATH=RATE",
        help="failure rate for one path, e.g. /v1/batch=0.5 (repeatable)",
    )
    parser.add_argument(
        "--chaos-kinds",
        default=",".join(CHAOS_KINDS),
        help=f"failures to inject (default {','.join(CHAOS_KINDS)})",
    )
    parser.add_argument("--seed", type=int, help="make the chaos reproducible")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the sandbox takes per answer")
    parser.add_argument("--retry-base", type=float, default=2.0, help="RETRY_BASE_SECONDS (deployed: 30)")
    parser.add_argument("--retry-cap", type=float, default=30.0, help="RETRY_CAP_SECONDS (deployed: 3600)")
    parser.add_argument(
        "--param", type=_pair, action="append", default=[], metavar="NAME=VALUE", help="template parameter"
    )
    parser.add_argument(
        "--env", type=_pair, action="append", default=[], metavar="NAME=VALUE", help="function env override"
    )
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--no-pollers", action="store_true", help="do not consume the queues")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the functions' JSON logs")
    args = parser.parse_args(argv)
    return Options(
        template=args.template,
        host=args.host,
        port=args.port,
        sandbox_port=args.sandbox_port,
        moto_port=args.moto_port,
        api_key=args.api_key,
        customerio="real" if args.real else "sandbox",
        chaos=args.chaos,
        chaos_paths=dict(args.chaos_path),
        chaos_kinds=tuple(k.strip() for k in args.chaos_kinds.split(",") if k.strip()),
        seed=args.seed,
        latency=args.latency,
        retry_base=args.retry_base,
        retry_cap=args.retry_cap,
        parameters=dict(args.param),
        env=dict(args.env),
        pollers=not args.no_pollers,
        verbose=args.verbose,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stack = LocalStack(options)
    try:
        stack.start()
    except OSError as exc:
        print(
            f"local stack: cannot start: {exc} (another `make run`? pick ports with --port, --sandbox-port)",
            file=sys.stderr,
        )
        return 1
    except (TemplateError, ValueError) as exc:
        print(f"local stack: cannot start: {exc}", file=sys.stderr)
        return 1
    watch = ParentWatch()
    try:
        print(stack.banner(), flush=True)
        while not stop.wait(0.25):
            reason = watch.parent_stopped()
            if reason:
                print(f"{reason}: stopping like Ctrl-C", flush=True)
                break
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Everything was stopped explicitly above; skip tearing down moto's and botocore's thousands of
    # modules, which takes seconds and would make Ctrl-C feel stuck.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
