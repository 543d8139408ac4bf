"""What a service's ``health`` RPC reports, the same way in every service."""

from __future__ import annotations

from pymongo.database import Database

from common.mongo import ping

STATUS_OK = "ok"
STATUS_DEGRADED = "degraded"
#: Seconds the database may take to answer: well inside the gateway's probe timeout.
MONGO_PING_TIMEOUT = 1.0


def health_report(service: str, database: Database) -> dict:
    """``{"service", "status", "mongo"}``: ``ok`` only when the service's database answers."""
    mongo_up = ping(database, timeout=MONGO_PING_TIMEOUT)
    return {
        "service": service,
        "status": STATUS_OK if mongo_up else STATUS_DEGRADED,
        "mongo": "up" if mongo_up else "down",
    }
