"""The security tests' account and callers: one test-mode account per module, its actors made once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.api_client import Http
from tests.e2e.conftest import Customer
from tests.security.actors import Actors, matrix_account
from tests.support import CertBundle
from tools.suite import Suite


@pytest.fixture(scope="module")
def account(suite: Suite, certs: CertBundle) -> Customer:
    return matrix_account(suite, certs)


@pytest.fixture(scope="module")
def http(account: Customer) -> Http:
    return Http(account.url, str(account.ca))


@pytest.fixture(scope="module")
def actors(suite: Suite, account: Customer, certs: CertBundle, http: Http) -> Iterator[Actors]:
    yield Actors(suite, account, certs, http)
