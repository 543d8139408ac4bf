"""The Nameko side of the library: one module per Nameko module it adjusts.

Each module offers the explicit seams a project can use (``SERVICE_CONTAINER_CLS``,
``publisher_cls``, subclasses of Nameko's extensions) and the patch functions that
:mod:`nameko_redis_transport.patches` applies for projects that do not opt in.
"""
