"""Pipelines API calls (identify, track, page, screen, group, alias) and /v1/batch bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cio_relay.models import MAX_BATCH_BYTES as MAX_BATCH_BYTES  # noqa: PLC0414 - re-exported
from cio_relay.models import MAX_CALL_BYTES as MAX_CALL_BYTES  # noqa: PLC0414 - re-exported
from cio_relay.models import MAX_NESTING, describe, field_error, too_deep

USER_DELETED = "User Deleted"


def _identifier(value: object) -> object:
    # The Pipelines SDKs stringify numeric ids; do the same so a number is not a validation error.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# Customer.io refuses blank ids and event names, so a value must hold a non-space character.
Identifier = Annotated[str, BeforeValidator(_identifier), Field(min_length=1, max_length=1024, pattern=r"\S")]
Name = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"\S")]


def _iso8601(value: str) -> str:
    # Customer.io's `timestamp` is an ISO-8601 date-time; anything else it drops or misreads.
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("timestamp", "timestamp must be an ISO-8601 date-time") from None
    return value


# Kept as sent (a string), checked to be a date-time.
Timestamp = Annotated[str, Field(max_length=64), AfterValidator(_iso8601)]


# Models built only when first used (`defer_build`): a model costs 0.5-2 ms of cold start to build, and
# these are not needed by every invocation. PipelinesCall itself is never validated, only its subclasses,
# which are built at import (_BUILT): every EventsQueue record is validated against them.
_BUILT = ConfigDict(defer_build=False)


class PipelinesCall(BaseModel):
    """Fields common to every call. Unknown fields are kept and forwarded as sent."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, defer_build=True)

    type: str
    user_id: Identifier | None = Field(None, alias="userId")
    anonymous_id: Identifier | None = Field(None, alias="anonymousId")
    message_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(None, alias="messageId")
    timestamp: Timestamp | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any) -> Any:
        # One walk over the whole call (its fields are one level down); the field is named only on failure.
        if isinstance(data, dict) and too_deep(data, MAX_NESTING):
            for key, value in data.items():
                if too_deep(value, MAX_NESTING - 1):
                    raise field_error(str(key), f"JSON nested deeper than {MAX_NESTING} levels")
        return data

    @model_validator(mode="after")
    def _needs_identity(self) -> PipelinesCall:
        if self.requires_identity() and not (self.user_id or self.anonymous_id):
            raise field_error("userId", "userId or anonymousId is required")
        return self

    def requires_identity(self) -> bool:
        return True

    def wire(self) -> dict[str, Any]:
        """The JSON body as Customer.io takes it: what the caller sent, plus `type`."""
        # model_dump(mode="json", by_alias=True, exclude_unset=True) without its Python wrapper: this runs
        # once per EventsQueue record.
        data: dict[str, Any] = self.__pydantic_serializer__.to_python(
            self, mode="json", by_alias=True, exclude_unset=True
        )
        data["type"] = self.type
        return data


class Identify(PipelinesCall):
    model_config = _BUILT
    type: Literal["identify"] = "identify"
    traits: dict[str, Any] | None = None


class Track(PipelinesCall):
    model_config = _BUILT
    type: Literal["track"] = "track"
    event: Name
    properties: dict[str, Any] | None = None


class Page(PipelinesCall):
    model_config = _BUILT
    type: Literal["page"] = "page"
    name: str | None = None
    properties: dict[str, Any] | None = None


class Screen(PipelinesCall):
    model_config = _BUILT
    type: Literal["screen"] = "screen"
    name: str | None = None
    properties: dict[str, Any] | None = None


class Group(PipelinesCall):
    model_config = _BUILT
    type: Literal["group"] = "group"
    group_id: Identifier = Field(alias="groupId")
    traits: dict[str, Any] | None = None

    def requires_identity(self) -> bool:
        # docs/design.md: a group call is identified by its groupId.
        return False


class Alias(PipelinesCall):
    model_config = _BUILT
    type: Literal["alias"] = "alias"
    previous_id: Identifier = Field(alias="previousId")
    user_id: Identifier = Field(alias="userId")


Call = Annotated[Identify | Track | Page | Screen | Group | Alias, Field(discriminator="type")]
CALL_MODELS: dict[str, type[PipelinesCall]] = {
    "identify": Identify,
    "track": Track,
    "page": Page,
    "screen": Screen,
    "group": Group,
    "alias": Alias,
}


