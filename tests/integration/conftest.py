import pytest

from harness import Cleanup
from stacks import Stack


@pytest.fixture
def cleanup():
    c = Cleanup()
    yield c
    c.close()


@pytest.fixture(scope="module")
def module_cleanup():
    c = Cleanup()
    yield c
    c.close()


@pytest.fixture(scope="module")
def stack(module_cleanup):
    """One validation stack (MCP AS, echo backend, Envoy) shared by a module's
    tests that do not change it."""
    return Stack(module_cleanup)
