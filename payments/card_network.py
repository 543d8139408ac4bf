"""The card network a payment is charged on: an interface, and a simulation of it.

``CardNetwork`` is what the payments service calls; a real provider's client implements
the same three methods. ``SimulatedCardNetwork`` approves every card but its decline list.
``CardNetworkProvider`` injects one network per container; give it another factory to
use a real provider (``CardNetworkProvider(factory=StripeNetwork)``).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from nameko.extensions import DependencyProvider

from payments.domain import Card, ChargeResult, RefundResult

#: Test cards the simulation declines, with the reason it gives.
DECLINED_CARDS: Mapping[str, str] = MappingProxyType(
    {
        "4000000000000002": "card_declined",
        "4000000000009995": "insufficient_funds",
    }
)
#: Test cards of the design document, approved (as is every card not declined above).
APPROVED_TEST_CARDS = ("4111111111111111", "5555555555554444")
#: Idempotency keys the simulation remembers (the oldest are forgotten first).
REMEMBERED_KEYS = 10_000


class CardNetwork(Protocol):
    def charge(
        self, amount_cents: int, card: Card, *, idempotency_key: str | None = None
    ) -> ChargeResult:
        """Charge the card; the same ``idempotency_key`` never charges twice."""
        ...

    def refund(
        self, charge_reference: str, amount_cents: int, *, idempotency_key: str | None = None
    ) -> RefundResult:
        """Give back ``amount_cents`` of an approved charge; a key refunds once."""
        ...

    def find_charge(self, idempotency_key: str) -> ChargeResult | None:
        """The charge made with ``idempotency_key`` (approved or declined), None if the
        network never charged under it: how an attempt a dead process left is settled."""
        ...


def _reference(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class SimulatedCardNetwork:
    """An in-process network: declines ``DECLINED_CARDS``, approves any other card."""

    def __init__(self, new_reference: Callable[[str], str] = _reference) -> None:
        self._new_reference = new_reference
        self._charges_by_key: OrderedDict[str, ChargeResult] = OrderedDict()
        self._refunds_by_key: OrderedDict[str, RefundResult] = OrderedDict()

    def charge(
        self, amount_cents: int, card: Card, *, idempotency_key: str | None = None
    ) -> ChargeResult:
        if amount_cents <= 0:
            raise ValueError("a charge must be of a positive amount")
        if idempotency_key is not None and idempotency_key in self._charges_by_key:
            return self._charges_by_key[idempotency_key]
        reason = DECLINED_CARDS.get(card.number)
        result = ChargeResult(
            approved=reason is None, reference=self._new_reference("sim_ch"), reason=reason
        )
        if idempotency_key is not None:
            _remember(self._charges_by_key, idempotency_key, result)
        return result

    def find_charge(self, idempotency_key: str) -> ChargeResult | None:
        return self._charges_by_key.get(idempotency_key)

    def refund(
        self, charge_reference: str, amount_cents: int, *, idempotency_key: str | None = None
    ) -> RefundResult:
        if amount_cents <= 0:
            raise ValueError("a refund must be of a positive amount")
        if idempotency_key is not None and idempotency_key in self._refunds_by_key:
            return self._refunds_by_key[idempotency_key]
        result = RefundResult(reference=self._new_reference("sim_re"))
        if idempotency_key is not None:
            _remember(self._refunds_by_key, idempotency_key, result)
        return result


def _remember(results: OrderedDict, key: str, result: Any) -> None:
    results[key] = result
    if len(results) > REMEMBERED_KEYS:
        results.popitem(last=False)


class CardNetworkProvider(DependencyProvider):
    """Injects the container's card network, made once by ``factory`` at setup."""

    def __init__(self, factory: Callable[[], CardNetwork] = SimulatedCardNetwork) -> None:
        self.factory = factory
        self.network: CardNetwork | None = None

    def setup(self) -> None:
        self.network = self.factory()

    def get_dependency(self, worker_ctx: Any) -> CardNetwork:
        return self.network
