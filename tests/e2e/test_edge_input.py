"""Numbers and times from outside are range-checked at the edge (issue 12, "Crashes and loose input"): every
value that does not fit its field, or its declared `(sendsafe.options.v1.range)`, is 400 with a reason the
client can act on, never 500 and never silently accepted."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer


@pytest.fixture
def http(customer: Customer) -> Http:
    return Http(customer.url, str(customer.ca))


def _v1_error(http: Http, customer: Customer, method: str, path: str, **kw: Any) -> dict[str, Any]:
    resp = http.call(method, path, auth=(customer.username, customer.api_key), **kw)
    assert resp.status == 400, (path, resp.status, resp.body)
    return dict(resp.json()["error"])


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/audit/events?page_size=-3", "page_size"),
        ("/v1/audit/alerts?page_size=-1", "page_size"),
        ("/v1/api-keys?page_size=-3", "page_size"),
        ("/v1/audit/events?page_size=2147483648", "page_size"),  # int32 overflow
        ("/v1/audit/checkpoint?tree_size=-1", "tree_size"),
        ("/v1/audit/checkpoint?tree_size=9223372036854775808", "tree_size"),  # int64 overflow
    ],
)
def test_v1_numeric_query_out_of_range_is_400(http: Http, customer: Customer, path: str, parameter: str) -> None:
    err = _v1_error(http, customer, "GET", path)
    assert (err["status"], err["reason"]) == ("INVALID_ARGUMENT", "PARAMETER_OUT_OF_RANGE")
    assert f"'{parameter}'" in err["message"] and "between" in err["message"]


@pytest.mark.parametrize(
    "query",
    [
        "date_from=99999999999999",  # past year 9999: was a 500 (to_timestamp overflow)
        "date_to=9223372036854775807",
        "date_from=-1",
        "page=-2",
        "limit=101",
        "limit=-15",
    ],
)
def test_v3_history_query_out_of_range_is_400(http: Http, customer: Customer, query: str) -> None:
    resp = http.call("GET", f"/v3/sms/history?{query}", auth=(customer.username, customer.api_key))
    assert resp.status == 400, (query, resp.status, resp.body)
    envelope = resp.json()
    assert envelope["http_code"] == 400 and envelope["response_code"] == "BAD_REQUEST"
    assert query.split("=")[0] in envelope["response_msg"]


@pytest.mark.parametrize("route", ["/v3/subaccounts", "/v3/sms/receipts", "/v3/sms/inbound"])
@pytest.mark.parametrize("query", ["limit=101", "limit=14", "page=-1"])
def test_v3_lists_share_one_paging_rule(http: Http, customer: Customer, route: str, query: str) -> None:
    """Every ClickSend list pages through svckit.paging: the same limits and the same 400, whichever service."""
    resp = http.call("GET", f"{route}?{query}", auth=(customer.username, customer.api_key))
    assert resp.status == 400, (route, query, resp.status, resp.body)
    assert query.split("=")[0] in resp.json()["response_msg"]


@pytest.mark.parametrize("route", ["/v3/sms/receipts-read", "/v3/sms/inbound-read"])
def test_v3_date_before_out_of_range_is_400(http: Http, customer: Customer, route: str) -> None:
    resp = http.call("PUT", route, auth=(customer.username, customer.api_key),
                     json_body={"date_before": 99999999999999})
    assert resp.status == 400, resp.body
    assert "date_before" in resp.json()["response_msg"]
    ok = http.call("PUT", route, auth=(customer.username, customer.api_key), json_body={"date_before": 253402300799})
    assert ok.status == 200, ok.body


@pytest.mark.parametrize("token", ["9999999999999999999", "9223372036854775808", "\uff11\uff12"])
def test_audit_page_token_above_int64_is_400(http: Http, customer: Customer, token: str) -> None:
    from urllib.parse import quote

    err = _v1_error(http, customer, "GET", f"/v1/audit/events?page_token={quote(token)}")
    assert (err["status"], err["reason"]) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")
    ok = http.call("GET", f"/v1/audit/events?page_token={2**63 - 1}", auth=(customer.username, customer.api_key))
    assert ok.status == 200 and ok.json()["events"] == []


def test_in_range_values_still_work(http: Http, customer: Customer) -> None:
    auth = (customer.username, customer.api_key)
    assert http.call("GET", "/v1/audit/events?page_size=0", auth=auth).status == 200
    resp = http.call("GET", "/v3/sms/history?date_from=0&date_to=253402300799&page=1&limit=100", auth=auth)
    assert resp.status == 200, resp.body
