"""Container health checks: ``python -m common.healthcheck rpc users`` or ``http URL``.

``rpc SERVICE`` calls the service's ``health`` RPC over the broker named in
``config.yml`` (so it proves the process consumes its queue, not just that it
runs); ``http URL`` expects a 2xx answer (the gateway's ``/health``). Exit
status 0 means healthy, 1 not, with the reason on stdout, as Docker's
``HEALTHCHECK`` and compose's ``healthcheck`` expect.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections.abc import Sequence

from common.config import DEFAULT_CONFIG_PATH, load_config
from common.uris import redact_uri

#: Seconds a check may take; compose's ``timeout`` should be larger.
DEFAULT_TIMEOUT = 5.0
#: The RPC method every service answers (``users.service.UsersService.health``).
HEALTH_METHOD = "health"


def check_rpc(service: str, config_path: str, timeout: float) -> None:
    """Call ``<service>.health()``; raises on failure or after ``timeout`` s."""
    from nameko_redis_transport.nameko.standalone.rpc import ClusterRpcProxy

    config = load_config(config_path)
    with ClusterRpcProxy(config, timeout=timeout) as cluster:
        getattr(getattr(cluster, service), HEALTH_METHOD)()


def check_http(url: str, timeout: float) -> None:
    """GET ``url``; raises unless it answers 2xx within ``timeout`` s."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own URL
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``rpc SERVICE [--config]`` or ``http URL``, each with ``--timeout``."""
    parser = argparse.ArgumentParser(prog="python -m common.healthcheck")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    checks = parser.add_subparsers(dest="check", required=True)
    rpc = checks.add_parser("rpc", help="call SERVICE.health() over the broker")
    rpc.add_argument("service")
    rpc.add_argument("--config", default=DEFAULT_CONFIG_PATH)
    http = checks.add_parser("http", help="expect 2xx from URL")
    http.add_argument("url")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; 0 if healthy, 1 if not."""
    args = parse_args(argv)
    try:
        if args.check == "rpc":
            check_rpc(args.service, args.config, args.timeout)
        else:
            check_http(args.url, args.timeout)
    except Exception as exc:
        print(f"unhealthy: {type(exc).__name__}: {redact_uri(str(exc))}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
