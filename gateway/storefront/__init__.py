"""The web storefront: static files of a small ES-module client, served by the gateway.

The gateway mixes :class:`StorefrontEntrypoints` into its service; the pages talk to the
public ``/api`` routes on the same origin, so the shop needs no CORS and no private API.
See docs/storefront.md.
"""

from gateway.storefront.files import (
    SECURITY_HEADERS,
    StorefrontEntrypoints,
    not_found_page,
    page_response,
    prefers_html,
)

__all__ = [
    "SECURITY_HEADERS",
    "StorefrontEntrypoints",
    "not_found_page",
    "page_response",
    "prefers_html",
]
