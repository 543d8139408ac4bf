"""The parts of bench/gateway.py that interpret numbers: wrk output, /proc, profiles, report."""

import math
import os

import pytest
import yaml

from bench.gateway import PATHS, Idle, PathResult, failed_path, report, summary_line
from bench.gateway_load import (
    cpu_ticks,
    descendants,
    ms_per_request,
    parse_schedstat,
    parse_stat_ticks,
    parse_wrk_output,
    scheduler_ns,
)
from bench.gateway_profile import parse_collapsed, summarise
from bench.gateway_stack import CONFIG_OVERRIDES, bench_config, with_config

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:3000/api/orders
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.19ms    1.84ms    1.02s    88.81%
    Req/Sec     2.02k   293.99     2.56k    60.00%
  Latency Distribution
     50%  850.00us
     75%    2.40ms
     90%    4.16ms
     99%    1.20s
  20160 requests in 10.01s, 1.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 7
Requests/sec:   2014.00
Transfer/sec:      1.00MB
bench: placed=10 paid=9 failed=1
"""


def test_wrk_output_gives_rates_percentiles_in_ms_and_errors():
    result = parse_wrk_output(WRK_OUTPUT)
    assert result.requests == 20160
    assert result.seconds == pytest.approx(10.01)
    assert result.per_second == pytest.approx(20160 / 10.01)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1200.0)
    assert (result.non_2xx, result.socket_errors, result.errors) == (7, 10, 17)
    assert result.script == {"placed": "10", "paid": "9", "failed": "1"}


def test_wrk_output_without_errors_counts_none():
    text = WRK_OUTPUT.replace("  Socket errors: connect 1, read 2, write 3, timeout 4\n", "")
    text = text.replace("  Non-2xx or 3xx responses: 7\n", "")
    assert parse_wrk_output(text).errors == 0


def test_wrk_output_without_a_latency_distribution_is_refused():
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk_output(WRK_OUTPUT.replace("     99%    1.20s\n", ""))


def test_stat_line_with_spaces_and_parentheses_in_the_name():
    fields = ["S", "41"] + ["0"] * 9 + ["250", "37"] + ["0"] * 30
    line = "1234 (nameko (run) x) " + " ".join(fields)
    assert parse_stat_ticks(line) == (41, 250, 37)


def test_descendants_follow_the_whole_tree_and_nothing_else():
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1}
    assert descendants(10, parents) == {10, 11, 12, 13}
    assert descendants(20, parents) == {20}


def test_cpu_ticks_of_this_process_grow_with_work():
    before = cpu_ticks({"me": os.getpid()})["me"]
    deadline = os.times().elapsed + 0.2
    while os.times().elapsed < deadline:
        sum(range(1000))
    after = cpu_ticks({"me": os.getpid()})["me"]
    assert after.total > before.total
    assert after.user >= before.user and after.system >= before.system


def test_schedstat_gives_running_and_waiting_ns():
    assert parse_schedstat("139338795 483830657 339\n") == (139338795, 483830657)


def test_scheduler_time_of_this_process_grows_with_work():
    before = scheduler_ns({"me": os.getpid()})["me"]
    deadline = os.times().elapsed + 0.1
    while os.times().elapsed < deadline:
        sum(range(1000))
    after = scheduler_ns({"me": os.getpid()})["me"]
    assert after[0] > before[0] and after[1] >= before[1]


def test_ms_per_request_converts_clock_ticks():
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    assert ms_per_request(ticks_per_second, 1000) == pytest.approx(1.0)
    assert math.isnan(ms_per_request(5, 0))


def test_profile_summary_counts_self_and_total_samples():
    raw = [
        "process 1:thread;main (app/svc.py:10);handle (app/svc.py:20);send (x/sock.py:5) 6\n",
        "process 1:thread;main (app/svc.py:10);handle (app/svc.py:21) 3\n",
        "process 1:thread;main (app/svc.py:11) 1\n",
    ]
    text = summarise(parse_collapsed(raw))
    self_part, total_part = text.split("top by total")
    assert "10 samples" in text
    assert "60.0%  send (x/sock.py)" in self_part
    assert "30.0%  handle (app/svc.py)" in self_part
    assert "90.0%  handle (app/svc.py)" in total_part
    assert "100.0%  main (app/svc.py)" in total_part


def test_profile_summary_can_set_apart_samples_by_their_innermost_frame():
    raw = [
        "process 1:thread;main (app/svc.py:10);send (x/sock.py:5) 6\n",
        "process 1:thread;main (app/svc.py:10);encode (app/svc.py:30) 3\n",
        "process 1:thread;main (app/svc.py:11) 1\n",
    ]
    text = summarise(parse_collapsed(raw), exclude_leaf="^send ")
    assert text.startswith("4 samples (6 more set apart")
    assert "75.0%  encode (app/svc.py)" in text
    assert "send (x/sock.py)" not in text


def test_bench_config_raises_the_limits_and_keeps_the_rest(tmp_path):
    source = tmp_path / "config.yml"
    source.write_text("AMQP_URI: ${AMQP_URI:redis://x}\nRATE_LIMIT_PER_MINUTE: 5\n")

    loaded = yaml.safe_load(bench_config(source, tmp_path / "copy.yml").read_text())
    assert loaded["AMQP_URI"] == "${AMQP_URI:redis://x}"
    for key, value in CONFIG_OVERRIDES.items():
        assert loaded[key] == value


def test_procfile_command_reads_the_bench_config(tmp_path):
    argv = with_config("nameko run --config config.yml users.service", tmp_path / "c.yml")
    assert argv == ["nameko", "run", "--config", str(tmp_path / "c.yml"), "users.service"]


def _result(key: str, **cpu_ms: float) -> PathResult:
    path = next(p for p in PATHS if p.key == key)
    return PathResult(path, 100, 10.0, 5.0, 12.0, 0, cpu_ms, {})


def test_report_ends_with_the_summary_line_and_ratios_to_health():
    results = [
        _result("health", gateway=0.5),
        _result("product", gateway=2.0, orders=1.0, mongo=1.0),
        _result("order", gateway=3.0, orders=1.0),
        _result("create", gateway=4.0, users=0.1, orders=5.0, payments=0.2, redis=9, mongo=9),
    ]
    idle = Idle({"gateway": 1.0}, {"gateway": 1.5})
    lines = report(results, idle, ["gateway", "users", "orders", "payments"])
    assert any("gateway 1.0 (1.5)" in line for line in lines)
    assert lines[-1] == "gateway-cpu-ms read=2.00 auth-read=3.00 order-total=9.30"
    product_row = next(line for line in lines if line.startswith("| GET /api/products/{id}"))
    assert product_row.endswith("| 4.00 |")  # 2.0 / 0.5


def test_summary_line_names_paths_not_run():
    assert summary_line([_result("health", gateway=0.5)]) == (
        "gateway-cpu-ms read=n/a auth-read=n/a order-total=n/a"
    )


def test_a_failed_path_is_a_row_of_its_own_and_counts_as_not_run():
    results = [
        _result("health", gateway=0.5),
        _result("product", gateway=2.0),
        failed_path(next(p for p in PATHS if p.key == "products"), "504 UPSTREAM_TIMEOUT"),
        failed_path(next(p for p in PATHS if p.key == "order"), "504 UPSTREAM_TIMEOUT"),
    ]
    lines = report(results, None, ["gateway"])
    assert "| GET /api/products?limit=10 | failed: 504 UPSTREAM_TIMEOUT |" in lines
    assert lines[-1] == "gateway-cpu-ms read=2.00 auth-read=n/a order-total=n/a"


def test_a_path_answering_errors_is_left_out_of_the_summary():
    results = [_result("health", gateway=0.5), _result("product", gateway=2.0)]
    results[1].errors = 50  # of 100 answers: mostly cheap 503s
    lines = report(results, None, ["gateway"])
    assert "GET /api/products/{id}: 50 errors for 100 answers; left out of what follows" in lines
    assert lines[-1] == "gateway-cpu-ms read=n/a auth-read=n/a order-total=n/a"


def test_a_gateway_group_runs_its_command_that_many_times_and_exits_with_the_worst():
    import subprocess
    import sys

    group = [sys.executable, "-m", "bench.gateway_group"]
    ran = subprocess.run(
        [*group, "3", sys.executable, "-c", "print('up')"], capture_output=True, text=True
    )
    # The three share one stdout: unbuffered, their writes may interleave ("upup\n\nup\n").
    assert (ran.returncode, ran.stdout.count("up")) == (0, 3)
    failed = subprocess.run([*group, "2", sys.executable, "-c", "raise SystemExit(3)"])
    assert failed.returncode == 3
