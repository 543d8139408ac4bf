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


def opened(breaker, clock):
    for _ in range(3):
        with pytest.raises(Down):
            breaker.call(fail)
    clock.now += 10  # the reset timeout has passed: the next call draws the trial


def test_a_trial_whose_probe_fails_refuses_the_call_and_opens_it_again(breaker, clock):
    opened(breaker, clock)
    calls = []
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: calls.append(1), probe=fail)
    assert calls == [] and refused.value.retry_after == 10
    assert breaker.state == OPEN
    clock.now += 9
    with pytest.raises(BreakerOpen):  # still open: no second trial before the timeout
        breaker.call(lambda: calls.append(1), probe=lambda: None)
    assert calls == []


def test_a_trial_whose_probe_answers_closes_it_and_serves_the_call(breaker, clock):
    opened(breaker, clock)
    probes = []
    assert breaker.call(lambda: "served", probe=lambda: probes.append(1)) == "served"
    assert probes == [1] and breaker.state == CLOSED
    assert breaker.call(lambda: "again", probe=lambda: probes.append(1)) == "again"
    assert probes == [1]  # a closed breaker does not probe


def test_while_a_probe_runs_other_calls_are_refused_at_once(breaker, clock):
    opened(breaker, clock)
    refused = []

    def probe():
        with pytest.raises(BreakerOpen):
            breaker.call(lambda: refused.append("served anyway"))
        refused.append("refused")

    assert breaker.call(lambda: "served", probe=probe) == "served"
    assert refused == ["refused"]
