"""A request id follows a request through every service and into every log line."""

import json
import logging

import pytest
from nameko.rpc import RpcProxy, rpc
from nameko.standalone.rpc import ClusterRpcProxy

from common.logs import JsonFormatter, RequestContext, RequestIdFilter, SecretsFilter

log = logging.getLogger("tests.request_id")


class Front:
    name = "front"
    request = RequestContext()
    back = RpcProxy("back")

    @rpc
    def handle(self):
        log.info("front handling")
        return {"front": self.request, "back": self.back.handle()}


class Back:
    name = "back"
    request = RequestContext()

    @rpc
    def handle(self):
        log.info("back handling")
        return self.request


@pytest.fixture
def json_lines():
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(SecretsFilter())
    logging.getLogger("tests.request_id").addHandler(handler)
    logging.getLogger("tests.request_id").setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in lines]
    logging.getLogger("tests.request_id").removeHandler(handler)


def test_the_callers_request_id_reaches_every_service_and_log_line(
    run_services, shop_config, json_lines
):
    run_services(Front, Back)
    with ClusterRpcProxy(shop_config, context_data={"request_id": "req-123"}) as proxy:
        assert proxy.front.handle() == {"front": "req-123", "back": "req-123"}
    entries = json_lines()
    assert {(e["message"], e["request_id"], e["service"]) for e in entries} == {
        ("front handling", "req-123", "front"),
        ("back handling", "req-123", "back"),
    }


def test_a_chain_without_a_request_id_gets_one_that_is_shared(run_services, rpc, json_lines):
    run_services(Front, Back)
    with rpc() as proxy:
        ids = proxy.front.handle()
    assert ids["front"] and ids["front"] == ids["back"]
    assert {e["request_id"] for e in json_lines()} == {ids["front"]}
