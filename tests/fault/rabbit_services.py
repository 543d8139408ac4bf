"""The one service the RabbitMQ restart test runs under ``nameko run``.

``Receiver`` handles ``sender.noted`` events and appends each event's ``n`` to
the file named by the config's ``RECEIVED_FILE``, so the test sees what was
handled, and how many times, after the process is gone.
"""

from __future__ import annotations

from nameko.events import SERVICE_POOL, event_handler
from nameko.extensions import DependencyProvider


class ReceivedFile(DependencyProvider):
    """Gives workers ``received(n)``: one line in ``RECEIVED_FILE`` per handled event."""

    def setup(self) -> None:
        self.path = self.container.config["RECEIVED_FILE"]

    def get_dependency(self, worker_ctx):
        def received(n: int) -> None:
            with open(self.path, "a") as out:
                out.write(f"{n}\n")

        return received


class Receiver:
    name = "receiver"
    received = ReceivedFile()

    @event_handler("sender", "noted", handler_type=SERVICE_POOL)
    def on_noted(self, payload: dict) -> None:
        self.received(payload["n"])
