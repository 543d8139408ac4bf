"""The one rule by which the domain's dataclasses become Mongo documents and back."""

from __future__ import annotations

from common.documents import DocumentMapper, document_key
from orders.store import ORDER
from payments.store import PAYMENT
from tests.support import NOW, a_payment, an_order


def test_keys_are_camel_case_and_id_is_mongos():
    assert [document_key(name) for name in ("id", "user_id", "price_cents", "status")] == [
        "_id",
        "userId",
        "priceCents",
        "status",
    ]


def test_an_order_with_its_lines_and_address_round_trips():
    order = an_order("paid", payment_id="pay-1")
    document = ORDER.to_document(order)
    assert document["_id"] == "order-1" and document["createdAt"] == NOW
    assert document["items"] == [
        {"productId": "product-1", "name": "Wireless Mouse", "quantity": 2, "priceCents": 2999}
    ]
    assert document["shippingAddress"] == {
        "street": "123 Main St",
        "city": "Seoul",
        "zipCode": "12345",
    }
    assert ORDER.from_document(document) == order


def test_a_key_the_document_lacks_takes_the_fields_default():
    document = PAYMENT.to_document(a_payment())
    del document["failureReason"], document["networkKey"]
    restored = PAYMENT.from_document({**document, "outbox": [], "activeOrderId": "order-1"})
    assert restored == a_payment()  # and keys that are not fields are left out


def test_a_mapper_without_nested_mappers_keeps_values_as_they_are():
    mapper = DocumentMapper(type(a_payment().card))
    assert mapper.to_document(a_payment().card) == {"brand": "visa", "last4": "1111"}
