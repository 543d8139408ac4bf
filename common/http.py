"""JSON responses in the public API's shape, for every HTTP entrypoint of the shop.

The gateway answers with them, and so do the services' own operations endpoints
(:mod:`common.ops_http`), so an error looks the same on every port.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response

from common.errors import ShopError


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    if status == 204:
        return Response(status=204, headers=headers)
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(error: ShopError, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if error.http_status == 405 and "allowed" in error.details:
        headers["Allow"] = ", ".join(error.details["allowed"])  # RFC 9110 requires it on 405
    return json_response(error.to_body(), status=error.http_status, headers=headers)
