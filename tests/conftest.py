"""Test-suite wide setup.

Nameko needs eventlet's monkey patch before anything opens a socket, and
Nameko's pytest plugin no longer applies it, so it happens here, first.
"""

import eventlet

eventlet.monkey_patch()

pytest_plugins = [
    "nameko_redis_transport.testing.brokers",
    "nameko_redis_transport.testing.sentinel",
    "tests.fixtures.mongo",
    "tests.fixtures.services",
]
