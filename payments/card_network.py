"""The card network a payment is charged on: an interface, and a simulation of it.

``CardNetwork`` is what the payments service calls; a real provider's client implements
the same two methods. ``SimulatedCardNetwork`` approves every card but its decline list.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from payments.domain import Card

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


@dataclass(frozen=True)
class ChargeResult:
    """A charge's outcome: ``reference`` names it at the network, ``reason`` why it failed."""

    approved: bool
    reference: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RefundResult:
    reference: str


class CardNetwork(Protocol):
    def charge(
        self, amount_cents: int, card: Card, *, idempotency_key: str | None = None
    ) -> ChargeResult:
        """Charge the card; the same ``idempotency_key`` never charges twice."""
        ...

    def refund(self, charge_reference: str, amount_cents: int) -> RefundResult:
        """Give back ``amount_cents`` of an approved charge."""
        ...


def _reference(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class SimulatedCardNetwork:
    """An in-process network: declines ``DECLINED_CARDS``, approves any other card."""

    def __init__(self, new_reference: Callable[[str], str] = _reference) -> None:
        self._new_reference = new_reference
        self._charges_by_key: OrderedDict[str, ChargeResult] = OrderedDict()

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
            self._charges_by_key[idempotency_key] = result
            if len(self._charges_by_key) > REMEMBERED_KEYS:
                self._charges_by_key.popitem(last=False)
        return result

    def refund(self, charge_reference: str, amount_cents: int) -> RefundResult:
        if amount_cents <= 0:
            raise ValueError("a refund must be of a positive amount")
        return RefundResult(reference=self._new_reference("sim_re"))
