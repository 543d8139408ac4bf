"""common.healthcheck: the container health checks compose runs."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.healthcheck import main, parse_args
from devtools.embedded import free_port


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_2xx_is_healthy(http_server, capsys):
    assert main(["http", f"{http_server}/health"]) == 0
    assert capsys.readouterr().out.strip() == "healthy"


def test_http_error_status_is_unhealthy(http_server, capsys):
    assert main(["http", f"{http_server}/other"]) == 1
    assert "503" in capsys.readouterr().out


def test_nothing_listening_is_unhealthy(capsys):
    assert main(["--timeout", "1", "http", f"http://127.0.0.1:{free_port()}/health"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: ")


def test_rpc_arguments():
    args = parse_args(["--timeout", "2", "rpc", "users"])
    assert (args.check, args.service, args.config, args.timeout) == (
        "rpc",
        "users",
        "config.yml",
        2,
    )
