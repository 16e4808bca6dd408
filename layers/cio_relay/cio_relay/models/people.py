"""The App API's people search body (its own module: EventsFunction needs it without the email models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class SearchFilter(BaseModel):
    """POST /v1/customers body: Customer.io's people filter, passed through unchanged."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # one API route only: built on first use

    filter: dict[str, Any]
