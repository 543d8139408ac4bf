"""Nameko's web server, answering in the contract's JSON even what no route ever sees.

eventlet's WSGI server refuses some requests before the application runs, with answers
of its own: 414 with an empty body for a request line of 8 KiB or more
(``url_length_limit``); ``400 Header Line Too Long`` and ``400 Headers Too Large``, empty,
for a header line of 8 KiB or more or 64 KiB of headers in all; a bare 400 for a
``Content-Length`` that is not a number, or one sent with ``Transfer-Encoding``; and the
standard library's HTML error page for a malformed request line, an HTTP version other
than 1.x, or more than 100 headers (431).

:class:`ContractHttpProtocol` subclasses the protocol class Nameko hands to eventlet
(the seam is ``WebServer.get_wsgi_server(protocol=...)``) and answers each of those as
the contract does: 414 ``URI_TOO_LONG``, 431 ``HEADERS_TOO_LARGE`` or 400
``BAD_REQUEST``, a JSON body ``{error, message, details}`` with an ``X-Request-ID``, and
the connection closed (what follows on it cannot be trusted). The limits stay eventlet's.

:class:`ContractWebServer` is Nameko's ``WebServer`` with that protocol, and :func:`http`
is Nameko's ``@http`` on it: the gateway's routes use it, and the services' operations
endpoints (``common.ops_http``) extend it. Requests that do reach the application cost
nothing more.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from eventlet.wsgi import HeaderLineTooLong
from eventlet.wsgi import HeadersTooLarge as EventletHeadersTooLarge
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer

from common.errors import BadRequest, HeadersTooLarge, ShopError, UriTooLong
from common.logs import new_request_id

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: The standard library's refusals (``send_error``) by status; any other status is a 400.
_REFUSALS: dict[int, type[ShopError]] = {414: UriTooLong, 431: HeadersTooLarge}


class ContractHttpProtocol(HttpOnlyProtocol):
    """eventlet's HTTP protocol whose own refusals are the contract's JSON errors."""

    def _read_request_line(self) -> Any:
        # eventlet reads at most url_length_limit bytes and answers 414 itself when the
        # line fills them; answering here leaves it an empty line, which closes quietly.
        line = super()._read_request_line()
        if len(line) >= self.server.url_length_limit:
            self.refuse(
                UriTooLong(
                    f"The request line is longer than {self.server.url_length_limit - 1} bytes."
                )
            )
            return b""
        return line

    def parse_request(self) -> bool:
        """The standard library's parse, with eventlet's header limits and its checks of
        ``Content-Length`` answered in JSON (it would answer them raw right after)."""
        try:
            if not super().parse_request():
                return False  # send_error answered
        except HeaderLineTooLong:
            self.refuse(HeadersTooLarge("A header line is 8 KiB or longer."))
            return False
        except EventletHeadersTooLarge:
            self.refuse(HeadersTooLarge("The headers are larger than 64 KiB in all."))
            return False
        length = self.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                self.refuse(BadRequest("Content-Length must be a whole number of bytes."))
                return False
            if self.headers.get("transfer-encoding") is not None:
                self.refuse(BadRequest("Content-Length and Transfer-Encoding exclude each other."))
                return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's refusals (a malformed request line, an HTTP version
        other than 1.x, too many headers) as the contract's errors."""
        error_class = _REFUSALS.get(code, BadRequest)
        self.refuse(error_class(message or HTTPStatus(code).phrase))

    def refuse(self, error: ShopError) -> None:
        """Answer ``error`` as the API does, then close the connection."""
        body = json.dumps(error.to_body()).encode()
        head = (
            f"HTTP/1.1 {error.http_status} {HTTPStatus(error.http_status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{REQUEST_ID_HEADER}: {new_request_id()}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.close_connection = True
        log.info(
            "refused before routing: %s %s",
            error.http_status,
            error.code,
            extra={"status": error.http_status, "client": self.client_address[0]},
        )
        try:
            self.wfile.write(head.encode("ascii") + body)
            self.wfile.flush()
        except OSError:
            pass  # the client is gone: nothing to answer


class ContractWebServer(WebServer):
    """Nameko's ``WebServer`` on :class:`ContractHttpProtocol`."""

    def get_wsgi_server(
        self, sock: Any, wsgi_app: Any, protocol: type = ContractHttpProtocol, debug: bool = False
    ) -> Any:
        return super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)


class HttpEntrypoint(HttpRequestHandler):
    """Nameko's ``@http`` entrypoint, served by :class:`ContractWebServer`. Every ``@http``
    of a container must use it: Nameko's own would start a second server on the port."""

    server = ContractWebServer()


http = HttpEntrypoint.decorator
