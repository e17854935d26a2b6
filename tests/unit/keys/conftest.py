import pytest

from tests.unit.keys.harness import Parts, parts


@pytest.fixture
def p() -> Parts:
    return parts()
