import pytest

from gateway.breaker import CLOSED, HALF_OPEN, OPEN, BreakerOpen, CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Down(Exception):
    pass


class Business(Exception):
    pass


def fail():
    raise Down()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker(
        "orders",
        failure_threshold=3,
        reset_timeout=10,
        counts_as_failure=lambda exc: isinstance(exc, Down),
        clock=clock,
    )


def test_it_opens_after_the_threshold_and_refuses_at_once(breaker, clock):
    for _ in range(3):
        with pytest.raises(Down):
            breaker.call(fail)
    assert breaker.state == OPEN
    calls = []
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: calls.append(1))
    assert calls == [] and refused.value.retry_after == 10
    clock.now = 4
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: None)
    assert refused.value.retry_after == 6


def test_business_errors_and_successes_do_not_open_it(breaker):
    for _ in range(2):
        with pytest.raises(Down):
            breaker.call(fail)
    with pytest.raises(Business):
        breaker.call(lambda: (_ for _ in ()).throw(Business()))
    for _ in range(2):
        with pytest.raises(Down):
            breaker.call(fail)
    assert breaker.state == CLOSED  # the business error reset the run of failures


def test_after_the_cool_down_one_trial_decides(breaker, clock):
    for _ in range(3):
        with pytest.raises(Down):
            breaker.call(fail)
    clock.now = 10
    assert breaker.state == HALF_OPEN
    with pytest.raises(Down):
        breaker.call(fail)  # the trial fails: open again, for a full cool-down
    assert breaker.state == OPEN
    with pytest.raises(BreakerOpen):
        breaker.call(lambda: 1)
    clock.now = 20
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == CLOSED
