"""The gateway's bulkhead and how its refusals, the breaker's and outages reach a client."""

from __future__ import annotations

import eventlet
import pytest
from eventlet.event import Event
from kombu.exceptions import OperationalError
from nameko.exceptions import RpcTimeout
from redis.exceptions import ConnectionError as RedisConnectionError

from common.errors import OUTAGE_RETRY_AFTER, InternalError, NotFound, ServiceUnavailable
from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.bulkhead import BULKHEAD_RETRY_AFTER, Bulkhead, BulkheadFull, calls_per_service
from gateway.edge import GatewaySettings, _GuardedProxy
from gateway.errors import is_upstream_failure, to_shop_error


def hold(bulkhead: Bulkhead, release: Event) -> eventlet.GreenThread:
    """A call that stays in flight until ``release`` is sent."""
    thread = eventlet.spawn(bulkhead.call, release.wait)
    eventlet.sleep(0)  # let it enter
    return thread


def test_calls_beyond_the_limit_are_refused_at_once_and_room_comes_back():
    bulkhead = Bulkhead("orders", max_calls=2)
    release = Event()
    held = [hold(bulkhead, release) for _ in range(2)]
    assert bulkhead.in_flight == 2
    with pytest.raises(BulkheadFull) as refused:
        bulkhead.call(lambda: "never run")
    assert refused.value.retry_after == BULKHEAD_RETRY_AFTER
    release.send("done")
    assert [thread.wait() for thread in held] == ["done", "done"]
    assert bulkhead.in_flight == 0
    assert bulkhead.call(lambda: "ran") == "ran"


def test_a_failing_call_gives_its_room_back():
    bulkhead = Bulkhead("orders", max_calls=1)
    with pytest.raises(RpcTimeout):
        bulkhead.call(lambda: (_ for _ in ()).throw(RpcTimeout("late")))
    assert bulkhead.in_flight == 0 and bulkhead.call(lambda: 1) == 1


def test_each_service_has_its_own_room():
    bulkheads = {name: Bulkhead(name, 1) for name in ("orders", "users")}
    release = Event()
    hold(bulkheads["orders"], release)
    with pytest.raises(BulkheadFull):
        bulkheads["orders"].call(lambda: None)
    assert bulkheads["users"].call(lambda: "answered") == "answered"
    release.send(None)


@pytest.mark.parametrize(
    ("max_workers", "share", "room"), [(10, 0.5, 5), (10, 0.34, 3), (3, 0.1, 1), (10, 1, 10)]
)
def test_the_room_is_a_share_of_the_workers_one_call_at_least(max_workers, share, room):
    assert calls_per_service(max_workers, share) == room


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "half"])
def test_a_share_must_be_above_zero_and_at_most_one(value):
    with pytest.raises(ValueError, match="BULKHEAD_SHARE"):
        GatewaySettings.read({"BULKHEAD_SHARE": value})


def test_defaults_half_the_workers_and_a_one_second_cool_down():
    settings = GatewaySettings.read({})
    assert settings.bulkhead_share == 0.5 and settings.breaker_reset_seconds == 1.0


class Proxy:
    service_name = "orders"

    def __init__(self, outcome):
        self.outcome = outcome

    def get_order(self, order_id):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def test_a_refusal_for_room_is_no_verdict_on_the_services_health():
    breaker = CircuitBreaker("orders", 1, counts_as_failure=is_upstream_failure)
    bulkhead = Bulkhead("orders", 1)
    release = Event()
    hold(bulkhead, release)
    guarded = _GuardedProxy(Proxy({"id": "o-1"}), breaker, bulkhead)
    with pytest.raises(BulkheadFull):
        guarded.get_order("o-1")
    release.send(None)
    eventlet.sleep(0)
    assert breaker.state == "closed"
    with pytest.raises(RpcTimeout):
        _GuardedProxy(Proxy(RpcTimeout("late")), breaker, bulkhead).get_order("o-1")
    assert breaker.state == "open"  # one upstream failure opens this breaker
    with pytest.raises(BreakerOpen):
        guarded.get_order("o-1")
    assert bulkhead.in_flight == 0  # an open breaker answers without holding room


@pytest.mark.parametrize(
    ("exc", "retry_after"),
    [
        (BulkheadFull("orders", 5), BULKHEAD_RETRY_AFTER),
        (BreakerOpen("orders", 0.4), 1),
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:6379"), OUTAGE_RETRY_AFTER),
        (OperationalError("broker down"), 5),
        (ServiceUnavailable("db", retry_after=2), 2),
    ],
    ids=lambda value: type(value).__name__,
)
def test_refusals_and_outages_reach_the_client_as_503_with_retry_after(exc, retry_after):
    error = to_shop_error(exc, "req-1")
    assert isinstance(error, ServiceUnavailable) and error.retry_after == retry_after
    assert "6379" not in error.message


def test_anything_else_stays_itself_or_a_500():
    assert isinstance(to_shop_error(NotFound(), "req-1"), NotFound)
    assert isinstance(to_shop_error(KeyError("x"), "req-1"), InternalError)
