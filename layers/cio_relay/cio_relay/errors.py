"""The one error family: what went wrong, classified so callers never read HTTP statuses."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class Classification(StrEnum):
    """How the delivery policy (docs/delivery.md) treats a failure."""

    RETRYABLE = "retryable"
    AUTH = "auth"
    PERMANENT = "permanent"


class CioRelayError(Exception):
    """Base of every error cio-relay raises on purpose. `message` never holds a credential."""

    code = "error"
    classification = Classification.PERMANENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(CioRelayError):
    """The caller's input breaks a rule; `field` names the part at fault."""

    code = "invalid_request"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class PayloadTooLarge(InvalidRequest):
    """The input exceeds one of Customer.io's size limits."""

    code = "payload_too_large"
    status = 413


class Unsupported(InvalidRequest):
    """The call has no equivalent in the API the relay delivers to (e.g. an alias on the Track API)."""

    code = "unsupported_by_backend"
    status = 422


class ConfigurationError(CioRelayError):
    """The relay itself is misconfigured (missing credential, missing queue URL...)."""

    code = "configuration_error"
    classification = Classification.RETRYABLE


class EnqueueFailed(CioRelayError):
    """SQS did not accept a message, so nothing holds it: the caller must not be told it is queued.

    `queued_call_ids` names the calls of the same request that SQS did store, `not_queued` the
    positions (in the request's batch) of those it did not.
    """

    code = "enqueue_failed"
    classification = Classification.RETRYABLE

    def __init__(
        self, message: str, *, queued_call_ids: Sequence[str] = (), not_queued: Sequence[int] = ()
    ) -> None:
        super().__init__(message)
        self.queued_call_ids = tuple(queued_call_ids)
        self.not_queued = tuple(not_queued)

    def renumbered(self, places: Sequence[int]) -> EnqueueFailed:
        """The same failure with `not_queued` given as `places[position]` (the request's own numbering)."""
        return EnqueueFailed(
            self.message,
            queued_call_ids=self.queued_call_ids,
            not_queued=[places[i] for i in self.not_queued],
        )


class NotAttempted(CioRelayError):
    """A record was not sent because the invocation ran short of time; it comes back from the queue."""

    code = "not_attempted"
    classification = Classification.RETRYABLE


class CustomerIOError(CioRelayError):
    """Customer.io answered with an error, or could not be reached.

    `status` is None when no HTTP answer arrived (timeout, connection error).
    """

    code = "customerio_error"
    ambiguous = False  # True when the request may have reached Customer.io and been acted on

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Retryable(CustomerIOError):
    """429, 408, 5xx, timeouts and connection errors: try again later (SQS backoff)."""

    code = "customerio_unavailable"
    classification = Classification.RETRYABLE


class RateLimited(Retryable):
    """429 from Customer.io; `retry_after` holds Retry-After in seconds when it was sent."""

    code = "customerio_rate_limited"


class CustomerIOTimeout(Retryable):
    """No answer in time. If the request had been sent, Customer.io may have acted on it (ambiguous)."""

    code = "customerio_timeout"
    ambiguous = True


class ConnectionDropped(Retryable):
    """The connection closed after the request was written and before any answer (ambiguous)."""

    code = "customerio_unavailable"
    ambiguous = True


class OutcomeUnknown(CioRelayError):
    """A send left and no answer came (or its invocation died before recording it): Customer.io may
    have sent it. Under EMAIL_ON_AMBIGUOUS=dead_letter it is parked for a person to check."""

    code = "outcome_unknown"


class AuthRejected(CustomerIOError):
    """401/403: Customer.io refused the relay's credentials."""

    code = "customerio_auth_rejected"
    classification = Classification.AUTH


class Permanent(CustomerIOError):
    """Any other 4xx: sending the same thing again cannot succeed."""

    code = "customerio_rejected"
    classification = Classification.PERMANENT


class PartlyRefused(Permanent):
    """Some calls of one queue message were refused for good and the rest delivered.

    `dead_letter_body` holds only the refused calls, so a redrive never sends the delivered ones again.
    """

    code = "customerio_partly_refused"

    def __init__(self, message: str, *, status: int | None, dead_letter_body: str) -> None:
        super().__init__(message, status=status)
        self.dead_letter_body = dead_letter_body


class KeyReused(InvalidRequest):
    """The idempotency key already names a different email: a new email needs a new key."""

    code = "idempotency_key_reused"
    status = 422


class SendInProgress(CioRelayError):
    """A send with the same idempotency key is running right now; try again shortly."""

    code = "idempotency_in_progress"
    classification = Classification.RETRYABLE


class StoreUnavailable(CioRelayError):
    """The idempotency table could not be read or written, so the send cannot be made exactly once."""

    code = "idempotency_store_unavailable"
    classification = Classification.RETRYABLE


class CallsRefused(InvalidRequest):
    """Calls of a /v1/batch failed validation and nothing was queued; `errors` lists each one."""

    code = "validation_error"

    def __init__(
        self, message: str, *, field: str | None, errors: list[dict[str, str | int]], too_large: bool = False
    ) -> None:
        super().__init__(message, field=field)
        self.errors = errors
        if too_large:  # every refused call was over a size limit
            self.code, self.status = PayloadTooLarge.code, PayloadTooLarge.status
