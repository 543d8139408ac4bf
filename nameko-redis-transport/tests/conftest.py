"""The library's test setup: eventlet first, then the library's own fixtures.

Nameko needs eventlet's monkey patch before anything opens a socket. The test
directories hold no ``__init__.py`` on purpose: the shop's suite collects
them next to its own ``tests`` package, and two packages named ``tests``
would collide; pytest imports these files by their (unique) base names.
"""

from pathlib import Path

import eventlet

eventlet.monkey_patch()

import pytest  # noqa: E402

pytest_plugins = [
    "nameko_redis_transport.testing.brokers",
    "nameko_redis_transport.testing.sentinel",
    "nameko_redis_transport.testing.processes",
]


@pytest.fixture
def nameko_run_dir() -> Path:
    """``nameko run`` imports ``transport_services`` from here."""
    return Path(__file__).resolve().parent / "integration"
