"""/v1/batch as the Pipelines SDKs need it: valid calls are queued, each invalid one is listed.

One invalid call must not cost the others: an SDK that gets a 4xx for its batch drops every call in
it (or, for a status it does not treat as final, retries all of them). So the valid calls are
queued and the 200 answer lists each refused call with its index, field and message. A caller that
sends `X-Strict-Mode: 1` gets Customer.io's strict semantics instead: one invalid call refuses the
whole request (400) and nothing is queued. A batch of only invalid calls is a 400 either way.
"""

from __future__ import annotations

import uuid

from cio_relay.errors import CallsRefused, EnqueueFailed, InvalidRequest, PayloadTooLarge
from cio_relay.forwarding import Forwarder, check_conventions, encode_checked
from cio_relay.models.pipelines import BatchQueued, BatchRequest, Refusal


def screen(
    request: BatchRequest, event_name_policy: str
) -> tuple[list[dict[str, object]], list[Refusal], set[int]]:
    """The calls Forwarder.accept will take, a Refusal for each other one, and which were over size."""
    valid, refused = request.split()
    calls = []
    too_large: set[int] = set()
    for index, call in valid:
        where = f"batch.{index}"
        if call.get("messageId") is None:  # given here so the size checked is the size queued
            call["messageId"] = str(uuid.uuid4())
        try:
            if event_name_policy == "reject":  # "warn" is logged once, by accept
                check_conventions(call, event_name_policy, f"{where}.event")
            encode_checked(call, where)
        except InvalidRequest as exc:
            refused.append(Refusal(index=index, field=exc.field or where, message=exc.reason))
            if isinstance(exc, PayloadTooLarge):
                too_large.add(index)
            continue
        calls.append(call)
    refused.sort(key=lambda r: r.index)
    return calls, refused, too_large


def accept_batch(request: BatchRequest, *, strict: bool, forwarder: Forwarder, policy: str) -> BatchQueued:
    """Queue the valid calls. Raises CallsRefused (nothing queued): none valid, or strict and one not."""
    calls, refused, too_large = screen(request, policy)
    if refused and (strict or not calls):
        first = refused[0]
        # Over Customer.io's size limits and nothing else: 413, like a single call that is too large.
        oversize = too_large == {r.index for r in refused}
        raise CallsRefused(
            first.message, field=first.field, errors=[r.model_dump() for r in refused], too_large=oversize
        )
    try:
        queued = forwarder.accept(calls, batch=True)
    except EnqueueFailed as exc:  # name the calls not queued by their index in the request's batch
        skipped = {r.index for r in refused}
        raise exc.renumbered([i for i in range(len(calls) + len(skipped)) if i not in skipped]) from exc
    return BatchQueued(message_ids=queued.message_ids, call_ids=queued.call_ids, refused=refused)
