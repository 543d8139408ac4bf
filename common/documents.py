"""How the domain's dataclasses are written to MongoDB and read back, one rule for all.

A field's document key is its name in camelCase (``password_hash`` -> ``passwordHash``),
and ``id`` is Mongo's ``_id``. A :class:`DocumentMapper` applies the rule to one
dataclass, and to the dataclasses nested in it (an order's lines, a payment's card).
A store adds what only the database keeps (a version, an outbox, stock holds) beside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def document_key(field_name: str) -> str:
    """``id`` -> ``_id``; ``snake_case`` -> ``snakeCase``."""
    if field_name == "id":
        return "_id"
    first, *rest = field_name.split("_")
    return first + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class DocumentMapper(Generic[T]):
    """Writes a ``cls`` as a document and reads it back; ``nested`` maps a field holding
    another dataclass (or a tuple of them) to that dataclass's mapper."""

    cls: type[T]
    nested: Mapping[str, DocumentMapper[Any]] = field(default_factory=dict)

    def to_document(self, value: T) -> dict[str, Any]:
        document = {}
        for item in fields(self.cls):  # type: ignore[arg-type]
            document[document_key(item.name)] = self._out(item.name, getattr(value, item.name))
        return document

    def from_document(self, document: Mapping[str, Any]) -> T:
        """The dataclass; a key the document lacks takes the field's default."""
        values = {}
        for item in fields(self.cls):  # type: ignore[arg-type]
            key = document_key(item.name)
            if key in document:
                values[item.name] = self._in(item.name, document[key])
        return self.cls(**values)

    def _out(self, name: str, value: Any) -> Any:
        inner = self.nested.get(name)
        if inner is None or value is None:
            return value
        if isinstance(value, tuple | list):
            return [inner.to_document(element) for element in value]
        return inner.to_document(value)

    def _in(self, name: str, value: Any) -> Any:
        inner = self.nested.get(name)
        if inner is None or value is None:
            return value
        if isinstance(value, list):
            return tuple(inner.from_document(element) for element in value)
        return inner.from_document(value)
