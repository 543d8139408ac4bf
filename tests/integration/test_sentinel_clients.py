"""The shop's own Redis clients on a real Sentinel topology: the durability fence waits
for a replica and never confirms across a failover; the revocation list follows the
primary."""

from __future__ import annotations

import time

import pytest
import redis

from common.auth import RevocationList
from common.broker_durability import AofFence, NotDurable, probe
from common.errors import ServiceUnavailable
from common.redis_clients import client_for

pytestmark = pytest.mark.slow


def test_the_fence_waits_for_a_replica_and_refuses_to_confirm_across_a_failover(sentinel_topology):
    config = {"REDIS_SENTINEL_MASTER": sentinel_topology.master_name}
    assert probe(sentinel_topology.url, master_name=sentinel_topology.master_name).confirms
    client = client_for(sentinel_topology.url, config, socket_timeout=2)
    fence = AofFence(client, "test:fence")
    fence.prime()
    client.lpush("queue", "event-1")
    fence.confirm()
    # Confirmed means on the replica too: it is there after the primary dies.
    old = sentinel_topology.kill_primary()
    sentinel_topology.wait_for_failover(old)
    assert wait_until(lambda: client.lrange("queue", 0, -1) == [b"event-1"])

    # Writes since the last confirmation may have gone to the dead primary: the first
    # confirmation on the new one refuses; the next (local only, no replica yet) passes.
    with pytest.raises(NotDurable, match="primary changed"):
        fence.confirm()
    assert fence.confirm() == 0
    # The old primary comes back as a replica: confirmations wait for it again.
    sentinel_topology.restart_as_replica(old)
    assert wait_until(lambda: fence.confirm() == 1)


def test_revocations_follow_the_primary(sentinel_topology):
    config = {"REDIS_SENTINEL_MASTER": sentinel_topology.master_name}
    revocations = RevocationList(client_for(sentinel_topology.url, config, socket_timeout=2), "t:")
    revocations.revoke_token("jti-1", int(time.time()) + 600)
    sentinel_topology.master_client().execute_command("WAITAOF", 1, 1, 2000)
    old = sentinel_topology.kill_primary()
    sentinel_topology.wait_for_failover(old)
    claims = {"jti": "jti-1", "sid": "sid-1"}
    assert wait_until(lambda: revocations.is_revoked(claims))


def wait_until(check, timeout: float = 15.0) -> bool:
    """``check()`` true within ``timeout`` s; errors while the primary moves are retried."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (redis.ConnectionError, ServiceUnavailable):
            pass
        time.sleep(0.2)
    return False
