"""Pytest fixtures and real servers for testing Nameko services on this transport.

Register the fixtures in a project's top ``conftest.py``, after eventlet's
monkey patch::

    pytest_plugins = ["nameko_redis_transport.testing.brokers",
                      "nameko_redis_transport.testing.processes"]

``brokers``: ``redis_url``, ``redis_client``, ``broker`` (once over Redis, once
over RabbitMQ), ``redis_broker_only``, each test isolated by its own kombu key
prefix or RabbitMQ vhost. ``processes``: ``service_processes`` (real
``nameko run`` processes) and ``records`` (what they recorded in Redis).
"""
