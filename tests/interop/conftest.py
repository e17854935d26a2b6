"""Interop tests against peers nobody here wrote (Jasmin with RabbitMQ). They need more than `make test`
installs, so they run from `make interop` (SENDSAFE_INTEROP=1) and are skipped otherwise."""

from __future__ import annotations

import os

import pytest

from tests.integration.messaging.conftest import identity_app, keys_addr, keys_service, messaging_settings

__all__ = ["identity_app", "keys_addr", "keys_service", "messaging_settings"]  # the messaging fixtures, reused


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interop: needs Jasmin and RabbitMQ; run by `make interop`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SENDSAFE_INTEROP") == "1":
        return
    skip = pytest.mark.skip(reason="interop: run by `make interop` (SENDSAFE_INTEROP=1)")
    for item in items:
        if "interop" in item.keywords:
            item.add_marker(skip)
