"""bench/floor.py's report: the table against /health and the summary line."""

from bench.floor import PATHS, FloorResult, report

HEALTH, ECHO, FIND = PATHS


def _result(path, gateway, backend, errors=0, count=1000):
    cpu = {"gateway": gateway, "backend": backend, "redis": 0.1, "mongo": 0.2}
    return FloorResult(path, count, count / 10, 4.0, 8.0, errors, cpu)


def test_the_last_line_gives_the_floor_of_each_process_and_rows_compare_with_health():
    lines = report([_result(HEALTH, 0.25, 0.0), _result(ECHO, 0.5, 0.3), _result(FIND, 0.55, 0.6)])
    assert lines[-1] == (
        "floor-cpu-ms gateway-http=0.25 gateway-rpc=0.50 backend-rpc=0.30 backend-find=0.60"
    )
    echo_row = next(line for line in lines if line.startswith(f"| {ECHO.label} |"))
    assert echo_row.endswith("| 0.50 | 0.30 | 0.10 | 0.20 | 2.00 |")


def test_a_path_that_answered_errors_or_did_not_run_is_not_a_floor():
    lines = report([_result(HEALTH, 0.25, 0.0), _result(ECHO, 0.1, 0.1, errors=500)])
    assert lines[-1] == (
        "floor-cpu-ms gateway-http=0.25 gateway-rpc=n/a backend-rpc=n/a backend-find=n/a"
    )
