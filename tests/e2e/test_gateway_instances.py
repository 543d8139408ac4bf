"""Several gateway instances side by side, as behind a load balancer: any of them serves
any request, and what must be shared (rate limits, revoked tokens) lives in Redis."""

from __future__ import annotations

from devtools.embedded import free_port
from gateway.service import GatewayService
from orders.service import OrdersService
from payments.service import PaymentsService
from tests.e2e.conftest import Api, assert_error
from tests.support import wait_for_a_fresh_window
from users.service import UsersService

RATE_LIMIT = 6


def test_two_gateways_share_rate_limits_and_revocations(run_services, shop_config):
    run_services(UsersService, OrdersService, PaymentsService)
    gateways = []
    for _ in range(2):
        port = free_port()
        config = dict(
            shop_config, WEB_SERVER_ADDRESS=f"127.0.0.1:{port}", RATE_LIMIT_PER_MINUTE=RATE_LIMIT
        )
        run_services(GatewayService, config=config)
        gateways.append(Api(f"http://127.0.0.1:{port}"))
    first, second = gateways

    wait_for_a_fresh_window()
    # A token from one instance works on the other; logging out on one ends it on both.
    access, _ = first.customer()  # 2 requests on the first
    assert second("GET", "/api/users/me", token=access)[0] == 200
    assert second("POST", "/api/users/logout", token=access)[0] == 204
    assert_error(first("GET", "/api/users/me", token=access), 401, "UNAUTHORIZED")
    # Five requests so far, split across both: the sixth is the last one allowed, on
    # either instance, and the next is refused on both.
    assert second("GET", "/api/products")[0] == 200
    assert_error(first("GET", "/api/products"), 429, "RATE_LIMITED")
    assert_error(second("GET", "/api/products"), 429, "RATE_LIMITED")