def shared_not_too_deep(data: Any) -> Any:
    """A batch's own keys are not nested too deep (its calls check themselves)."""
    for key, value in data.items() if isinstance(data, dict) else ():
        if key != "batch" and too_deep(value, MAX_NESTING - 1):
            raise field_error(str(key), f"JSON nested deeper than {MAX_NESTING} levels")
    return data


# What validation can change in a call: a field sent under its Python name comes out under its wire
# name (populate_by_name), a numeric id comes out as a string, and NaN/Infinity (which json.loads
# accepts) come out as null. Nothing else: other values are kept as sent.
_RENAMED = frozenset(
    name
    for model in CALL_MODELS.values()
    for name, f in model.model_fields.items()
    if f.alias not in (None, name)
)
_NUMERIC_IDS = ("userId", "anonymousId", "groupId", "previousId")


def wire_of(call: PipelinesCall, sent: dict[str, Any]) -> dict[str, Any]:
    """`call.wire()` for a call validated from `sent`, a finite JSON object (no NaN or Infinity):
    `sent` itself when validation changed nothing in it (the usual case), which spares re-serialising
    every EventsQueue record."""
    get = sent.get  # the four ids of _NUMERIC_IDS spelled out: this runs once per EventsQueue record
    if (
        _RENAMED.isdisjoint(sent)
        and type(get("userId")) is not int
        and type(get("anonymousId")) is not int
        and type(get("groupId")) is not int
        and type(get("previousId")) is not int
    ):
        return sent
    return call.wire()


class _BatchBody(BaseModel):
    """What every /v1/batch body has: the calls, and `context` and `integrations` for all of them."""

    # Built on first use: EventsQueue bodies are single calls unless another producer sent a batch.
    model_config = ConfigDict(extra="allow", defer_build=True)

    batch: list[Any] = Field(min_length=1, max_length=10_000)
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_too_deep(cls, data: Any) -> Any:
        return shared_not_too_deep(data)


class Batch(_BatchBody):
    """A /v1/batch body. `context` and `integrations` apply to every call in it."""

    batch: list[Call] = Field(min_length=1, max_length=10_000)

    def calls(self) -> list[dict[str, Any]]:
        """Each call's wire body with the batch-level context/integrations folded in (call keys win)."""
        return [fold(call.wire(), self.context, self.integrations) for call in self.batch]


def fold(
    body: dict[str, Any], context: dict[str, Any] | None, integrations: dict[str, Any] | None
) -> dict[str, Any]:
    """A call's wire body with a batch's shared context/integrations merged in (the call's keys win)."""
    for shared, outer in (("context", context), ("integrations", integrations)):
        if outer:
            body[shared] = {**outer, **(body.get(shared) or {})}
    return body


class Refusal(BaseModel):
    """One call of a /v1/batch that was not queued: its position, the field at fault and why."""

    model_config = ConfigDict(defer_build=True)

    index: int
    field: str
    message: str


def refusal(index: int, error: Any) -> Refusal:
    field, message = describe(error)
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        field = "type"  # no (or an unknown) call type
    where = f"batch.{index}" if field == "body" else f"batch.{index}.{field}"
    return Refusal(index=index, field=where, message=message)


class BatchRequest(_BatchBody):
    """A /v1/batch body as the API takes it: each call is checked on its own, so one bad call
    does not refuse the others (unless the caller asks for strict mode)."""

    def split(self) -> tuple[list[tuple[int, dict[str, Any]]], list[Refusal]]:
        """((index, wire body) of each valid call, a Refusal for each invalid one)."""
        valid: list[tuple[int, dict[str, Any]]] = []
        refused: list[Refusal] = []
        for index, item in enumerate(self.batch):
            try:
                call = _CALL.validate_python(item)
            except ValidationError as exc:
                refused.append(refusal(index, exc.errors()[0]))
                continue
            valid.append((index, fold(call.wire(), self.context, self.integrations)))
        return valid, refused


def delete_person(user_id: str) -> Track:
    """Customer.io deletes a person through the `User Deleted` semantic event, not a DELETE call."""
    return Track(userId=user_id, event=USER_DELETED)


_CALL = TypeAdapter[Any](Call)


class Queued(BaseModel):
    """Answer to a call accepted onto EventsQueue."""

    model_config = ConfigDict(defer_build=True)  # API answers only: built on first use

    status: Literal["queued"] = "queued"
    message_ids: list[str] = Field(description="SQS message ids, one per call")
    call_ids: list[str] = Field(description="the Pipelines messageId of each call, kept across retries")


class BatchQueued(Queued):
    """Answer to a /v1/batch: the calls queued, and each call refused (not queued) with its reason."""

    refused: list[Refusal] = Field(default_factory=list, description="calls not queued, by index")
