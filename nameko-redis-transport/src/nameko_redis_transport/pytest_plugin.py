"""Pytest plugin (registered by this project's ``pytest11`` entry point).

Pytest's assertion rewriter sits first on ``sys.meta_path`` and executes the
modules of every pytest-plugin distribution itself, Nameko's among them, so
the activation hooks would never see ``nameko.*`` imported. Loading this
plugin puts them back in front, before any test or conftest imports Nameko.
"""

from nameko_redis_transport import activation

if activation.is_active():
    activation.activate()
