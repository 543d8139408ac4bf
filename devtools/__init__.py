"""Local tooling for development and tests: embedded servers and the `make run` command.

No service imports this package; production runs real Redis and MongoDB.
"""
