"""EventsFunction's REST API: the resolver and its routes (validate, enqueue; search and segments pass
through). app.py imports this module on the first API request, so a container that only ever handles
EventsQueue batches never builds it."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from cio_relay.batches import accept_batch
from cio_relay.cio import get_customerio
from cio_relay.forwarding import get_forwarder
from cio_relay.http_api import (
    PASS_THROUGH_ERRORS,
    PIPELINES_ERRORS,
    PIPELINES_NO_422,
    QUEUED_ERRORS,
    create_resolver,
)
from cio_relay.models.people import SearchFilter
from cio_relay.models.pipelines import (
    Alias,
    BatchQueued,
    BatchRequest,
    Group,
    Identify,
    Page,
    Queued,
    Screen,
    Track,
    delete_person,
)
from cio_relay.settings import get_settings

app = create_resolver(title="cio-relay events")

QUEUED: dict[int, Any] = {
    200: {"description": "queued on EventsQueue", "content": {"application/json": {"model": Queued}}},
    **QUEUED_ERRORS,
}
PIPELINES: dict[int, Any] = {**QUEUED, **PIPELINES_ERRORS, 422: PIPELINES_NO_422}
BATCH: dict[int, Any] = {
    **PIPELINES,
    200: {
        "description": "the valid calls queued on EventsQueue; `refused` lists the others",
        "content": {"application/json": {"model": BatchQueued}},
    },
}
PASSED_THROUGH: dict[int, Any] = {
    200: {
        "description": "Customer.io's answer, as it sent it",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **PASS_THROUGH_ERRORS,
}


@app.post("/v1/identify", responses=PIPELINES)
def identify(call: Annotated[Identify, Body()]) -> Queued:
    return get_forwarder().accept([call.wire()])


@app.post("/v1/track", responses=PIPELINES)
def track(call: Annotated[Track, Body()]) -> Queued:
    return get_forwarder().accept([call.wire()])


@app.post("/v1/page", responses=PIPELINES)
def page(call: Annotated[Page, Body()]) -> Queued:
    return get_forwarder().accept([call.wire()])


@app.post("/v1/screen", responses=PIPELINES)
def screen(call: Annotated[Screen, Body()]) -> Queued:
    return get_forwarder().accept([call.wire()])


@app.post("/v1/group", responses=PIPELINES)
def group(call: Annotated[Group, Body()]) -> Queued:
    return get_forwarder().accept([call.wire()])


@app.post("/v1/alias", responses=PIPELINES)
def alias(call: Annotated[Alias, Body()]) -> Queued:
    return get_forwarder().accept([call.wire()])


@app.post("/v1/batch", responses=BATCH)
def batch(
    body: Annotated[BatchRequest, Body()],
    strict_mode: Annotated[str | None, Header(alias="X-Strict-Mode")] = None,
) -> BatchQueued:
    strict = (strict_mode or "").strip() == "1"
    return accept_batch(
        body, strict=strict, forwarder=get_forwarder(), policy=get_settings().event_name_policy
    )


@app.delete("/v1/customers/<id>", responses=QUEUED)
def delete_customer(id: Annotated[str, Path(min_length=1, max_length=1024)]) -> Queued:
    return get_forwarder().accept([delete_person(unquote(id)).wire()])


@app.post("/v1/customers", responses=PASSED_THROUGH)
def search_people(
    body: Annotated[SearchFilter, Body()],
    start: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> dict[str, Any]:
    return get_customerio().app.search_people(body.filter, start=start, limit=limit)


@app.get("/v1/segments", responses=PASSED_THROUGH)
def list_segments() -> dict[str, Any]:
    return get_customerio().app.list_segments()
