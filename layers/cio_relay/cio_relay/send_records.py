"""Powertools' DynamoDB idempotency store, able to tell a send abandoned mid-way from one never made."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import (
    STATUS_CONSTANTS,
    DataRecord,
)
from botocore.exceptions import ClientError

from cio_relay.errors import OutcomeUnknown

IN_PROGRESS = STATUS_CONSTANTS["INPROGRESS"]


class SendRecords(DynamoDBPersistenceLayer):
    """With `park_abandoned`, an in-progress record whose invocation ended (it died between sending
    and recording) is not silently taken over and sent again, as Powertools does: it is removed and
    the send raises OutcomeUnknown, so the message is parked for a person (a redrive then sends it)."""

    def __init__(self, *, park_abandoned: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._park_abandoned = park_abandoned

    def _put_record(self, data_record: DataRecord) -> None:
        if self._park_abandoned and self._put_unless_taken(data_record):
            return
        super()._put_record(data_record)

    def _put_unless_taken(self, data_record: DataRecord) -> bool:
        """Put the in-progress record where no live record exists; False when one exists (Powertools'
        own put then reports it). Raises OutcomeUnknown for an abandoned in-progress record."""
        now = time.time()
        item = {
            **self._get_key(data_record.idempotency_key),
            self.expiry_attr: {"N": str(data_record.expiry_timestamp)},
            self.status_attr: {"S": data_record.status},
        }
        if data_record.in_progress_expiry_timestamp is not None:
            item[self.in_progress_expiry_attr] = {"N": str(data_record.in_progress_expiry_timestamp)}
        if self.payload_validation_enabled and data_record.payload_hash:
            item[self.validation_key_attr] = {"S": data_record.payload_hash}
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(#id) OR #expiry < :now",
                ExpressionAttributeNames={"#id": self.key_attr, "#expiry": self.expiry_attr},
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            if old and self._abandoned(self._item_to_data_record(old), now):
                self._remove(old)
                raise OutcomeUnknown(
                    "outcome unknown: an earlier attempt with this key was cut off between sending "
                    "and recording; check whether Customer.io sent it before redriving"
                ) from None
            return False
        return True

    @staticmethod
    def _abandoned(record: DataRecord, now: float) -> bool:
        expiry = record.in_progress_expiry_timestamp
        return record.status == IN_PROGRESS and expiry is not None and expiry < now * 1000

    def _remove(self, old: dict[str, Any]) -> None:
        # Only the abandoned record: a live attempt that replaced it meanwhile stays.
        self.client.delete_item(
            TableName=self.table_name,
            Key={self.key_attr: old[self.key_attr]},
            ConditionExpression="#in_progress_expiry = :seen",
            ExpressionAttributeNames={"#in_progress_expiry": self.in_progress_expiry_attr},
            ExpressionAttributeValues={":seen": old[self.in_progress_expiry_attr]},
        )
