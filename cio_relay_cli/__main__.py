"""`cio-relay`: the operator CLI — `doctor`, `doctor check-connector`, `dlq list|show|redrive`.

Works against a deployed stack (`--stack NAME`: queue URLs and the functions' own environment come
from CloudFormation and Lambda) and locally (the same environment variables the functions read;
AWS_ENDPOINT_URL points boto3 at the local stack's moto). Key values are never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from cio_relay.settings import Settings

from cio_relay_cli.aws import AWS_ERRORS, QUEUES, Aws, targets
from cio_relay_cli.connector import Sender, check_connector, print_report
from cio_relay_cli.dlq import dlq_list, dlq_redrive, dlq_show, queue_pairs
from cio_relay_cli.doctor import doctor
from cio_relay_cli.output import _marks


def _common(default: object = None) -> argparse.ArgumentParser:
    """The options every command takes. A subcommand's copy uses default=SUPPRESS, so that it does
    not overwrite what was given before the subcommand's name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stack", default=default, help="CloudFormation stack name (else the environment)")
    common.add_argument("--profile", default=default, help="AWS profile")
    common.add_argument("--region", default=default, help="AWS region")
    for name in QUEUES:
        common.add_argument(
            f"--{name}-queue-url", default=default, help=f"{name} queue URL (else {name.upper()}_QUEUE_URL)"
        )
        common.add_argument(
            f"--{name}-dlq-url",
            default=default,
            help=f"{name} dead-letter queue URL (else {name.upper()}_DLQ_URL)",
        )
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()

    root = argparse.ArgumentParser(prog="cio-relay", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    check = commands.add_parser("doctor", parents=[common], help="check credentials, region and reachability")
    check.add_argument("--check-url", help="also try this URL with the configured credentials")
    check.add_argument("--method", default="GET", type=str.upper, help="HTTP method for --check-url")
    check.add_argument("--data", help="JSON body for --check-url")
    check.add_argument(
        "--auth",
        choices=("auto", "pipelines", "app", "none"),
        default="auto",
        help="credentials for --check-url (auto: by host; never sent to an unknown host)",
    )
    doctor_commands = check.add_subparsers(dest="doctor_command", metavar="check-connector")
    connector = doctor_commands.add_parser(
        "check-connector",
        parents=[_common(argparse.SUPPRESS)],
        help="explain one credential or one Customer.io URL, and probe it with a harmless request",
        description="--env-name: which credential a variable is, what it is for, and whether Customer.io "
        "accepts it. --url: which host, region and credential a call needs, probed with a request that "
        "creates, changes and sends nothing.",
    )
    which = connector.add_mutually_exclusive_group(required=True)
    which.add_argument("--env-name", help="a credential variable, e.g. CUSTOMERIO_TRACK_TOKEN")
    which.add_argument("--url", help="a Customer.io URL, e.g. https://cdp.customer.io/v1/identify")
    connector.add_argument(
        "--method", type=str.upper, default=argparse.SUPPRESS, help="HTTP method for --url (default GET)"
    )
    dlq = commands.add_parser("dlq", help="dead-letter queues").add_subparsers(dest="action", required=True)
    dlq.add_parser("list", parents=[common], help="messages waiting in each dead-letter queue")
    show = dlq.add_parser("show", parents=[common], help="messages with their failure reasons")
    show.add_argument("queue", nargs="?", choices=tuple(QUEUES), help="events or email (default: both)")
    show.add_argument("--limit", type=int, default=10)
    show.add_argument("--bodies", action="store_true", help="print message bodies (may hold personal data)")
    show.add_argument("--max-chars", type=int, default=300, help="truncate bodies to this many characters")
    redrive = dlq.add_parser("redrive", parents=[common], help="move messages back to their source queue")
    redrive.add_argument("queue", choices=(*QUEUES, "all"))
    redrive.add_argument(
        "--no-move-task", action="store_true", help="receive/send/delete instead of SQS's task"
    )
    redrive.add_argument("--wait", action="store_true", help="wait for the SQS move task to finish")
    return root


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    aws: Aws | None = None,
    sender_for: Callable[[Settings], Sender] | None = None,
) -> int:
    args = parser().parse_args(argv)
    stream = out or sys.stdout
    env = dict(os.environ if environ is None else environ)
    session = aws or Aws(args.profile, args.region)
    try:
        if args.command == "doctor":
            return _doctor(args, session, env, stream, sender_for)
        pairs = queue_pairs(args, session, env)
        if not pairs:
            print(
                "no dead-letter queue configured: pass --stack NAME, --events-dlq-url or set EVENTS_DLQ_URL",
                file=stream,
            )
            return 2
        sqs = session.sqs()
        if args.action == "list":
            return dlq_list(sqs, pairs, stream)
        chosen = (
            [pairs[args.queue]]
            if args.queue in pairs
            else list(pairs.values())
            if args.queue in (None, "all")
            else []
        )
        if not chosen:
            print(f"no {args.queue} dead-letter queue configured", file=stream)
            return 2
        codes = [
            dlq_show(sqs, pair, stream, limit=args.limit, bodies=args.bodies, max_chars=args.max_chars)
            if args.action == "show"
            else dlq_redrive(sqs, pair, stream, move_task=not args.no_move_task, wait=args.wait)
            for pair in chosen
        ]
        return max(codes)
    except AWS_ERRORS as exc:
        print(f"AWS error: {type(exc).__name__}: {exc}", file=stream)
        return 2


def _doctor(
    args: argparse.Namespace,
    session: Aws,
    env: Mapping[str, str],
    stream: TextIO,
    sender_for: Callable[[Settings], Sender] | None,
) -> int:
    marks = _marks(stream)
    if args.doctor_command == "check-connector":
        report = check_connector(
            session,
            targets(session, args.stack, env),
            env_name=args.env_name,
            url=args.url,
            method=args.method,
            sender_for=sender_for,
        )
        return print_report(report, marks, lambda line: print(line, file=stream))
    checks = doctor(
        session,
        targets(session, args.stack, env),
        check_url=args.check_url,
        method=args.method,
        data=args.data,
        auth=args.auth,
    )
    for check in checks:
        print(check.line(marks), file=stream)
    failed = sum(1 for c in checks if not c.ok)
    verdict = f"{failed} of {len(checks)} checks failed" if failed else f"all {len(checks)} checks passed"
    print(f"doctor: {verdict}", file=stream)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
