"""Times from requests: a conversion that would overflow is a 400 (PARAMETER_OUT_OF_RANGE), never a 500."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import timestamp_pb2

from svckit.errors import InvalidArgument
from svckit.times import MAX_UNIX_SECONDS, to_datetime, unix_seconds


@pytest.mark.parametrize("seconds", [2**62, MAX_UNIX_SECONDS + 1, -62135596801])
def test_timestamp_outside_0001_9999_is_invalid_argument(seconds: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        to_datetime(timestamp_pb2.Timestamp(seconds=seconds), "start_time")
    assert exc.value.reason == "PARAMETER_OUT_OF_RANGE" and "start_time" in exc.value.message


def test_timestamp_ends_convert() -> None:
    last = to_datetime(timestamp_pb2.Timestamp(seconds=MAX_UNIX_SECONDS), "t")
    assert last == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize("seconds", [-1, MAX_UNIX_SECONDS + 1, 2**63 - 1])
def test_unix_seconds_range(seconds: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        unix_seconds(seconds, "date_from")
    assert exc.value.reason == "PARAMETER_OUT_OF_RANGE" and exc.value.metadata == {"parameter": "date_from"}
    assert unix_seconds(MAX_UNIX_SECONDS, "date_from") == MAX_UNIX_SECONDS
